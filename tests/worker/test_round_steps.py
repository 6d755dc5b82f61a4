"""A live round's two steps per session (``shared.platform.sessions``): ``take_many`` locks each
session and reads its small fields and the piece's journaled chunk in one Lua call, and a save
with ``unlock`` releases the lock in the same call. Real Redis, the store's own calls (the
end-to-end runs are in tests/api/test_streaming.py and tests/worker/test_takeover.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from shared.platform.sessions import (
    Options,
    Save,
    SessionStore,
    heartbeat_key,
    journal_key,
    lock_key,
    session_key,
)

NAMES = ["ttl", "next_seq", "final", "answer:0"]


@pytest.fixture
def store(servers: dict[str, str]) -> Iterator[SessionStore]:
    client = redis.Redis.from_url(servers["REDIS_URL"])
    yield SessionStore(client)
    client.close()


def session(store: SessionStore) -> str:
    sid = uuid.uuid4().hex
    store.create("tenant", Options(), 600, None, sid)
    return sid


def test_take_many_locks_and_reads_in_one_step_and_leaves_what_another_worker_holds(
    store: SessionStore,
) -> None:
    mine, chunked, theirs, orphan = (session(store) for _ in range(4))
    store.r.hset(journal_key(chunked), "3", b"\x01\x02")
    store.r.set(heartbeat_key("w2"), "1", px=10_000)  # another live worker, alive
    store.r.set(lock_key(theirs), "w2|token", px=10_000)
    store.r.set(lock_key(orphan), "w3|token", px=10_000)  # a worker without a heartbeat: taken over
    got = store.take_many(
        [(mine, NAMES, None), (chunked, NAMES, 3), (theirs, NAMES, None), (orphan, NAMES, 7)], "w1"
    )
    assert got[2] is None
    assert store.r.get(lock_key(theirs)) == b"w2|token"  # not touched
    for sid, taken in ((mine, got[0]), (chunked, got[1]), (orphan, got[3])):
        assert taken is not None
        token, fields, _ = taken
        assert token.startswith("w1|") and store.r.get(lock_key(sid)) == token.encode()
        assert fields == {"ttl": b"600", "next_seq": b"0"}  # only those it has, as HMGET reads them
    assert got[0] is not None and got[0][2] is None  # no chunk asked for
    assert got[1] is not None and got[1][2] == b"\x01\x02"
    assert got[3] is not None and got[3][2] is None  # asked for, not journaled
    # a second take by another worker while w1 holds them (w1 alive): refused
    store.r.set(heartbeat_key("w1"), "1", px=10_000)
    assert store.take_many([(mine, NAMES, None)], "w2") == [None]


def test_a_save_unlocks_only_when_asked_and_only_its_own_lock(store: SessionStore) -> None:
    kept, released, lost, gone, gone_kept = (session(store) for _ in range(5))
    taken = store.take_many([(sid, NAMES, None) for sid in (kept, released, lost, gone, gone_kept)], "w1")
    tokens = [t[0] for t in taken if t is not None]
    assert len(tokens) == 5
    store.r.set(lock_key(lost), "w2|other", px=10_000)  # its lock expired and was taken meanwhile
    store.r.delete(session_key(gone), session_key(gone_kept))  # the sessions expired meanwhile
    saves = [
        Save(kept, tokens[0], 600, {"next_seq": "1"}),
        Save(released, tokens[1], 600, {"next_seq": "1"}, unlock=True),
        Save(lost, tokens[2], 600, {"next_seq": "1"}, unlock=True),
        Save(gone, tokens[3], 600, {"next_seq": "1"}, unlock=True),
        Save(gone_kept, tokens[4], 600, {"next_seq": "1"}),
    ]
    assert store.save_many(saves) == [True, True, False, False, False]
    assert store.r.get(lock_key(gone_kept)) == tokens[4].encode()  # not asked: still held
    assert store.r.get(lock_key(kept)) == tokens[0].encode()  # still held: unlocked later
    assert store.r.get(lock_key(released)) is None
    assert store.r.get(lock_key(lost)) == b"w2|other"  # another's lock stays
    assert store.r.get(lock_key(gone)) is None  # its own lock goes with the session
    assert store.r.hget(session_key(released), "next_seq") == b"1"
    assert store.r.hget(session_key(lost), "next_seq") == b"0"
