"""Batches share the workers fairly, with a real API and a real worker of their own (two recordings
per model call, its own queue): an interactive job overtakes a waiting batch, and a second tenant's
batch is interleaved with a first tenant's larger one instead of waiting behind it.

Only orders are asserted (from the jobs' ``finished_at``), never durations."""

from __future__ import annotations

import io
import time
import uuid
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from sqlalchemy import select

from shared.db.models import Job
from shared.db.session import session_scope
from shared.dev.models.tones import synthesize
from tests.api.test_api import auth, wait_final
from tests.conftest import Proc, make_key, start_api, start_worker

QUEUE = "batch-fairness"
PHRASES = (["привет мир"], ["как дела"], ["до свидания"], ["спасибо"])


def recording(i: int, minutes: int) -> bytes:
    """A distinct recording (no two alike: the batch dedupe would merge them) that costs the tone
    model about a second per 25 minutes: a phrase at the top of every minute, FLAC (small)."""
    speech, _ = synthesize(PHRASES[i % len(PHRASES)], lead=0.3 + 0.01 * (i % 50))
    gap = np.zeros(8000 * 60 - len(speech), np.int16)
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", samplerate=8000, channels=1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(minutes):
            f.write(speech)
            f.write(gap)
    return buf.getvalue()


def archive(first: int, n: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i in range(first, first + n):
            zf.writestr(f"calls/{i:03d}.flac", recording(i, 20 + 10 * (i % 3)))
    return buf.getvalue()


@pytest.fixture(scope="module")
def fair_stack(platform_env: dict[str, str], logs: Path) -> Iterator[Proc]:
    """An API sending jobs to QUEUE and one worker process reading it, two recordings at a time."""
    env = {**platform_env, "TONE_WORKER_QUEUE": QUEUE, "TONE_WORKER_BATCH": "2"}
    api = start_api(env, logs, "api-fairness")
    worker = start_worker(env, logs, name="fairness", queues=QUEUE)
    yield api
    worker.stop()
    api.stop()


def submit_batch(url: str, key: str, data: bytes) -> dict:
    got = httpx.post(f"{url}/v1/batches", headers=auth(key), files={"file": ("b.zip", data)}, timeout=120)
    assert got.status_code == 202, got.text
    return got.json()


def wait_batch(url: str, key: str, batch_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        view = httpx.get(f"{url}/v1/batches/{batch_id}", headers=auth(key), timeout=10).json()
        if view["finished_at"] or time.monotonic() > deadline:
            assert view["finished_at"], view
            return view
        time.sleep(0.5)


def finished(db: str, batch_id: str) -> list[tuple[datetime, str]]:
    with session_scope(db) as s:
        rows = s.execute(select(Job.finished_at, Job.status).where(Job.batch_id == uuid.UUID(batch_id))).all()
    assert all(status == "completed" for _, status in rows), rows
    return sorted((at, status) for at, status in rows if at is not None)


def processing(db: str, batch_id: str) -> int:
    with session_scope(db) as s:
        rows = s.scalars(
            select(Job.status).where(Job.batch_id == uuid.UUID(batch_id), Job.status != "queued")
        ).all()
    return len(rows)


def test_an_interactive_job_is_taken_before_the_waiting_jobs_of_a_batch(
    fair_stack: Proc, servers: dict[str, str], tmp_path: Path
) -> None:
    db = servers["DATABASE_URL"]
    key = make_key(servers, f"fair-a-{uuid.uuid4().hex[:6]}")
    n = 24
    batch = submit_batch(fair_stack.url, key, archive(0, n))
    deadline = time.monotonic() + 120
    while processing(db, batch["id"]) == 0 and time.monotonic() < deadline:  # the worker is busy with it
        time.sleep(0.1)
    speech, _ = synthesize(["привет мир"])
    wav = tmp_path / "now.wav"
    sf.write(wav, speech, 8000, subtype="PCM_16")
    with wav.open("rb") as f:
        got = httpx.post(f"{fair_stack.url}/v1/jobs", headers=auth(key), files={"file": ("now.wav", f)})
    assert got.status_code == 202, got.text
    job = wait_final(fair_stack.url, key, got.json()["id"], timeout=300)
    assert job["status"] == "completed" and job["priority"] == 5
    wait_batch(fair_stack.url, key, batch["id"])

    ends = finished(db, batch["id"])
    assert len(ends) == n
    interactive = datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00"))
    after = sum(1 for at, _ in ends if at > interactive)
    # taken at the next refill (or by the next run): at most a few of the batch's jobs end before it
    assert after >= n - 6, (after, n)


def test_a_second_tenants_batch_is_interleaved_with_a_first_tenants_larger_one(
    fair_stack: Proc, servers: dict[str, str]
) -> None:
    db = servers["DATABASE_URL"]
    key_a = make_key(servers, f"fair-big-{uuid.uuid4().hex[:6]}")
    key_b = make_key(servers, f"fair-small-{uuid.uuid4().hex[:6]}")
    big = submit_batch(fair_stack.url, key_a, archive(100, 16))
    small = submit_batch(fair_stack.url, key_b, archive(200, 4))  # created after every job of big
    wait_batch(fair_stack.url, key_a, big["id"])
    wait_batch(fair_stack.url, key_b, small["id"])

    big_ends = finished(db, big["id"])
    small_last = finished(db, small["id"])[-1][0]
    after = sum(1 for at, _ in big_ends if at > small_last)
    # first come, first served would end every job of big before small's first; shared turns end
    # small's four after about eight of big's
    assert after >= 6, (after, [at.isoformat() for at, _ in big_ends], small_last.isoformat())
