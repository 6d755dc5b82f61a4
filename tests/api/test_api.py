"""The HTTP API against the real stack: uvicorn, Postgres, Redis and a Celery worker, over HTTP."""

from __future__ import annotations

import http.server
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import soundfile as sf
from sqlalchemy import select

from api.services.jobs import phrase_of
from shared.asr.engine import Recognizer
from shared.asr.formats import FORMATS, render
from shared.db.models import Job
from shared.db.session import session_scope
from shared.dev.models.tones import synthesize
from shared.platform.keys import announce_revocation, key_prefix, revoke_key
from tests.conftest import KIT_AUDIO, Proc, make_key, serving, start_api, written

PHRASES = ["привет мир", "как дела"]
AUDIO_CODES = {"empty_audio", "unsupported_format", "corrupt_audio"}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(response: httpx.Response, status: int, code: str | set[str]) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] in ({code} if isinstance(code, str) else code), body
    assert body["error"]["message"]


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    audio, _ = synthesize(PHRASES)
    path = tmp_path_factory.mktemp("api-audio") / "speech.wav"
    sf.write(path, audio, 8000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def engine_phrases(wav: Path, tone_model: Path) -> list[dict[str, Any]]:
    return written(Recognizer.load(tone_model, threads=1).transcribe_file(wav).to_dict()["phrases"])


@pytest.fixture(scope="module")
def parked_api(platform_env: dict[str, str], logs: Path) -> Iterator[Proc]:
    """A second API whose jobs go to the "gpu" queue, which no test worker consumes: they stay queued.
    Its upload limit is 1 MB, its synchronous calls wait 1 s."""
    env = {"TONE_WORKER_QUEUE": "gpu", "TONE_MAX_UPLOAD_BYTES": "1000000", "TONE_SYNC_TIMEOUT_SECONDS": "1"}
    proc = start_api({**platform_env, **env}, logs, "api-parked")
    yield proc
    proc.stop()


def submit(
    url: str, key: str, path: Path, headers: dict[str, str] | None = None, **fields: Any
) -> httpx.Response:
    data = {k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in fields.items()}
    with path.open("rb") as f:
        return httpx.post(
            f"{url}/v1/jobs",
            headers={**auth(key), **(headers or {})},
            files={"file": (path.name, f, "audio/wav")},
            data=data,
            timeout=30,
        )


def wait_final(url: str, key: str, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", headers=auth(key), timeout=10).json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} not final after {timeout} s: {job}")


def rss_kib(proc: Proc) -> int:
    for line in Path(f"/proc/{proc.popen.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- jobs end to end (need the worker) -------------------------------------------------------------


def test_an_uploaded_job_completes_with_the_engines_transcript_in_every_format(
    api: Proc, worker: Proc, api_key: str, wav: Path, engine_phrases: list[dict[str, Any]]
) -> None:
    response = submit(api.url, api_key, wav, channels="mix", metadata={"call": 7}, priority=3)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and job["links"]["transcript"] == f"/v1/jobs/{job['id']}/transcript"
    job = wait_final(api.url, api_key, job["id"])
    assert job["status"] == "completed", job
    assert job["progress"] == 1.0 and job["error"] is None and job["metadata"] == {"call": 7}
    assert "Retry-After" not in httpx.get(f"{api.url}/v1/jobs/{job['id']}", headers=auth(api_key)).headers
    assert job["duration"] == pytest.approx(sf.info(wav).duration, abs=0.01)
    assert job["started_at"] and job["finished_at"]

    got = httpx.get(f"{api.url}/v1/jobs/{job['id']}/transcript", headers=auth(api_key), timeout=10)
    assert got.headers["content-type"].startswith("application/json")
    assert got.json()["phrases"] == engine_phrases
    assert [p["text"] for p in engine_phrases] == PHRASES
    phrases = [phrase_of(p) for p in engine_phrases]
    for fmt in FORMATS[1:]:
        got = httpx.get(
            f"{api.url}/v1/jobs/{job['id']}/transcript", params={"format": fmt}, headers=auth(api_key)
        )
        assert got.status_code == 200
        assert got.text == render(fmt, phrases), fmt
        assert got.headers["content-type"].split(";")[0] in {
            "txt": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt",
            "tsv": "text/tab-separated-values",
        }[fmt]  # fmt: skip


@contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """A local HTTP server (127.0.0.1) for ``directory``; yields its base URL."""
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    with serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}"


def test_an_audio_url_job_is_downloaded_by_the_worker_and_transcribed(
    api: Proc, worker: Proc, api_key: str, wav: Path, engine_phrases: list[dict[str, Any]]
) -> None:
    with serve_directory(wav.parent) as base:
        url = f"{base}/{wav.name}"
        response = httpx.post(f"{api.url}/v1/jobs", headers=auth(api_key), json={"audio_url": url})
        assert response.status_code == 202, response.text
        job = wait_final(api.url, api_key, response.json()["id"])
    assert job["status"] == "completed", job
    assert job["audio_url"] == url and job["source"] == "url"
    got = httpx.get(f"{api.url}/v1/jobs/{job['id']}/transcript", headers=auth(api_key))
    assert got.json()["phrases"] == engine_phrases


def test_the_openai_client_gets_json_text_srt_and_verbose_json_with_words(
    api: Proc, worker: Proc, api_key: str, wav: Path, engine_phrases: list[dict[str, Any]]
) -> None:
    import openai

    client = openai.OpenAI(base_url=api.url + "/v1", api_key=api_key, timeout=60, max_retries=0)
    full_text = " ".join(PHRASES)
    with wav.open("rb") as f:
        assert client.audio.transcriptions.create(model="t-one", file=f).text == full_text
    with wav.open("rb") as f:
        text = client.audio.transcriptions.create(model="t-one", file=f, response_format="text")
    assert str(text).strip() == full_text
    with wav.open("rb") as f:
        srt = client.audio.transcriptions.create(model="t-one", file=f, response_format="srt")
    assert str(srt).startswith("1\n00:00:0") and PHRASES[1] in str(srt)
    with wav.open("rb") as f:
        verbose = client.audio.transcriptions.create(
            model="t-one", file=f, response_format="verbose_json", timestamp_granularities=["word", "segment"]
        )
    assert verbose.text == full_text and verbose.language == "russian"  # as whisper-1 answers
    assert verbose.duration == pytest.approx(sf.info(wav).duration, abs=0.01)
    assert [(s.text, s.start, s.end) for s in verbose.segments] == [
        (p["text"], p["start_time"], p["end_time"]) for p in engine_phrases
    ]
    assert [(w.word, w.start, w.end) for w in verbose.words] == [
        (w["text"], w["start"], w["end"]) for p in engine_phrases for w in p["words"]
    ]


def test_the_openai_client_lists_models_gets_usage_and_openai_errors(
    api: Proc, worker: Proc, api_key: str, wav: Path
) -> None:
    """models.list/retrieve (Open WebUI and LiteLLM probe them), usage, the granularity rules, and
    refusals of another language, model or granularity in OpenAI's error shape (parsed by the SDK)."""
    import openai

    client = openai.OpenAI(base_url=api.url + "/v1", api_key=api_key, timeout=60, max_retries=0)
    assert [(m.id, m.object, m.owned_by) for m in client.models.list()] == [("t-one", "model", "t-tech")]
    assert client.models.retrieve("t-one").id == "t-one"
    assert client.models.retrieve("whisper-1").id == "t-one"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4o-transcribe")
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    assert missing.value.type == "invalid_request_error"

    duration = sf.info(wav).duration
    with wav.open("rb") as f:
        plain = client.audio.transcriptions.create(model="whisper-1", file=f, language="ru")
    assert plain.text == " ".join(PHRASES)
    assert plain.usage is not None and plain.usage.type == "duration"
    assert plain.usage.seconds == pytest.approx(duration, abs=0.01)
    with wav.open("rb") as f:
        words = client.audio.transcriptions.create(
            model="t-one", file=f, response_format="verbose_json", timestamp_granularities=["word"]
        )
    assert words.words and words.segments is None  # `word` alone: no segments
    assert words.language == "russian" and words.usage is not None

    refusals = [
        ({"language": "en"}, "language", "unsupported_language"),
        ({"model": "gpt-4o-transcribe"}, "model", "invalid_model"),
        (
            {"response_format": "json", "timestamp_granularities": ["word"]},
            "timestamp_granularities",
            "invalid_value",
        ),
    ]
    for fields, param, code in refusals:
        with wav.open("rb") as f, pytest.raises(openai.BadRequestError) as refused:
            client.audio.transcriptions.create(file=f, **{"model": "t-one", **fields})  # type: ignore[call-overload]
        assert (refused.value.status_code, refused.value.code, refused.value.param) == (400, code, param)
        body = refused.value.body
        assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}, body
    with pytest.raises(openai.AuthenticationError) as unauthorized:
        openai.OpenAI(base_url=api.url + "/v1", api_key="tone_00000000_bad", max_retries=0).models.list()
    assert unauthorized.value.type == "authentication_error"
    # the rest of the API keeps its own shape
    other = httpx.get(f"{api.url}/v1/jobs/{uuid.uuid4()}", headers=auth(api_key))
    assert_error(other, 404, "not_found")


def test_legacy_transcribe_answers_the_original_shape_with_the_audio_duration(
    api: Proc, worker: Proc, api_key: str, wav: Path, engine_phrases: list[dict[str, Any]]
) -> None:
    with wav.open("rb") as f:
        full = httpx.post(f"{api.url}/transcribe", headers=auth(api_key), files={"file": f}, timeout=60)
    assert full.status_code == 200, full.text
    body = full.json()
    assert set(body) == {"phrases", "full_text", "duration", "processing_time"}
    # the original service's shape: the spoken words, no written form
    assert body["phrases"] == [
        {k: v for k, v in p.items() if not k.startswith("display")} for p in engine_phrases
    ]
    assert body["full_text"] == " ".join(PHRASES)
    assert body["duration"] == pytest.approx(sf.info(wav).duration, abs=0.01)
    assert body["duration"] > engine_phrases[-1]["end_time"]
    with wav.open("rb") as f:
        bare = httpx.post(
            f"{api.url}/transcribe",
            headers=auth(api_key),
            files={"file": f},
            data={"return_timestamps": "false"},
            timeout=60,
        )
    assert bare.json()["phrases"] == [{"text": t} for t in PHRASES]


def test_every_bad_file_is_refused_up_front_or_fails_with_an_audio_error_code(
    api: Proc, worker: Proc, api_key: str
) -> None:
    bad = sorted((KIT_AUDIO / "bad").iterdir())
    assert bad
    for path in bad:
        response = submit(api.url, api_key, path)
        if response.status_code == 202:
            job = wait_final(api.url, api_key, response.json()["id"])
            assert job["status"] == "failed", (path.name, job)
            assert job["error"]["code"] in AUDIO_CODES, (path.name, job)
            assert job["error"]["message"]
        else:
            assert 400 <= response.status_code < 500, (path.name, response.text)
            assert_error(response, response.status_code, AUDIO_CODES)
            message = response.json()["error"]["message"]
            assert "/audio/" not in message, message  # the server's storage path is not shown
            if "empty" not in message:
                assert path.name in message, message


def test_every_bad_file_given_by_url_ends_as_a_failed_job_with_an_audio_error_code(
    api: Proc, worker: Proc, api_key: str
) -> None:
    bad = sorted((KIT_AUDIO / "bad").iterdir())
    with serve_directory(KIT_AUDIO / "bad") as base:
        ids = {
            path.name: httpx.post(
                f"{api.url}/v1/jobs", headers=auth(api_key), json={"audio_url": f"{base}/{path.name}"}
            ).json()["id"]
            for path in bad
        }
        jobs = {name: wait_final(api.url, api_key, job_id) for name, job_id in ids.items()}
    for name, job in jobs.items():
        assert job["status"] == "failed", (name, job)
        assert job["error"]["code"] in AUDIO_CODES, (name, job)
        assert "/audio/" not in job["error"]["message"], job  # the server's storage path is not shown


def test_health_reports_database_broker_and_workers_and_root_describes_the_service(
    api: Proc, worker: Proc, api_key: str
) -> None:
    health = httpx.get(f"{api.url}/health", headers=auth(api_key), timeout=5)
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["database"] == "ok" and body["broker"] == "ok"
    assert body["workers"] >= 1 and body["model"] and "/" not in body["model"]  # a name, not a path
    assert set(body["queues"]) == {"cpu", "cpu.live", "events"} and min(body["queues"].values()) >= 1
    assert httpx.get(f"{api.url}/livez").json() == {"status": "ok"}
    ready = httpx.get(f"{api.url}/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready" and ready.json()["checks"]["model"] == "ok"
    assert set(ready.json()["checks"]["queues"].values()) == {"ok"}
    root = httpx.get(f"{api.url}/").json()
    assert root["name"] == "tone-platform" and root["docs"] == "/docs" and root["version"]
    assert httpx.get(f"{api.url}/docs").status_code == 200
    assert httpx.get(f"{api.url}/redoc").status_code == 200
    spec = httpx.get(f"{api.url}/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}/transcript", "/v1/audio/transcriptions", "/transcribe"} <= set(
        spec["paths"]
    )


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


def test_metrics_are_counted_when_things_happen_and_shown_to_this_machine_only(
    api: Proc,
    worker: Proc,
    parked_api: Proc,
    api_key: str,
    wav: Path,
    platform_env: dict[str, str],
    logs: Path,
) -> None:
    """Counters grow when a job ends (not a scan of the jobs table), histograms of queue wait, job
    latency and live piece latency, HTTP requests per route template, queue depth; with
    TONE_METRICS_TOKEN set, a scrape without the token is refused."""
    before = httpx.get(f"{api.url}/metrics").text
    assert submit(parked_api.url, api_key, wav).status_code == 202  # stays queued: no gpu worker
    job = submit(api.url, api_key, wav).json()
    assert wait_final(api.url, api_key, job["id"])["status"] == "completed"
    with httpx.Client(base_url=api.url or "", headers=auth(api_key), timeout=60) as client:
        sid = client.post("/transcribe/streaming").json()["state_id"]
        piece = sf.read(wav, dtype="int16")[0][:4000].tobytes()
        assert (
            client.post(
                "/transcribe/streaming/chunk", data={"state_id": sid}, files={"file": ("p.raw", piece)}
            ).status_code
            == 200
        )
    after = httpx.get(f"{api.url}/metrics").text

    def grew(name: str, **labels: str) -> float:
        return _sample(after, name, **labels) - _sample(before, name, **labels)

    assert grew("tone_jobs_finished_total", status="completed") >= 1
    assert grew("tone_audio_seconds_processed_total") >= sf.info(wav).duration - 0.01
    assert grew("tone_processing_seconds_total") > 0
    for histogram in (
        "tone_queue_wait_seconds",
        "tone_job_latency_seconds",
        "tone_live_piece_latency_seconds",
    ):
        assert grew(f"{histogram}_count") >= 1, histogram
        assert _sample(after, f"{histogram}_bucket", le="+Inf") == _sample(after, f"{histogram}_count")
    assert _sample(after, "tone_queue_depth", queue="gpu") >= 1
    assert (
        _sample(after, "tone_http_requests_total", method="GET", route="/v1/jobs/{job_id}", status="200") >= 1
    )
    assert "/v1/jobs/" + job["id"] not in after  # the template, never the id
    assert "tone_jobs{" not in after  # no per-status scan of the jobs table

    guarded = start_api({**platform_env, "TONE_METRICS_TOKEN": "scrape-secret"}, logs, "api-metrics-token")
    try:
        refused = httpx.get(f"{guarded.url}/metrics")
        assert_error(refused, 401, "unauthorized")
        wrong = httpx.get(f"{guarded.url}/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        scraped = httpx.get(f"{guarded.url}/metrics", headers={"Authorization": "Bearer scrape-secret"})
        assert scraped.status_code == 200 and "tone_jobs_finished_total" in scraped.text
    finally:
        guarded.stop()


# -- what needs no worker: jobs parked in the "gpu" queue ------------------------------------------


def test_idempotency_key_returns_the_first_job_and_refuses_another_body(
    parked_api: Proc, api_key: str, wav: Path
) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = submit(parked_api.url, api_key, wav, headers=key, priority=4)
    assert first.status_code == 202
    again = submit(parked_api.url, api_key, wav, headers=key, priority=4)
    assert again.status_code in (200, 202) and again.json()["id"] == first.json()["id"]
    assert_error(submit(parked_api.url, api_key, wav, headers=key, priority=5), 409, "idempotency_conflict")
    other = submit(parked_api.url, api_key, wav, headers={"Idempotency-Key": uuid.uuid4().hex}, priority=4)
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


def test_another_tenant_gets_404_for_every_call_on_a_job_and_never_lists_it(
    parked_api: Proc, api_key: str, other_key: str, wav: Path
) -> None:
    job_id = submit(parked_api.url, api_key, wav).json()["id"]
    base = f"{parked_api.url}/v1/jobs/{job_id}"
    other = auth(other_key)
    assert_error(httpx.get(base, headers=other), 404, "not_found")
    assert_error(httpx.get(f"{base}/transcript", headers=other), 404, "not_found")
    assert_error(httpx.get(f"{base}/webhooks", headers=other), 404, "not_found")
    assert_error(httpx.post(f"{base}/cancel", headers=other), 404, "not_found")
    assert_error(httpx.delete(base, headers=other), 404, "not_found")
    listed = httpx.get(f"{parked_api.url}/v1/jobs", headers=other, params={"limit": 100}).json()["data"]
    assert job_id not in {j["id"] for j in listed}
    assert httpx.get(base, headers=auth(api_key)).json()["status"] == "queued"  # untouched
    assert_error(
        httpx.get(f"{parked_api.url}/v1/jobs/{uuid.uuid4()}", headers=auth(api_key)), 404, "not_found"
    )
    assert_error(httpx.get(f"{parked_api.url}/v1/jobs/not-a-uuid", headers=auth(api_key)), 404, "not_found")


def test_missing_wrong_and_revoked_keys_get_401_in_the_error_shape(
    parked_api: Proc, servers: dict[str, str]
) -> None:
    url = f"{parked_api.url}/v1/jobs"
    assert_error(httpx.get(url), 401, "unauthorized")
    assert_error(httpx.get(url, headers=auth("tone_00000000_nope")), 401, "unauthorized")
    assert_error(httpx.get(url, headers={"X-API-Key": "garbage"}), 401, "unauthorized")
    key = make_key(servers, "tenant-revoked")
    assert httpx.get(url, headers={"X-API-Key": key}).status_code == 200
    assert httpx.get(url, headers={"X-API-Key": key}).status_code == 200  # now kept in the API's memory
    with session_scope(servers["DATABASE_URL"]) as session:
        assert revoke_key(session, key_prefix(key) or "")
    assert announce_revocation(servers["REDIS_URL"])  # what `tone-platform keys revoke` does
    assert_error(httpx.get(url, headers={"X-API-Key": key}), 401, "unauthorized")
    assert_error(httpx.post(f"{parked_api.url}/transcribe"), 401, "unauthorized")


def test_requests_are_validated_with_clear_4xx_codes(parked_api: Proc, api_key: str, tmp_path: Path) -> None:
    url = f"{parked_api.url}/v1/jobs"
    h = auth(api_key)
    assert_error(httpx.post(url, headers=h, json={"audio_url": "ftp://x/y.wav"}), 422, "invalid_request")
    assert_error(
        httpx.post(url, headers=h, json={"audio_url": "http://x/a.wav", "speed": 2}), 422, "invalid_request"
    )
    assert_error(
        httpx.post(url, headers=h, json={"audio_url": "http://x/a.wav", "priority": 10}),
        422,
        "invalid_request",
    )
    assert_error(
        httpx.post(url, headers=h, json={"audio_url": "http://x/a.wav", "channels": "left"}),
        422,
        "invalid_request",
    )
    assert_error(httpx.post(url, headers=h, json={}), 422, "invalid_request")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    assert_error(submit(parked_api.url, api_key, empty), 400, "empty_audio")
    assert_error(httpx.get(f"{url}?limit=101", headers=h), 422, "invalid_request")
    assert_error(httpx.get(f"{url}?cursor=zzz", headers=h), 400, "invalid_cursor")
    # a NUL character PostgreSQL holds in no text (a 500 before): in a job's vocabulary, in a search
    wav = tmp_path / "tone.wav"
    sf.write(wav, np.zeros(8000, dtype=np.int16), 8000, subtype="PCM_16")
    with wav.open("rb") as f:
        got = httpx.post(url, headers=h, files={"file": ("tone.wav", f)}, data={"vocabulary": "a\u0000b"})
    assert_error(got, 400, "invalid_text")
    assert "NUL" in got.json()["error"]["message"]
    assert_error(
        httpx.get(f"{parked_api.url}/v1/search", params={"q": "a\u0000"}, headers=h), 400, "invalid_text"
    )


def test_cancel_of_a_queued_job_then_delete_removes_its_audio(
    parked_api: Proc, api_key: str, wav: Path, servers: dict[str, str]
) -> None:
    job = submit(parked_api.url, api_key, wav).json()
    base = f"{parked_api.url}/v1/jobs/{job['id']}"
    h = auth(api_key)
    assert_error(httpx.get(f"{base}/transcript", headers=h), 409, "not_ready")
    queued = httpx.get(base, headers=h)
    assert queued.json()["status"] == "queued" and queued.headers["Retry-After"] == "1"  # when to poll again
    cancelled = httpx.post(f"{base}/cancel", headers=h)
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    final = httpx.get(base, headers=h)
    assert final.json()["status"] == "cancelled" and "Retry-After" not in final.headers
    assert_error(httpx.post(f"{base}/cancel", headers=h), 409, "already_final")

    with session_scope(servers["DATABASE_URL"]) as session:
        audio = Path(session.scalar(select(Job.audio_path).where(Job.id == uuid.UUID(job["id"]))) or "")
    assert audio.is_file()
    assert httpx.delete(base, headers=h).status_code == 204
    assert not audio.exists()
    assert_error(httpx.get(base, headers=h), 404, "not_found")


def test_list_filters_by_status_and_time_and_pages_with_a_cursor(
    parked_api: Proc, servers: dict[str, str], wav: Path
) -> None:
    key = make_key(servers, f"tenant-list-{uuid.uuid4().hex[:6]}")
    h = auth(key)
    ids = [submit(parked_api.url, key, wav).json()["id"] for _ in range(5)]
    httpx.post(f"{parked_api.url}/v1/jobs/{ids[1]}/cancel", headers=h)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{parked_api.url}/v1/jobs", headers=h, params=params).json()
        seen += [j["id"] for j in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1] and pages == 3
    queued = httpx.get(f"{parked_api.url}/v1/jobs", headers=h, params={"status": "queued"}).json()["data"]
    assert [j["id"] for j in queued] == [i for i in ids[::-1] if i != ids[1]]
    cancelled = httpx.get(f"{parked_api.url}/v1/jobs", headers=h, params={"status": "cancelled"}).json()
    assert [j["id"] for j in cancelled["data"]] == [ids[1]]
    third = httpx.get(f"{parked_api.url}/v1/jobs/{ids[2]}", headers=h).json()["created_at"]
    after = httpx.get(f"{parked_api.url}/v1/jobs", headers=h, params={"created_after": third}).json()["data"]
    assert [j["id"] for j in after] == [ids[4], ids[3], ids[2]]
    before = httpx.get(f"{parked_api.url}/v1/jobs", headers=h, params={"created_before": third}).json()[
        "data"
    ]
    assert [j["id"] for j in before] == [ids[1], ids[0]]


def _multipart_stream(boundary: str, total: int) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    piece = b"\0" * (256 * 1024)
    for _ in range(total // len(piece)):
        yield piece
    yield f"\r\n--{boundary}--\r\n".encode()


def test_an_upload_over_the_limit_is_refused_without_the_api_holding_it_in_memory(
    parked_api: Proc, api_key: str, servers: dict[str, str]
) -> None:
    audio_dir = Path(servers["root"]) / "data" / "audio"
    before_files = set(audio_dir.glob("*")) if audio_dir.exists() else set()
    boundary = uuid.uuid4().hex
    headers = {**auth(api_key), "Content-Type": f"multipart/form-data; boundary={boundary}"}
    before = rss_kib(parked_api)
    response = httpx.post(
        f"{parked_api.url}/v1/jobs",
        headers=headers,
        content=_multipart_stream(boundary, 50 * 1024 * 1024),
        timeout=60,
    )
    assert_error(response, 413, "file_too_large")
    grown_mib = (rss_kib(parked_api) - before) / 1024
    assert grown_mib < 15, f"the API grew by {grown_mib:.1f} MiB for a 50 MiB upload"
    # just over the file limit but within the form's slack: refused while copying, nothing left behind
    response = httpx.post(
        f"{parked_api.url}/v1/jobs", headers=headers, content=b"".join(_multipart_stream(boundary, 1_310_720))
    )
    assert_error(response, 413, "file_too_large")
    # a declared Content-Length over the limit is refused before the body is read
    response = httpx.post(
        f"{parked_api.url}/v1/jobs",
        headers=headers,
        content=b"".join(_multipart_stream(boundary, 3 * 1024 * 1024)),
    )
    assert_error(response, 413, "file_too_large")
    after_files = set(audio_dir.glob("*")) if audio_dir.exists() else set()
    assert after_files == before_files


def test_requests_over_the_per_key_limit_get_429_with_retry_after(
    platform_env: dict[str, str], logs: Path, servers: dict[str, str]
) -> None:
    proc = start_api({**platform_env, "TONE_RATE_LIMIT_PER_MINUTE": "5"}, logs, "api-ratelimited")
    try:
        key = make_key(servers, f"tenant-rate-{uuid.uuid4().hex[:6]}")
        other = make_key(servers, f"tenant-rate-{uuid.uuid4().hex[:6]}")
        # a key's window opens at its first request: no clock-minute boundary splits these six
        codes = [httpx.get(f"{proc.url}/v1/jobs", headers=auth(key)).status_code for _ in range(5)]
        refused = httpx.get(f"{proc.url}/v1/jobs", headers=auth(key))
        assert codes == [200] * 5
        assert_error(refused, 429, "rate_limited")
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert httpx.get(f"{proc.url}/v1/jobs", headers=auth(other)).status_code == 200  # per key
        # from the second request on the key is kept in memory and counted in the round trip that
        # checks revocations: the window still ends (the counter has its expiry)
        window = redis.Redis.from_url(servers["REDIS_URL"]).pttl(f"tone:ratelimit:{key_prefix(key)}")
        assert 0 < int(window) <= 60_000
    finally:
        proc.stop()


def test_a_synchronous_call_past_its_timeout_answers_504_and_cancels_its_job(
    parked_api: Proc, servers: dict[str, str], wav: Path
) -> None:
    key = make_key(servers, f"tenant-sync-{uuid.uuid4().hex[:6]}")
    with wav.open("rb") as f:
        response = httpx.post(
            f"{parked_api.url}/transcribe", headers=auth(key), files={"file": f}, timeout=30
        )
    assert_error(response, 504, "timeout")
    jobs = httpx.get(f"{parked_api.url}/v1/jobs", headers=auth(key)).json()["data"]
    assert [(j["kind"], j["priority"], j["status"]) for j in jobs] == [("sync", 9, "cancelled")]


def test_with_auth_disabled_requests_without_a_key_act_as_the_local_tenant(
    platform_env: dict[str, str], logs: Path
) -> None:
    proc = start_api({**platform_env, "TONE_AUTH_DISABLED": "1"}, logs, "api-noauth")
    try:
        created = httpx.post(f"{proc.url}/v1/jobs", json={"audio_url": "http://127.0.0.1:9/a.wav"})
        assert created.status_code == 202, created.text
        listed = httpx.get(f"{proc.url}/v1/jobs").json()["data"]
        assert created.json()["id"] in {j["id"] for j in listed}
    finally:
        proc.stop()


def test_json_logs_every_line_an_object_with_the_request_id(platform_env: dict[str, str], logs: Path) -> None:
    proc = start_api({**platform_env, "TONE_LOG_FORMAT": "json"}, logs, "api-json-logs")
    try:
        assert httpx.get(f"{proc.url}/v1/jobs", headers={"X-Request-ID": "json-1"}).status_code == 401
    finally:
        proc.stop()
    lines = [line for line in proc.log.read_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # raises on a line that is not JSON
    assert any(p["logger"].startswith("uvicorn") for p in parsed)
    assert all({"time", "level", "logger", "message"} <= set(p) for p in parsed)


def test_the_list_takes_ids_and_a_job_says_what_its_file_is(
    parked_api: Proc, api_key: str, wav: Path
) -> None:
    """?id=a&id=b lists only those jobs (the console follows its uploads in one request); a job not
    yet opened by a worker has no `audio` yet."""
    a, b, _ = (submit(parked_api.url, api_key, wav).json()["id"] for _ in range(3))
    got = httpx.get(f"{parked_api.url}/v1/jobs", params=[("id", a), ("id", b)], headers=auth(api_key)).json()
    assert sorted(j["id"] for j in got["data"]) == sorted([a, b])
    assert all(j["audio"] is None for j in got["data"])
    bad = httpx.get(f"{parked_api.url}/v1/jobs", params={"id": "nope"}, headers=auth(api_key))
    assert_error(bad, 422, "invalid_request")


def test_playback_is_a_cached_compressed_copy_with_range_requests_and_server_peaks(
    parked_api: Proc, api_key: str, wav: Path, platform_env: dict[str, str]
) -> None:
    import io

    job = submit(parked_api.url, api_key, wav).json()
    base = f"{parked_api.url}/v1/jobs/{job['id']}/audio"
    opus = httpx.get(base, params={"format": "opus"}, headers=auth(api_key), timeout=60)
    assert opus.status_code == 200 and opus.headers["content-type"] == "audio/ogg"
    assert opus.headers["accept-ranges"] == "bytes"
    wav_copy = httpx.get(base, headers=auth(api_key), timeout=60)
    assert wav_copy.headers["content-type"] == "audio/wav"
    assert len(opus.content) < len(wav_copy.content) / 3  # compressed
    decoded, rate = sf.read(io.BytesIO(opus.content))
    assert rate == 8000 and abs(len(decoded) / rate - sf.info(wav).duration) < 0.1
    part = httpx.get(base, params={"format": "opus"}, headers={**auth(api_key), "Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == opus.content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(opus.content)}"
    again = httpx.get(base, params={"format": "opus"}, headers=auth(api_key))
    assert again.headers["etag"] == opus.headers["etag"]  # the kept copy, not a new encoding

    peaks = httpx.get(f"{base}/peaks", params={"columns": 50}, headers=auth(api_key)).json()
    assert (peaks["channels"], peaks["columns"], len(peaks["peaks"][0])) == (1, 50, 100)
    samples = sf.read(wav, dtype="int16")[0] / 32768.0
    assert max(peaks["peaks"][0][1::2]) == pytest.approx(samples.max(), abs=1e-3)
    assert min(peaks["peaks"][0][0::2]) == pytest.approx(samples.min(), abs=1e-3)
    assert httpx.get(f"{base}/peaks", params={"columns": 0}, headers=auth(api_key)).status_code == 422
    assert httpx.get(base, params={"format": "flac"}, headers=auth(api_key)).status_code == 422

    with session_scope(platform_env["DATABASE_URL"]) as session:
        stored = Path(str(session.get(Job, uuid.UUID(job["id"])).audio_path))
    copies = list((stored.parent / ".playback").glob(f"{stored.name}.*"))
    assert len(copies) == 3  # opus, wav, peaks
    assert httpx.delete(f"{parked_api.url}/v1/jobs/{job['id']}", headers=auth(api_key)).status_code == 204
    assert not any(c.exists() for c in copies)
