"""``tone-platform bench --stream-starts``: the simulated live streams send their first pieces all at
once (``together``) or at random moments within one piece (``spread``), and the clients, ours and
the peer's, put that on the wire. The servers here are fakes of the two WebSocket protocols that
only note when each stream's first frame came."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from shared.dev.bench import (
    CHUNK_SECONDS,
    _live_streams,
    _sherpa_streams,
    _ws_streams,
    start_offsets,
    stream_starts,
)


def test_spread_offsets_fall_within_one_piece_and_repeat_for_the_same_n() -> None:
    spread = start_offsets(16, "spread")
    assert len(spread) == 16
    assert all(0.0 <= x < CHUNK_SECONDS for x in spread)
    assert max(spread) - min(spread) > CHUNK_SECONDS / 2  # 16 draws over 300 ms: not bunched
    assert spread == start_offsets(16, "spread")  # every protocol's client gets the same ones
    assert start_offsets(16, "together") == [0.0] * 16
    with pytest.raises(ValueError, match="starts must be one of"):
        start_offsets(4, "staggered")


def test_the_option_takes_a_list_and_refuses_a_typo() -> None:
    assert stream_starts("together,spread") == ("together", "spread")
    assert stream_starts(" spread ") == ("spread",)
    with pytest.raises(SystemExit, match="sprad"):
        stream_starts("together,sprad")
    with pytest.raises(SystemExit):
        stream_starts("")


@contextmanager
def _fake_server(protocol: str) -> Iterator[tuple[str, list[float]]]:
    """A WebSocket server on loopback speaking just enough of ``/v1/stream`` (``ours``) or of
    sherpa-onnx's server (``sherpa``) for the bench's client; yields its URL and the arrival times
    of each connection's first audio frame."""
    firsts: list[float] = []
    ready = threading.Event()
    stop: asyncio.Future[None] | None = None
    port = 0

    async def ours(ws: ServerConnection) -> None:
        await ws.recv()  # the config message
        first = True
        async for message in ws:
            if isinstance(message, bytes):
                if first:
                    firsts.append(time.monotonic())
                    first = False
                await ws.send(json.dumps({"type": "ack"}))
            elif json.loads(message).get("type") == "end":
                await ws.send(json.dumps({"type": "final", "phrases": []}))

    async def sherpa(ws: ServerConnection) -> None:
        first = True
        async for message in ws:
            if isinstance(message, bytes):
                if first:  # as the peer: the first chunk's result comes with the second's
                    firsts.append(time.monotonic())
                    first = False
                else:
                    await ws.send(json.dumps({"text": ""}))
            else:  # "Done"
                await ws.close()

    async def main() -> None:
        nonlocal stop, port
        stop = asyncio.get_running_loop().create_future()
        async with serve(ours if protocol == "ours" else sherpa, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            ready.set()
            await stop

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield f"ws://127.0.0.1:{port}", firsts
    finally:
        loop.call_soon_threadsafe(lambda: stop.set_result(None) if stop and not stop.done() else None)
        thread.join(10)


@pytest.mark.parametrize("protocol", ["ours", "sherpa"])
def test_the_clients_send_first_pieces_as_the_starts_say(protocol: str) -> None:
    spans = {}
    for how in ("together", "spread"):
        with _fake_server(protocol) as (url, firsts):
            if protocol == "ours":
                latencies, errors = _ws_streams(url.replace("ws://", "http://"), "key", 12, 2, how)
            else:
                latencies, errors = _sherpa_streams(url, 12, 2, how)
            assert not errors
            assert latencies
            assert len(firsts) == 12
            spans[how] = max(firsts) - min(firsts)
    assert spans["together"] < 0.05, spans
    assert spans["spread"] > CHUNK_SECONDS / 3, spans


def test_the_http_client_sends_first_pieces_as_the_starts_say() -> None:
    """The HTTP calls' client, against a fake of the three calls that notes each session's first
    chunk's arrival."""
    firsts: dict[str, float] = {}
    lock = threading.Lock()

    class Calls(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path.endswith("/streaming"):
                with lock:
                    sid = f"s{len(firsts)}-{time.monotonic_ns()}"
                answer = json.dumps({"state_id": sid}).encode()
            else:
                if self.path.endswith("/chunk"):
                    sid = body.split(b'name="state_id"\r\n\r\n', 1)[1].split(b"\r\n", 1)[0].decode()
                    with lock:
                        firsts.setdefault(sid, time.monotonic())
                answer = b"{}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_: object) -> None:
            pass

    spans = {}
    for how in ("together", "spread"):
        firsts.clear()
        server = ThreadingHTTPServer(("127.0.0.1", 0), Calls)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            latencies, errors = _live_streams(f"http://127.0.0.1:{server.server_port}", "key", 12, 2, how)
        finally:
            server.shutdown()
            server.server_close()
        assert not errors
        assert len(latencies) == 24
        assert len(firsts) == 12
        spans[how] = max(firsts.values()) - min(firsts.values())
    assert spans["together"] < 0.05, spans
    assert spans["spread"] > CHUNK_SECONDS / 3, spans


def test_a_live_table_warms_the_stack_up_before_its_first_n_and_does_not_count_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The live worker loads its model on its first session: that start-up fell on the first N's
    pieces (p99 of 3.4 s at N = 16 in one run). A few pieces go first, outside the table; a fake
    stack and client here, each call noted, the warm-up's latencies far over 300 ms."""
    from shared.dev import bench

    calls: list[tuple[int, int, str]] = []

    def client(url: str, key: str, n: int, pieces: int, starts: str) -> tuple[list[float], list[str]]:
        calls.append((n, pieces, starts))
        return ([5000.0] if len(calls) == 1 else [100.0] * n * pieces), []

    @contextmanager
    def stack(*args: object) -> Iterator[tuple[str, str, dict[str, str]]]:
        yield "http://fake", "key", {"TONE_DATA_DIR": str(tmp_path), "REDIS_URL": "redis://fake"}

    monkeypatch.setattr(bench, "bench_stack", stack)
    monkeypatch.setattr(bench, "_ws_streams", client)
    monkeypatch.setattr(bench, "_redis_input_bytes", lambda url: 0)
    monkeypatch.setattr(bench, "_replays", lambda logs: 0)
    monkeypatch.setattr(bench.time, "sleep", lambda s: None)
    bench._stream_table(Path("model.onnx"), "ws", [16, 24], 3.0, {16: 50.0}, starts=("spread",))
    assert calls[0] == (bench.WARM_STREAMS, bench.WARM_PIECES, "together")
    assert calls[1:] == [(16, 10, "spread"), (24, 10, "spread")]
    table = capsys.readouterr().out
    assert "largest N with p95 under 300 ms, streams started spread: 24" in table
    assert "5000" not in table
