"""Worker roles (worker/celery_app.py): transcription, live pieces and events have queues of their own,
so a worker process held by a long batch never holds up a live session or a webhook.

A real API and two real workers: one reads only the transcription queue (two recordings per model
call), the other only the live queue and ``events``. While the first is busy with hours of audio,
a live session is answered and an interactive job's webhook is delivered. Only orders are asserted
(the batch is still open when the live session and the webhook are done), never durations."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from shared.dev.models.tones import synthesize
from shared.queue import EVENTS_QUEUE, live_queue
from tests.api.test_api import auth
from tests.conftest import Proc, make_key, serving, start_api, start_worker, wait_for
from tests.worker.test_batch_fairness import archive, submit_batch
from tests.worker.test_webhooks import Receiver

QUEUE = "roles"


@pytest.fixture(scope="module")
def role_stack(platform_env: dict[str, str], logs: Path) -> Iterator[Proc]:
    env = {**platform_env, "TONE_WORKER_QUEUE": QUEUE, "TONE_WORKER_BATCH": "2"}
    api = start_api(env, logs, "api-roles")
    batch_worker = start_worker(env, logs, name="roles-batch", queues=QUEUE)
    live_worker = start_worker(env, logs, name="roles-live", queues=f"{live_queue(QUEUE)},{EVENTS_QUEUE}")
    yield api
    live_worker.stop()
    batch_worker.stop()
    api.stop()


def test_a_busy_transcription_worker_does_not_hold_up_live_sessions_or_webhooks(
    role_stack: Proc, servers: dict[str, str]
) -> None:
    key = make_key(servers, f"roles-{uuid.uuid4().hex[:6]}")
    url = role_stack.url
    batch = submit_batch(url, key, archive(0, 8))  # about 4 hours of audio, two recordings at a time
    view_url = f"{url}/v1/batches/{batch['id']}"
    wait_for(
        lambda: httpx.get(view_url, headers=auth(key)).json()["counts"]["processing"] > 0, "the batch started"
    )

    speech, _ = synthesize(["привет мир"])
    with serving(Receiver()) as receiver, httpx.Client(base_url=url, headers=auth(key), timeout=30) as client:
        assert isinstance(receiver, Receiver)
        hook = receiver.script((200, {}))
        # an interactive job joins the busy worker's running batch at its next free slot ...
        job = client.post(
            "/v1/jobs", files={"file": ("hi.wav", _wav(speech))}, data={"webhook_url": hook}
        ).json()
        # ... while a live session is served by the live worker at once
        sid = client.post("/transcribe/streaming").json()["state_id"]
        piece = client.post(
            "/transcribe/streaming/chunk", data={"state_id": sid}, files={"file": ("c.raw", speech.tobytes())}
        )
        assert piece.status_code == 200, piece.text
        final = client.post("/transcribe/streaming/finalize", data={"state_id": sid}).json()
        assert [p["text"] for p in final["phrases"]] == ["привет мир"]
        assert client.get(view_url).json()["finished_at"] is None, "the live session waited for the batch"

        wait_for(lambda: len(receiver.requests(hook)) >= 1, "the interactive job's webhook", timeout=120)
        assert receiver.requests(hook)[0]["body"]
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "completed"
        assert client.get(view_url).json()["finished_at"] is None, "the webhook waited for the batch"
        client.post(f"{view_url}/cancel")
    wait_for(lambda: httpx.get(view_url, headers=auth(key)).json()["finished_at"] is not None, "cancelled")


def _wav(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, 8000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_health_names_each_role_and_is_degraded_while_one_has_no_worker(
    role_stack: Proc, platform_env: dict[str, str], logs: Path, api_key: str
) -> None:
    served = httpx.get(f"{role_stack.url}/health", headers=auth(api_key), timeout=10).json()
    assert served["status"] == "ok", served
    assert served["queues"]["roles"] == 1 and served["queues"]["roles.live"] == 1, served
    assert served["queues"]["events"] >= 1

    lonely = start_api({**platform_env, "TONE_WORKER_QUEUE": "nobody-reads"}, logs, "api-lonely")
    try:
        assert httpx.get(f"{lonely.url}/health", timeout=10).json() == {"status": "degraded"}  # anonymous
        health = httpx.get(f"{lonely.url}/health", headers=auth(api_key), timeout=10)
        assert health.status_code == 200  # the API itself works: jobs wait queued
        body = health.json()
        assert body["status"] == "degraded", body
        assert body["queues"]["nobody-reads"] == 0 and body["queues"]["nobody-reads.live"] == 0
    finally:
        lonely.stop()
