"""``tone-platform bench``'s live clients against the real API and live worker, tiny: the long
sessions (``--long-session-pieces``: every piece answered in order, Redis's input counted between
marks, the phrases the tones model closes seen), and the streaming table's clients over the HTTP
calls and ``/v1/stream`` (every piece answered, none refused)."""

from __future__ import annotations

from shared.dev.bench import _live_streams, _ws_streams, long_sessions
from tests.conftest import Proc


def test_long_sessions_count_redis_bytes_per_piece_between_marks(
    api: Proc, worker: Proc, api_key: str, servers: dict[str, str]
) -> None:
    run = long_sessions(api.url or "", api_key, servers["REDIS_URL"], sessions=2, pieces=30, every=10)
    assert run.errors == []
    assert [k for k, _, _ in run.marks] == [0, 10, 20, 30]
    assert all(len(per_piece) == 2 for per_piece in run.latencies)  # both sessions, every piece
    rows = run.rows()
    assert [(a, b) for a, b, *_ in rows] == [(0, 10), (10, 20), (20, 30)]
    assert all(kib > 0 and rate > 0 and ms > 0 for _, _, kib, rate, ms in rows)
    assert run.phrases >= 2  # 9 s of speech-like audio: phrases closed and sent in both sessions


def test_the_streaming_clients_are_answered_by_the_real_api(api: Proc, worker: Proc, api_key: str) -> None:
    for client in (_live_streams, _ws_streams):
        latencies, errors = client(api.url or "", api_key, 2, 3, "spread")
        assert errors == [] and len(latencies) == 6 and all(ms > 0 for ms in latencies), client.__name__
