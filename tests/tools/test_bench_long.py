"""``tone-platform bench``'s long live sessions (``--long-session-pieces``): the client's code path
against the real API and live worker, tiny: every piece answered in order, Redis's input counted
between marks, the phrases the tones model closes seen."""

from __future__ import annotations

from shared.dev.bench import long_sessions
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
