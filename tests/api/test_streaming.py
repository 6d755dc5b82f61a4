"""Live streaming over the original service's three HTTP calls, against the real stack: uvicorn,
Redis and Celery workers of this module's own queue (so that killing one touches nothing else).

Every session must end with exactly the offline transcript of the same audio, whatever the chunk
sizes, retries and workers that served it.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from shared.asr.audio import decode_raw
from shared.asr.engine import Recognizer
from shared.dev.models.tones import synthesize
from shared.queue import all_queues
from tests.conftest import Proc, start_api, start_worker, wait_for, written

QUEUE = "stream-tests"
PHRASES = ["привет мир", "как дела", "до свидания"]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"], body


@pytest.fixture(scope="module")
def stream_env(platform_env: dict[str, str]) -> dict[str, str]:
    return {**platform_env, "TONE_WORKER_QUEUE": QUEUE, "TONE_STREAM_CHUNK_TIMEOUT_SECONDS": "20",
            "TONE_STREAM_CHECKPOINT_SECONDS": "0.5"}  # fmt: skip


@pytest.fixture(scope="module")
def stream_api(stream_env: dict[str, str], logs: Path) -> Iterator[Proc]:
    proc = start_api(stream_env, logs, "stream-api")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def workers(stream_env: dict[str, str], logs: Path) -> Iterator[list[Proc]]:
    """The module's workers; a test may kill one and append its replacement."""
    procs = [start_worker(stream_env, logs, "stream-worker", queues=all_queues(QUEUE))]
    yield procs
    for proc in procs:
        proc.stop()


@pytest.fixture(scope="module")
def client(stream_api: Proc, workers: list[Proc], api_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stream_api.url or "", headers=auth(api_key), timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    return synthesize(PHRASES)[0]


@pytest.fixture(scope="module")
def offline(tone_model: Path) -> Any:
    recognizer = Recognizer.load(tone_model, threads=1)
    return lambda samples: written(recognizer.transcribe_file(samples).to_dict()["phrases"])


# -- helpers --------------------------------------------------------------------------------------


def open_session(client: httpx.Client, **options: Any) -> str:
    r = (
        client.post("/transcribe/streaming", json=options)
        if options
        else client.post("/transcribe/streaming")
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["phrases"] == [] and body["is_final"] is False and body["state_id"]
    return str(body["state_id"])


def send(
    client: httpx.Client, sid: str, data: bytes, seq: int | None = None, name: str = "c.raw"
) -> httpx.Response:
    form: dict[str, Any] = {"state_id": sid}
    if seq is not None:
        form["seq"] = str(seq)
    return client.post("/transcribe/streaming/chunk", data=form, files={"file": (name, data)})


def finalize(client: httpx.Client, sid: str) -> httpx.Response:
    return client.post("/transcribe/streaming/finalize", data={"state_id": sid})


def odd_pieces(samples: np.ndarray, seed: int = 7) -> list[np.ndarray]:
    """1 s, 37 ms, 2.3 s, one sample, then random sizes up to 1.5 s."""
    rng = np.random.default_rng(seed)
    sizes = [8000, 296, 18400, 1]
    pieces, pos = [], 0
    while pos < len(samples):
        size = sizes.pop(0) if sizes else int(rng.integers(1, 12000))
        pieces.append(samples[pos : pos + size])
        pos += size
    return pieces


def stream(client: httpx.Client, sid: str, chunks: list[bytes], name: str = "c.raw") -> list[dict[str, Any]]:
    """Send the chunks in order (without seq); the phrases of their answers, concatenated."""
    got: list[dict[str, Any]] = []
    for i, data in enumerate(chunks):
        r = send(client, sid, data, name=name)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["state_id"] == sid and body["is_final"] is False and body["seq"] == i, body
        got += body["phrases"]
    return got


def check_final(
    client: httpx.Client, sid: str, streamed: list[dict[str, Any]], expected: list[dict[str, Any]]
) -> None:
    r = finalize(client, sid)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["is_final"] is True and body["state_id"] == sid
    assert body["phrases"] == expected
    assert body["phrases"][: len(streamed)] == streamed  # the chunk answers were the first phrases


def pcm(samples: np.ndarray) -> bytes:
    return np.asarray(samples, "<i2").tobytes()


def wav(samples: np.ndarray) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, 8000, format="WAV", subtype="PCM_16")
    return out.getvalue()


# -- tests ----------------------------------------------------------------------------------------


def test_odd_raw_pieces_end_with_exactly_the_offline_phrases(
    client: httpx.Client, workers: list[Proc], audio: np.ndarray, offline: Any
) -> None:
    expected = offline(audio)
    assert [p["text"] for p in expected] == PHRASES
    sid = open_session(client)
    streamed = stream(client, sid, [pcm(p) for p in odd_pieces(audio)])
    assert streamed, "phrases come back before the end of the stream"
    check_final(client, sid, streamed, expected)
    again = finalize(client, sid)  # finalize again: the same answer
    assert again.status_code == 200 and again.json()["phrases"] == expected
    assert_error(send(client, sid, pcm(audio[:100])), 409, "session_finished")
    # one worker served every piece: after the first, it kept the session's state (Redis only checked)
    log = workers[-1].log.read_text(errors="replace")
    hits = [int(n) for n in re.findall(r"(\d+) states from this worker's cache", log)]
    assert sum(hits) >= len(odd_pieces(audio)) // 2, hits


def test_wav_pieces_and_mulaw_sessions(client: httpx.Client, audio: np.ndarray, offline: Any) -> None:
    sid = open_session(client)
    streamed = stream(client, sid, [wav(p) for p in odd_pieces(audio, 3) if len(p)], name="c.wav")
    check_final(client, sid, streamed, offline(audio))

    out = io.BytesIO()
    sf.write(out, audio, 8000, format="RAW", subtype="ULAW")
    ulaw = out.getvalue()
    expected = offline(decode_raw(ulaw, encoding="mulaw")[:, 0])
    assert [p["text"] for p in expected] == PHRASES
    sid = open_session(client, encoding="mulaw", sample_rate=8000)
    sizes = np.cumsum([0, 333, 4001, 17, 9000, 2400])
    chunks = [ulaw[a:b] for a, b in itertools.pairwise(sizes)] + [ulaw[sizes[-1] :]]
    check_final(client, sid, stream(client, sid, chunks), expected)


def test_a_repeated_seq_is_answered_again_without_advancing_twice(
    client: httpx.Client, audio: np.ndarray, offline: Any
) -> None:
    pieces = [pcm(p) for p in np.array_split(audio, 6)]
    sid = open_session(client)
    answers = []
    for seq, data in enumerate(pieces):
        r = send(client, sid, data, seq)
        assert r.status_code == 200, r.text
        answers.append(r.json())
        retry = send(client, sid, data, seq)  # the client did not get the answer and sends it again
        assert retry.status_code == 200 and retry.json() == answers[-1]
    assert send(client, sid, pieces[0], 0).json() == answers[0]
    assert_error(send(client, sid, pieces[0], len(pieces) + 1), 409, "sequence_gap")
    check_final(client, sid, [p for a in answers for p in a["phrases"]], offline(audio))


def test_unknown_sessions_and_other_tenants_get_404(
    client: httpx.Client, stream_api: Proc, other_key: str, audio: np.ndarray
) -> None:
    assert_error(send(client, "0" * 32, pcm(audio[:800])), 404, "session_not_found")
    assert_error(finalize(client, "nope"), 404, "session_not_found")
    sid = open_session(client)
    assert send(client, sid, pcm(audio[:800])).status_code == 200
    with httpx.Client(base_url=stream_api.url or "", headers=auth(other_key), timeout=30) as other:
        assert_error(send(other, sid, pcm(audio[800:1600])), 404, "session_not_found")
        assert_error(finalize(other, sid), 404, "session_not_found")
    assert send(client, sid, pcm(audio[800:1600])).json()["seq"] == 1  # untouched by the other tenant
    assert client.post("/transcribe/streaming", json={"encoding": "opus"}).status_code == 422
    assert httpx.post(f"{stream_api.url}/transcribe/streaming").status_code == 401


def test_each_chunk_extends_the_ttl_and_a_late_chunk_gets_the_expiry_error(
    client: httpx.Client, audio: np.ndarray
) -> None:
    sid = open_session(client, ttl_seconds=2)
    for i in range(4):  # 4 s of activity with a 2 s TTL: each chunk extends it
        assert send(client, sid, pcm(audio[i * 800 : (i + 1) * 800])).status_code == 200
        time.sleep(1.0)
    time.sleep(2.5)
    assert_error(send(client, sid, pcm(audio[4000:4800])), 410, "session_expired")
    assert_error(finalize(client, sid), 410, "session_expired")


def test_a_session_continues_on_a_new_worker_after_its_worker_was_killed(
    client: httpx.Client,
    workers: list[Proc],
    stream_env: dict[str, str],
    logs: Path,
    audio: np.ndarray,
    offline: Any,
) -> None:
    pieces = [pcm(p) for p in odd_pieces(audio, 11)]
    half = len(pieces) // 2
    sid = open_session(client)
    streamed = stream(client, sid, pieces[:half])
    old = workers[-1]
    os.killpg(old.popen.pid, signal.SIGKILL)
    old.popen.wait(10)
    workers.append(start_worker(stream_env, logs, "stream-worker-2", queues=all_queues(QUEUE)))
    for seq, data in enumerate(pieces[half:], half):
        r = send(client, sid, data, seq)
        assert r.status_code == 200, r.text
        streamed += r.json()["phrases"]
    check_final(client, sid, streamed, offline(audio))


def test_concurrent_sessions_share_batched_model_calls(
    client: httpx.Client, workers: list[Proc], offline: Any
) -> None:
    recordings = [synthesize(PHRASES[i % 3 :] + PHRASES[: i % 3], pause=0.9 + 0.3 * i)[0] for i in range(6)]

    def one(i: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        sid = open_session(client)
        streamed = stream(client, sid, [pcm(p) for p in odd_pieces(recordings[i], 100 + i)])
        r = finalize(client, sid)
        assert r.status_code == 200, r.text
        return streamed, r.json()["phrases"]

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(6)))
    for recording, (streamed, final) in zip(recordings, results):
        assert final == offline(recording)
        assert final[: len(streamed)] == streamed
    sizes = [int(m) for m in re.findall(r"stream batch of (\d+) sessions", workers[-1].log.read_text())]
    assert sizes and max(sizes) >= 2, sizes


# -- stereo, store, at-least-once -----------------------------------------------------------------


def stereo_recording() -> np.ndarray:
    """Agent (channel 0) and client (channel 1) saying different phrases at different times."""
    agent = synthesize(["привет мир", "до свидания"], lead=0.6, pause=2.4)[0]
    client = synthesize(["как дела"], lead=2.1)[0]
    n = max(len(agent), len(client))
    out = np.zeros((n, 2), np.int16)
    out[: len(agent), 0] = agent
    out[: len(client), 1] = client
    return out


@pytest.fixture(scope="module")
def stereo(
    tone_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    samples = stereo_recording()
    path = tmp_path_factory.mktemp("stereo") / "call.wav"
    sf.write(path, samples, 8000, subtype="PCM_16")
    recognizer = Recognizer.load(tone_model, threads=1)
    expected = written([p.to_dict() for p in recognizer.transcribe_file(path, channels="split").phrases])
    assert {p["channel"] for p in expected} == {0, 1} and len(expected) == 3, expected
    return samples, expected


def test_a_stereo_session_keeps_the_channels_apart_like_the_offline_split_run(
    client: httpx.Client, stereo: tuple[np.ndarray, list[dict[str, Any]]]
) -> None:
    samples, expected = stereo
    sid = open_session(client, channels=2)
    data = pcm(samples)  # interleaved
    sizes = np.cumsum([0, 8, 4004, 37000, 4, 9996, 20000])  # whole 4-byte frames
    chunks = [data[a:b] for a, b in itertools.pairwise(sizes)] + [data[sizes[-1] :]]
    check_final(client, sid, stream(client, sid, chunks), expected)

    sid = open_session(client, channels=2)
    pieces = [wav(samples[a:b]) for a, b in itertools.pairwise([0, 8000, 8296, 26696, 40000, len(samples)])]
    check_final(client, sid, stream(client, sid, pieces, name="c.wav"), expected)

    out = io.BytesIO()
    sf.write(out, samples, 8000, format="RAW", subtype="ULAW")
    sid = open_session(client, channels=2, encoding="mulaw")
    ulaw = out.getvalue()  # µ-law audio differs slightly: the same phrases, channels and order
    body = stream(client, sid, [ulaw[:3002], ulaw[3002:40002], ulaw[40002:]])
    r = finalize(client, sid)
    assert r.status_code == 200 and r.json()["phrases"][: len(body)] == body
    assert [(p["channel"], p["text"]) for p in r.json()["phrases"]] == [
        (p["channel"], p["text"]) for p in expected
    ]


def test_store_true_on_the_http_create_call_keeps_a_completed_job(
    client: httpx.Client, audio: np.ndarray, offline: Any
) -> None:
    sid = open_session(client, store=True, metadata={"call_id": "42"})
    streamed = stream(client, sid, [pcm(p) for p in odd_pieces(audio, 5)])
    r = finalize(client, sid)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["phrases"] == offline(audio) and body["phrases"][: len(streamed)] == streamed
    job_id = body["job_id"]
    assert finalize(client, sid).json()["job_id"] == job_id  # once
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "completed" and job["kind"] == "stream"
    assert job["duration"] == pytest.approx(len(audio) / 8000, abs=0.01)
    assert client.get(f"/v1/jobs/{job_id}/transcript").json()["phrases"] == body["phrases"]
    assert job_id in [j["id"] for j in client.get("/v1/jobs").json()["data"]]
    assert "job_id" not in finalize(client, open_session(client)).json()
    # kept as a job, it is measured and indexed like any transcript (shared.platform.search)
    from shared.platform.analytics import compute

    assert job["analytics"] == compute(body["phrases"], job["duration"], 1)
    word = body["phrases"][0]["text"].split()[0]
    hits = client.get("/v1/search", params={"q": word}).json()["data"]
    assert job_id in {h["job_id"] for h in hits}


def finish_after_in_flight(
    c: httpx.Client,
    sid: str,
    r: httpx.Response,
    seq: int,
    pieces: list[bytes],
    streamed: list[Any],
    want: Any,
) -> None:
    """The in-flight piece ``seq`` was answered; send the rest and compare with the offline run."""
    assert r.status_code == 200, r.text
    assert r.json()["seq"] == seq
    streamed += r.json()["phrases"]
    for n, data in enumerate(pieces[seq + 1 :], seq + 1):
        answer = send(c, sid, data, n)
        assert answer.status_code == 200, answer.text
        streamed += answer.json()["phrases"]
    check_final(c, sid, streamed, want)


def test_a_piece_in_flight_when_its_worker_is_killed_is_answered_by_the_next_worker(
    stream_env: dict[str, str], logs: Path, api_key: str, audio: np.ndarray, offline: Any
) -> None:
    queue = "stream-kill-tests"
    env = {
        **stream_env,
        "TONE_WORKER_QUEUE": queue,
        "TONE_STREAM_REQUEUE_SECONDS": "1",
        "TONE_STREAM_CHUNK_TIMEOUT_SECONDS": "60",
        "TONE_STREAM_CHECKPOINT_SECONDS": "600",
    }  # fmt: skip  (no checkpoint: all is replayed)
    api = start_api(env, logs, "stream-kill-api")
    procs = [start_worker(env, logs, "stream-kill-worker", queues=all_queues(queue))]
    try:
        with httpx.Client(base_url=api.url or "", headers=auth(api_key), timeout=90) as c:
            pieces = [pcm(p) for p in np.array_split(audio, 8)]
            sid = open_session(c)
            streamed = stream(c, sid, pieces[:3])
            with ThreadPoolExecutor(1) as pool:
                future = pool.submit(send, c, sid, pieces[3], 3)
                time.sleep(0.05)
                os.killpg(procs[0].popen.pid, signal.SIGKILL)
                procs[0].popen.wait(10)
                procs.append(start_worker(env, logs, "stream-kill-worker-2", queues=all_queues(queue)))
                r = future.result()
            finish_after_in_flight(c, sid, r, 3, pieces, streamed, offline(audio))
        replays = re.findall(r"stream replay of .*", procs[1].log.read_text())
        # no checkpoint was taken: the new worker replayed seq 0..2 (or 0..3, had the old worker
        # applied the piece in flight before it died) from the session's start
        assert replays and re.search(r"\((3|4) journaled chunks\)", replays[0]), replays
    finally:
        for proc in procs[1:]:
            proc.stop()
        api.stop()


def test_a_piece_taken_by_a_worker_that_died_unanswered_is_requeued_and_answered(
    stream_env: dict[str, str], logs: Path, api_key: str, audio: np.ndarray, offline: Any
) -> None:
    """The re-queue path itself: a worker pops the piece from the pending list and dies before
    applying it (simulated by taking the item out of Redis while no worker runs)."""
    import redis

    from shared.platform.sessions import pending_key

    queue = "stream-lost-tests"
    env = {**stream_env, "TONE_WORKER_QUEUE": queue, "TONE_STREAM_REQUEUE_SECONDS": "1",
           "TONE_STREAM_CHUNK_TIMEOUT_SECONDS": "60"}  # fmt: skip
    broker = redis.Redis.from_url(env["REDIS_URL"])
    api = start_api(env, logs, "stream-lost-api")
    procs = [start_worker(env, logs, "stream-lost-worker", queues=all_queues(queue))]
    try:
        with httpx.Client(base_url=api.url or "", headers=auth(api_key), timeout=90) as c:
            pieces = [pcm(p) for p in np.array_split(audio, 6)]
            sid = open_session(c)
            streamed = stream(c, sid, pieces[:2])
            procs[0].stop()  # no worker now: the next piece waits in the pending list
            with ThreadPoolExecutor(1) as pool:
                future = pool.submit(send, c, sid, pieces[2], 2)
                taken: list[bytes] = []
                deadline = time.monotonic() + 20
                while not taken and time.monotonic() < deadline:
                    taken = broker.lpop(pending_key(queue), 10) or []  # the worker that "died" with it
                    time.sleep(0.02)
                assert taken, "the piece never reached the pending list"
                assert broker.llen(pending_key(queue)) == 0
                procs.append(start_worker(env, logs, "stream-lost-worker-2", queues=all_queues(queue)))
                r = future.result()
            finish_after_in_flight(c, sid, r, 2, pieces, streamed, offline(audio))
    finally:
        for proc in procs:
            proc.stop()
        api.stop()
        broker.close()


# -- a stalled live worker ------------------------------------------------------------------------


def stalled(proc: Proc, seconds: float) -> Any:
    """SIGSTOP the worker's process group now, SIGCONT it after ``seconds`` (in a thread)."""
    import threading

    os.killpg(proc.popen.pid, signal.SIGSTOP)
    timer = threading.Timer(seconds, os.killpg, (proc.popen.pid, signal.SIGCONT))
    timer.start()
    return timer


def test_a_piece_waits_for_a_worker_stalled_for_8_s_instead_of_failing(
    client: httpx.Client, workers: list[Proc], audio: np.ndarray, offline: Any
) -> None:
    """A live worker stopped for longer than the requeue interval (a model load, a GPU start): the
    piece is queued again and answered once a worker runs, within TONE_STREAM_CHUNK_TIMEOUT_SECONDS
    (20 s here), never a 500."""
    pieces = [pcm(p) for p in np.array_split(audio, 5)]
    sid = open_session(client)
    streamed = stream(client, sid, pieces[:2])
    timer = stalled(workers[-1], 8.0)
    try:
        started = time.monotonic()
        r = send(client, sid, pieces[2], 2)
        waited = time.monotonic() - started
    finally:
        timer.join()
        os.killpg(workers[-1].popen.pid, signal.SIGCONT)
    assert r.status_code == 200, r.text
    assert waited >= 7.5, waited  # it was answered by the worker after it went on, not before
    streamed += r.json()["phrases"]
    for seq, data in enumerate(pieces[3:], 3):
        answer = send(client, sid, data, seq)
        assert answer.status_code == 200, answer.text
        streamed += answer.json()["phrases"]
    check_final(client, sid, streamed, offline(audio))


def test_pieces_waiting_for_a_worker_hold_no_database_connection(
    client: httpx.Client, workers: list[Proc], audio: np.ndarray
) -> None:
    """32 sessions (more than the API's pool of 10 + 10 connections) each with a piece waiting for a
    stalled worker: the API still answers calls that need the database, and every piece gets its
    answer once the worker runs again."""
    sids = [open_session(client) for _ in range(32)]
    piece = pcm(audio[:2400])
    timer = stalled(workers[-1], 8.0)
    try:
        with ThreadPoolExecutor(32) as pool:
            futures = [pool.submit(send, client, sid, piece, 0) for sid in sids]
            time.sleep(3.0)  # every piece is waiting now
            assert not any(f.done() for f in futures)
            listed = client.get("/v1/jobs", timeout=5)  # before the fix: waits for the pool, then 500
            assert listed.status_code == 200, listed.text
            answers = [f.result() for f in futures]
    finally:
        timer.join()
        os.killpg(workers[-1].popen.pid, signal.SIGCONT)
    for r in answers:
        assert r.status_code == 200, r.text
        assert r.json()["seq"] == 0


def test_eight_sessions_move_to_the_other_worker_when_theirs_is_killed(
    stream_env: dict[str, str], logs: Path, api_key: str, offline: Any
) -> None:
    """Two live workers; 8 sessions streaming 300 ms pieces; after their first 4 pieces, 4 send the
    rest back to back (a piece always in flight) and 4 at 0.3 s intervals (mostly between pieces);
    0.1 s later the worker draining the queue is SIGKILLed, every session mid-way.
    Every session finishes on the other worker with exactly the offline phrases; the takeover time
    (kill -> the next answer of each session) is printed."""
    import threading

    import redis

    from shared.platform.sessions import awake_key

    queue = "stream-takeover-tests"
    env = {**stream_env, "TONE_WORKER_QUEUE": queue, "TONE_STREAM_REQUEUE_SECONDS": "1",
           "TONE_STREAM_CHUNK_TIMEOUT_SECONDS": "60", "TONE_STREAM_CHECKPOINT_SECONDS": "1"}  # fmt: skip
    broker = redis.Redis.from_url(env["REDIS_URL"])
    api = start_api(env, logs, "takeover-api")
    procs = [start_worker(env, logs, f"takeover-worker-{i}", queues=all_queues(queue)) for i in range(2)]
    recordings = [synthesize(PHRASES[i % 3 :] + PHRASES[: i % 3], pause=0.8 + 0.2 * i)[0] for i in range(8)]
    go = threading.Event()
    killed_at = [0.0]
    sent = [0] * 8
    answers: list[list[tuple[float, float]]] = [[] for _ in range(8)]  # (sent, answered) per piece

    def one(c: httpx.Client, i: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        sid = open_session(c)
        pieces = [pcm(recordings[i][a : a + 2400]) for a in range(0, len(recordings[i]), 2400)]
        streamed: list[dict[str, Any]] = []
        for seq, data in enumerate(pieces):
            if seq == 4:
                go.wait(60)
            if i >= 4 and seq >= 4:
                time.sleep(0.3)
            t = time.monotonic()
            sent[i] = seq + 1
            r = send(c, sid, data, seq)
            assert r.status_code == 200, r.text
            answers[i].append((t, time.monotonic()))
            streamed += r.json()["phrases"]
        r = finalize(c, sid)
        assert r.status_code == 200, r.text
        return streamed, r.json()["phrases"]

    try:
        with (
            httpx.Client(base_url=api.url or "", headers=auth(api_key), timeout=90) as c,
            ThreadPoolExecutor(8) as pool,
        ):
            futures = [pool.submit(one, c, i) for i in range(8)]
            deadline = time.monotonic() + 60
            while min(sent) < 4 and time.monotonic() < deadline:  # every session is under way
                time.sleep(0.01)
            time.sleep(0.2)  # the 4th answers came
            go.set()
            time.sleep(0.1)
            pid = int(broker.get(awake_key(queue)) or 0)  # the pool process draining the queue
            victim = next(p for p in procs if os.getpgid(pid) == p.popen.pid)
            killed_at[0] = time.monotonic()
            os.killpg(victim.popen.pid, signal.SIGKILL)
            victim.popen.wait(10)
            results = [f.result() for f in futures]
        for recording, (streamed, final) in zip(recordings, results):
            assert final == offline(recording)
            assert final[: len(streamed)] == streamed
        in_flight = sum(any(s < killed_at[0] < a for s, a in answers[i]) for i in range(8))
        assert in_flight >= 1, "a piece was in flight when the worker was killed"
        takeover = [min(a for _, a in answers[i] if a > killed_at[0]) - killed_at[0] for i in range(8)]
        print(f"\ntakeover (kill -> next answer): first {min(takeover):.2f} s, last {max(takeover):.2f} s, "
              f"{in_flight} sessions with a piece in flight")  # fmt: skip
        survivor = next(p for p in procs if p is not victim)
        assert re.findall(r"stream replay of \d+ sessions", survivor.log.read_text())
    finally:
        for proc in procs:
            proc.stop()
        api.stop()
        broker.close()


def paced(
    c: httpx.Client, recording: np.ndarray, start_at: float, answered: Any = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A session of ``recording`` in 300 ms pieces sent at real-time pace from ``start_at`` (each
    answer awaited; ``answered(seq)`` after each), then finalized: (streamed phrases, final ones)."""
    sid = open_session(c)
    pieces = [pcm(recording[a : a + 2400]) for a in range(0, len(recording), 2400)]
    streamed: list[dict[str, Any]] = []
    for seq, data in enumerate(pieces):
        time.sleep(max(0.0, start_at + 0.3 * seq - time.time()))
        r = send(c, sid, data, seq)
        assert r.status_code == 200, r.text
        if answered is not None:
            answered(seq)
        streamed += r.json()["phrases"]
    r = finalize(c, sid)
    assert r.status_code == 200, r.text
    return streamed, r.json()["phrases"]


def test_sessions_stay_with_their_worker_across_its_runs(
    stream_env: dict[str, str], logs: Path, api_key: str, offline: Any
) -> None:
    """Two live workers on one queue; 6 sessions stream 300 ms pieces at real-time pace for ~9 s,
    past a run's 5 s. Each session's pieces go to the worker that holds its states, and that
    worker's next run continues on the same process: no session is replayed from its checkpoint
    anywhere. (Before, one worker drained the queue at a time, and each 5 s run that Celery gave to
    the other process replayed every session; with two idle workers Celery alternates them.)"""

    queue = "stream-affinity-tests"
    env = {**stream_env, "TONE_WORKER_QUEUE": queue, "TONE_STREAM_CHECKPOINT_SECONDS": "1",
           "TONE_RATE_LIMIT_PER_MINUTE": "0"}  # fmt: skip
    api = start_api(env, logs, "affinity-api")
    procs = [start_worker(env, logs, f"affinity-worker-{i}", queues=all_queues(queue)) for i in range(2)]
    recordings = [synthesize(PHRASES[i % 3 :] + PHRASES[: i % 3] + PHRASES, pause=1.0)[0] for i in range(6)]
    start_at = time.time() + 1.0

    def one(c: httpx.Client, i: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return paced(c, recordings[i], start_at)

    try:
        assert min(len(r) for r in recordings) / 8000 > 8.0
        with (
            httpx.Client(base_url=api.url or "", headers=auth(api_key), timeout=90) as c,
            ThreadPoolExecutor(6) as pool,
        ):
            results = list(pool.map(lambda i: one(c, i), range(6)))
        for recording, (streamed, final) in zip(recordings, results):
            assert final == offline(recording)
            assert final[: len(streamed)] == streamed
        texts = [proc.log.read_text(errors="replace") for proc in procs]
        runs = sum(len(re.findall(r"Task tone\.stream\[[^]]*\] received", t)) for t in texts)
        assert runs >= 2, "the sessions outlived a run: its next one took over"
        assert not any("stream replay" in t for t in texts), "a session changed workers"
    finally:
        for proc in procs:
            proc.stop()
        api.stop()


def test_a_worker_over_capacity_hands_sessions_to_one_with_room(
    stream_env: dict[str, str], logs: Path, api_key: str, offline: Any
) -> None:
    """Two live workers: the first one serving counts itself over capacity at once
    (TONE_STREAM_SHED_LAG_SECONDS=0), the second one, started once the sessions are under way,
    never. The first wakes the second, then hands it sessions until both hold as many, each
    checkpointed as it goes: the second advances them without replaying anything, and every
    session of 6 ends with exactly the offline phrases."""
    queue = "stream-shed-tests"
    env = {**stream_env, "TONE_WORKER_QUEUE": queue, "TONE_STREAM_CHECKPOINT_SECONDS": "1",
           "TONE_RATE_LIMIT_PER_MINUTE": "0"}  # fmt: skip
    api = start_api(env, logs, "shed-api")
    busy = start_worker(
        {**env, "TONE_STREAM_SHED_LAG_SECONDS": "0"}, logs, "shed-busy", queues=all_queues(queue)
    )
    procs = [busy]
    recordings = [synthesize((PHRASES[i % 3 :] + PHRASES[: i % 3]) * 4, pause=1.0)[0] for i in range(6)]
    start_at = time.time() + 1.0
    sent = [0] * 6

    def one(c: httpx.Client, i: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return paced(c, recordings[i], start_at, lambda seq: sent.__setitem__(i, seq + 1))

    try:
        assert min(len(r) for r in recordings) / 8000 > 15.0
        with (
            httpx.Client(base_url=api.url or "", headers=auth(api_key), timeout=90) as c,
            ThreadPoolExecutor(6) as pool,
        ):
            futures = [pool.submit(one, c, i) for i in range(6)]
            wait_for(lambda: min(sent) >= 2, "every session under way on the first worker", busy, 30)
            roomy = start_worker({**env, "TONE_STREAM_SHED_LAG_SECONDS": "100"}, logs, "shed-roomy",
                                 queues=all_queues(queue))  # fmt: skip
            procs.append(roomy)
            results = [f.result() for f in futures]
            assert min(sent) > 0
        for recording, (streamed, final) in zip(recordings, results):
            assert final == offline(recording)
            assert final[: len(streamed)] == streamed
        busy_log, roomy_log = busy.log.read_text(errors="replace"), roomy.log.read_text(errors="replace")
        assert re.search(r"over capacity \(\d+ sessions, another \d+\): handing [1-9]\d* on", busy_log)
        assert "stream batch of" in roomy_log, "the second worker advanced sessions"
        assert "stream replay" not in busy_log + roomy_log, "a hand-on replayed a journal"
    finally:
        for proc in procs:
            proc.stop()
        api.stop()


def test_a_16_khz_session_in_20_ms_pieces_equals_the_offline_16_khz_file(
    client: httpx.Client, audio: np.ndarray, tone_model: Path, tmp_path: Path
) -> None:
    """The session's resampler keeps its state between pieces (and through Redis): 16 kHz raw
    pieces of 20 ms (and odd sizes) give exactly the phrases of the same 16 kHz file offline."""
    from shared.asr.audio import resample

    wide = resample(audio.reshape(-1, 1), 8000, 16000)[:, 0]
    path = tmp_path / "call-16k.wav"
    sf.write(path, wide, 16000, subtype="PCM_16")
    recognizer = Recognizer.load(tone_model, threads=1)
    expected = recognizer.transcribe_file(path).to_dict()["phrases"]
    assert [p["text"] for p in expected] == PHRASES
    sizes = [320] * 40 + [7, 5000, 1, 16001]  # 20 ms pieces, then odd ones, then 250 ms ones
    pieces, at = [], 0
    while at < len(wide):
        size = sizes[len(pieces)] if len(pieces) < len(sizes) else 4000
        pieces.append(pcm(wide[at : at + size]))
        at += size
    sid = open_session(client, sample_rate=16000)
    check_final(client, sid, stream(client, sid, pieces), written(expected))
