"""Live sessions with no live worker (issue 16, item 8): a piece nobody answers gets 504 ``timeout``
after TONE_STREAM_CHUNK_TIMEOUT_SECONDS (not 500 after redis-py's 5 s socket timeout), on HTTP in
the API's error shape, and on ``/v1/stream`` as the protocol's error message and a close 1013 "try
again later" (not 1011 "internal error"). While the pieces wait, the admission guard refuses NEW
sessions (503 ``over_capacity`` / close 1013); a piece given up with its 504 no longer counts.

A real uvicorn and Redis; the API's live queue is one that no worker reads."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from tests.api.test_api import assert_error
from tests.api.test_live_capacity import refused, ws_refused
from tests.api.test_streaming import auth, open_session, pcm, send
from tests.api.test_websocket import messages
from tests.conftest import Proc, start_api, wait_for

pytestmark = pytest.mark.platform

QUEUE = "no-live-worker-tests"  # no worker reads it (nor its live queue)
TIMEOUT = 6  # TONE_STREAM_CHUNK_TIMEOUT_SECONDS: one requeue (5 s) on the way


@pytest.fixture(scope="module")
def api(platform_env: dict[str, str], logs: Path) -> Iterator[Proc]:
    env = {**platform_env, "TONE_WORKER_QUEUE": QUEUE, "TONE_STREAM_CHUNK_TIMEOUT_SECONDS": str(TIMEOUT)}
    proc = start_api(env, logs, "api-no-live-worker")
    yield proc
    proc.stop()


@pytest.fixture
def redis_client(servers: dict[str, str]) -> Iterator[Any]:
    import redis

    from shared.platform.sessions import lag_key, open_key, pending_key, waiting_key
    from shared.queue import live_queue

    client = redis.Redis.from_url(servers["REDIS_URL"])
    yield client
    # nothing reads these: leave no pieces or wake-up messages behind
    queues = [live_queue(QUEUE)] + [f"{live_queue(QUEUE)}:{p}" for p in range(1, 10)]
    client.delete(pending_key(QUEUE), waiting_key(QUEUE), lag_key(QUEUE), open_key(QUEUE), *queues)
    client.close()


def test_a_piece_no_worker_answers_gets_504_on_http_and_close_1013_on_v1_stream(
    api: Proc, api_key: str, redis_client: Any
) -> None:
    from shared.platform.sessions import pending_key

    piece = pcm(np.zeros(8000, np.int16))  # 1 s: more than a /v1/stream piece
    ws_url = (api.url or "").replace("http://", "ws://") + "/v1/stream"
    with httpx.Client(base_url=api.url or "", headers=auth(api_key), timeout=60) as client:
        sid = open_session(client)  # both sessions open while no piece waits: admitted
        with connect(ws_url, additional_headers=auth(api_key)) as ws, ThreadPoolExecutor(2) as pool:
            ws.send(json.dumps({"sample_rate": 8000}))
            ws.send(piece)
            started = time.monotonic()
            ws_got = pool.submit(lambda: (list(messages(ws, timeout=60)), time.monotonic() - started))
            # the stream's piece is queued (its session was admitted before it): now the HTTP one
            wait_for(lambda: redis_client.llen(pending_key(QUEUE)) >= 1, "the stream's piece queued", api, 10)

            def chunk() -> tuple[httpx.Response, float]:
                t = time.monotonic()
                return send(client, sid, piece, 0), time.monotonic() - t

            answer = pool.submit(chunk)
            # both pieces wait for a worker: past the admission lag (1 s), new sessions are refused
            time.sleep(max(0.0, started + 2.5 - time.monotonic()))
            assert not answer.done() and not ws_got.done()
            refused(client.post("/transcribe/streaming"), "live pieces wait")
            refusal = ws_refused(api, api_key, "/v1/stream", {"sample_rate": 8000})
            assert refusal[-1]["type"] == "error" and refusal[-1]["code"] == "over_capacity", refusal

            r, waited = answer.result()
            got, ws_waited = ws_got.result()

            assert_error(r, 504, "timeout")
            assert f"no worker answered within {TIMEOUT} s" in r.json()["error"]["message"], r.text
            assert TIMEOUT - 0.5 < waited < TIMEOUT + 5, waited  # its own timeout, not the socket's 5 s

            assert got and got[-1]["type"] == "error" and got[-1]["code"] == "timeout", got
            assert f"no worker answered within {TIMEOUT} s" in got[-1]["message"], got
            assert TIMEOUT - 0.5 < ws_waited < TIMEOUT + 5, ws_waited
            assert ws.close_code == 1013, (ws.close_code, ws.close_reason)  # try again later
            assert ws.close_reason and "no worker answered" in ws.close_reason, ws.close_reason

        # the pieces given up with their 504 no longer count as waiting: a new session is admitted
        # (and its pieces get their own 504 while no worker reads the queue)
        r = client.post("/transcribe/streaming")
        assert r.status_code == 200, r.text
