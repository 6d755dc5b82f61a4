"""Admission of live sessions (issue 17, backpressure): a deployment over capacity refuses NEW
sessions with 503 ``over_capacity`` (Retry-After) on HTTP and close 1013 on the WebSockets, while the
sessions already open go on untouched. Two guards: a fixed cap of active sessions
(TONE_STREAM_MAX_SESSIONS) and the live pieces' measured wait (TONE_STREAM_ADMIT_LAG_SECONDS: a
worker that falls behind, or stalls, shows in it). Real uvicorn, Redis and a live worker."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from shared.queue import all_queues
from tests.api.test_streaming import audio, auth, check_final, finalize, offline, pcm, send, stream  # noqa: F401
from tests.api.test_websocket import messages
from tests.conftest import Proc, start_api, start_worker

QUEUE = "capacity-tests"
CAP = 2


@pytest.fixture(scope="module")
def env(platform_env: dict[str, str]) -> dict[str, str]:
    return {**platform_env, "TONE_WORKER_QUEUE": QUEUE, "TONE_STREAM_MAX_SESSIONS": str(CAP),
            "TONE_STREAM_ADMIT_LAG_SECONDS": "1", "TONE_STREAM_CHUNK_TIMEOUT_SECONDS": "30"}  # fmt: skip


@pytest.fixture(scope="module")
def worker(env: dict[str, str], logs: Path) -> Iterator[Proc]:
    proc = start_worker(env, logs, "capacity-worker", queues=all_queues(QUEUE))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def api(env: dict[str, str], logs: Path, worker: Proc) -> Iterator[Proc]:
    proc = start_api(env, logs, "capacity-api")
    yield proc
    proc.stop()


@pytest.fixture
def client(api: Proc, api_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url or "", headers=auth(api_key), timeout=60) as c:
        yield c


def opened(client: httpx.Client) -> httpx.Response:
    return client.post("/transcribe/streaming")


def refused(r: httpx.Response, why: str) -> None:
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "over_capacity" and why in error["message"], error
    assert int(r.headers["Retry-After"]) >= 1


def ws_refused(api: Proc, api_key: str, path: str, config: dict[str, Any]) -> list[dict[str, Any]]:
    """Open a WebSocket session; the messages until the close, which must be 1013."""
    url = (api.url or "").replace("http://", "ws://")
    with connect(f"{url}{path}", additional_headers=auth(api_key)) as ws:
        ws.send(json.dumps(config))
        with contextlib.suppress(ConnectionClosed):  # refused already at the config
            ws.send(np.zeros(2400, "<i2").tobytes())
        got = list(messages(ws))
        assert ws.close_code == 1013, (ws.close_code, got)
    return got


def test_over_the_cap_new_sessions_are_refused_and_open_ones_go_on(
    client: httpx.Client,
    api: Proc,
    api_key: str,
    audio: np.ndarray,  # noqa: F811
    offline: Any,  # noqa: F811
) -> None:
    pieces = [pcm(p) for p in np.array_split(audio, 4)]
    first, second = (opened(client).json()["state_id"] for _ in range(CAP))
    streamed = stream(client, first, pieces[:2])
    refused(opened(client), f"{CAP} sessions active")
    got = ws_refused(api, api_key, "/v1/stream", {"sample_rate": 8000})
    assert got[-1]["type"] == "error" and got[-1]["code"] == "over_capacity", got
    got = ws_refused(api, api_key, "/vosk", {"config": {"sample_rate": 8000}})
    assert got[-1]["error"]["code"] == "over_capacity", got
    # the open sessions are not refused anything
    for seq, data in enumerate(pieces[2:], 2):
        r = send(client, first, data, seq)
        assert r.status_code == 200, r.text
        streamed += r.json()["phrases"]
    check_final(client, first, streamed, offline(audio))
    # a finalized session leaves room for a new one
    r = opened(client)
    assert r.status_code == 200, r.text
    for sid in (second, r.json()["state_id"]):
        assert finalize(client, sid).status_code == 200


def test_while_live_pieces_wait_new_sessions_are_refused_until_the_worker_catches_up(
    client: httpx.Client,
    worker: Proc,
    audio: np.ndarray,  # noqa: F811
    offline: Any,  # noqa: F811
) -> None:
    """The live worker stalls (SIGSTOP) with a piece pending: after the 1 s admission lag, a new
    session is refused (the pending piece's age shows it, though no round reports a lag); once the
    worker goes on, the piece is answered and sessions are admitted again within seconds."""
    pieces = [pcm(p) for p in np.array_split(audio, 4)]
    sid = opened(client).json()["state_id"]
    streamed = stream(client, sid, pieces[:1])
    os.killpg(worker.popen.pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(send, client, sid, pieces[1], 1)
            time.sleep(2.0)
            assert not waiting.done()
            refused(opened(client), "live pieces wait")
            os.killpg(worker.popen.pid, signal.SIGCONT)
            r = waiting.result()
    finally:
        os.killpg(worker.popen.pid, signal.SIGCONT)
    assert r.status_code == 200, r.text
    streamed += r.json()["phrases"]
    deadline = time.monotonic() + 15
    while (again := opened(client)).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert again.status_code == 200, again.text
    assert finalize(client, again.json()["state_id"]).status_code == 200
    for seq, data in enumerate(pieces[2:], 2):
        r = send(client, sid, data, seq)
        assert r.status_code == 200, r.text
        streamed += r.json()["phrases"]
    check_final(client, sid, streamed, offline(audio))
