"""No model at all, as a new user's first `up` on a machine without T-one: a real API and worker with
``TONE_MODEL_PATH`` pointing nowhere, on a Redis database of their own (no other test's queue).

/health says ``degraded`` with the model's error and how to get one; every call that needs the model
answers the same 503 ``model_not_found`` (the original service's call, OpenAI's, a live chunk and its
finalize) and a job fails with that code; the API logs no traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from shared.dev.models.tones import synthesize
from tests.conftest import Proc, make_key, start_api, start_worker, wait_for


@pytest.fixture(scope="module")
def no_model(platform_env: dict[str, str], logs: Path, servers: dict[str, str]) -> Iterator[tuple[Proc, str]]:
    redis_url = servers["REDIS_URL"].rsplit("/", 1)[0] + "/3"
    env = {**platform_env, "TONE_MODEL_PATH": "/nonexistent/t-one", "REDIS_URL": redis_url}
    api = start_api(env, logs, "api-no-model")
    worker = start_worker(env, logs, "worker-no-model")
    try:
        yield api, make_key(servers, "no-model")
    finally:
        worker.stop()
        api.stop()


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _wav(tmp_path: Path) -> Path:
    import soundfile as sf

    path = tmp_path / "hello.wav"
    sf.write(path, synthesize(["привет мир"])[0], 8000, subtype="PCM_16")
    return path


def _assert_no_model(response: httpx.Response, api: Proc) -> dict[str, Any]:
    assert response.status_code == 503, f"{response.request.url}: {response.text}\n{api.tail()}"
    body: dict[str, Any] = response.json()
    return body


def test_health_is_degraded_with_the_models_error_and_how_to_get_one(no_model: tuple[Proc, str]) -> None:
    api, key = no_model
    # details (the model's status) need a key: anonymous /health says only its status
    headers = {"Authorization": f"Bearer {key}"}
    wait_for(
        lambda: httpx.get(f"{api.url}/health", headers=headers).json().get("model_status") == "error",
        "the worker's report",
    )
    health = httpx.get(f"{api.url}/health", headers=headers).json()
    assert health["status"] == "degraded"
    assert "model_not_found" in health["model_error"]
    assert "make models" in health["model_error"] and "TONE_MODEL_PATH" in health["model_error"]
    ready = httpx.get(f"{api.url}/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["model"].startswith("error: model_not_found")
    assert httpx.get(f"{api.url}/livez").status_code == 200


def test_every_call_needing_the_model_answers_503_model_not_found(
    no_model: tuple[Proc, str], tmp_path: Path
) -> None:
    api, key = no_model
    wav = _wav(tmp_path)
    with wav.open("rb") as f:
        legacy = httpx.post(f"{api.url}/transcribe", headers=_auth(key), files={"file": f}, timeout=60)
    assert _assert_no_model(legacy, api)["error"]["code"] == "model_not_found"
    with wav.open("rb") as f:
        openai = httpx.post(
            f"{api.url}/v1/audio/transcriptions",
            headers=_auth(key),
            files={"file": f},
            data={"model": "t-one"},
            timeout=60,
        )
    assert _assert_no_model(openai, api)["error"]["code"] == "model_not_found"

    with httpx.Client(base_url=api.url or "", headers=_auth(key), timeout=60) as client:
        sid = client.post("/transcribe/streaming").json()["state_id"]
        piece = (np.zeros(4000, dtype=np.int16)).tobytes()
        chunk = client.post(
            "/transcribe/streaming/chunk", data={"state_id": sid}, files={"file": ("c.raw", piece)}
        )
        assert _assert_no_model(chunk, api)["error"]["code"] == "model_not_found"
        final = client.post("/transcribe/streaming/finalize", data={"state_id": sid})
        assert _assert_no_model(final, api)["error"]["code"] == "model_not_found"

    with wav.open("rb") as f:
        job = httpx.post(f"{api.url}/v1/jobs", headers=_auth(key), files={"file": f}, timeout=60).json()
    url = f"{api.url}/v1/jobs/{job['id']}"
    wait_for(lambda: httpx.get(url, headers=_auth(key)).json()["status"] == "failed", "the job to fail")
    assert httpx.get(url, headers=_auth(key)).json()["error"]["code"] == "model_not_found"
    assert "Traceback" not in api.log.read_text(errors="replace")
