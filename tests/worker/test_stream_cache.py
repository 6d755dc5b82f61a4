"""The live worker's state cache (worker/streaming.py), unit-tested with a fake session store: the
worker uses its own copy of a session's state only while the session's ``rev`` in Redis is the one
it saved; any other ``rev`` (another worker advanced it) means the state is read again, from the
last checkpoint, and the journaled chunks since are replayed to the exact state that was lost."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from shared.platform.sessions import Item, Options
from shared.platform.settings import Settings
from worker import streaming


class FakeStore:
    """The few calls ``prepare`` makes, over a dict of fields; counts the state reads."""

    def __init__(self, fields: dict[str, bytes]) -> None:
        self.fields = fields
        self.state_reads = 0
        self.journaled: dict[int, bytes] = {}

    def load_fields(self, sid: str, names: list[str]) -> dict[str, bytes]:
        if any(n.startswith("state") for n in names):
            self.state_reads += 1
        return {n: self.fields[n] for n in names if n in self.fields}

    def chunk(self, sid: str, seq: int) -> bytes:
        return self.journaled.get(seq, b"\x00\x00" * 800)

    def journal(self, sid: str, start: int, stop: int) -> list[bytes | None]:
        return [self.journaled.get(seq) for seq in range(start, stop)]


@pytest.fixture
def settings(tone_model: Path) -> Settings:
    return Settings(model_path=str(tone_model), threads=1)  # type: ignore[call-arg]


def test_the_cached_state_is_used_only_while_the_rev_is_the_workers(
    settings: Settings, recognizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streaming, "get_recognizer", lambda _: recognizer)
    in_redis = recognizer.new_stream()
    mine = recognizer.new_stream()
    fields = {
        "ttl": b"300",
        "next_seq": b"3",
        "options": Options().to_json().encode(),
        "rev": b"r1",
        "state:0": in_redis.to_bytes(),
    }
    item = Item("sid-1", 3, "chunk", "nonce", time.time())

    store = FakeStore(fields)
    streaming._states.clear()
    streaming._remember("sid-1", b"r1", [mine])
    work = streaming.prepare(store, settings, item, "token")  # type: ignore[arg-type]
    assert isinstance(work, streaming.Work) and work.cached
    assert work.states[0] is mine and store.state_reads == 0

    store = FakeStore({**fields, "rev": b"r2"})  # another worker saved the session since
    streaming._remember("sid-1", b"r1", [mine])
    work = streaming.prepare(store, settings, item, "token")  # type: ignore[arg-type]
    assert isinstance(work, streaming.Work) and not work.cached
    assert work.states[0] is not mine and store.state_reads == 1
    assert work.states[0].to_bytes() == in_redis.to_bytes()
    assert "sid-1" not in streaming._states  # taken out until this round saves it again


def test_the_cache_keeps_the_most_recent_sessions_only(recognizer: Any) -> None:
    streaming._states.clear()
    for i in range(streaming.CACHED_SESSIONS + 5):
        streaming._remember(f"s{i}", b"r", [])
    assert len(streaming._states) == streaming.CACHED_SESSIONS
    assert "s0" not in streaming._states and f"s{streaming.CACHED_SESSIONS + 4}" in streaming._states


def test_a_worker_without_the_states_replays_the_journal_from_the_checkpoint(
    settings: Settings, recognizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from shared.dev.models.tones import synthesize

    monkeypatch.setattr(streaming, "get_recognizer", lambda _: recognizer)
    audio = synthesize(["привет мир", "как дела"])[0]
    pieces = np.array_split(audio, 7)  # odd sizes, not whole 300 ms chunks
    lost = recognizer.new_stream()  # what the dead worker had after pieces 0..5
    closed = [p for piece in pieces[:6] for p in recognizer.feed(lost, piece)]
    at_ckpt = recognizer.new_stream()  # the checkpoint after piece 0..1
    recognizer.feed(at_ckpt, pieces[0])
    recognizer.feed(at_ckpt, pieces[1])
    fields = {
        "ttl": b"300",
        "next_seq": b"6",
        "ckpt": b"2",
        "ckpt_t": str(time.time()).encode(),
        "ckpt_held": b"[]",
        "options": Options().to_json().encode(),
        "rev": b"theirs",
        "state:0": at_ckpt.to_bytes(),
    }
    store = FakeStore(fields)
    store.journaled = {seq: np.asarray(pieces[seq], "<i2").tobytes() for seq in range(2, 7)}
    streaming._states.clear()
    item = Item("sid-1", 6, "chunk", "nonce", time.time())
    work = streaming.prepare(store, settings, item, "token")  # type: ignore[arg-type]
    assert isinstance(work, streaming.Work) and not work.cached and len(work.replay) == 4
    assert work.ckpt == 2
    assert streaming.replay(store, settings, [work]) == [work]  # type: ignore[arg-type]
    assert work.states[0].to_bytes() == lost.to_bytes()
    assert closed, "the replayed pieces closed a phrase (dropped: it was answered already)"

    del store.journaled[3]  # a chunk since the checkpoint is gone: the session cannot go on
    streaming._states.clear()
    answer = streaming.prepare(store, settings, item, "token")  # type: ignore[arg-type]
    assert isinstance(answer, dict) and answer["error"]["code"] == "session_expired"


def test_a_round_spreads_its_checkpoints_but_never_past_the_replay_bound() -> None:
    """Sessions opened together come due together; a round writes the oldest share of them (the
    rest go to the next rounds), always those CHECKPOINT_PIECES past theirs, never a finalize."""
    now = time.time()

    def work(i: int, seq: int, ckpt: int, ckpt_t: float, kind: str = "chunk") -> streaming.Work:
        item = Item(f"sid-{i}", seq, kind, "nonce", now)
        return streaming.Work(item, "token", 300, [], None, ckpt=ckpt, ckpt_t=ckpt_t)

    due = [work(i, 10, 0, now - 5 - i / 1000) for i in range(200)]  # all 3 s past their checkpoint
    overdue = [work(1000 + i, streaming.CHECKPOINT_PIECES, 0, now) for i in range(3)]
    fresh = [work(2000 + i, 10, 10, now) for i in range(20)]
    ending = [work(3000, 10, 0, now - 60, "finalize")]
    round_ = [*due, *overdue, *fresh, *ending]
    chosen = streaming.due_checkpoints(round_, 3.0, now)
    assert {id(w) for w in overdue} <= chosen
    assert not chosen & {id(w) for w in [*fresh, *ending]}
    budget = -(-len(round_) // streaming.CHECKPOINT_SHARE)
    assert len(chosen) == budget
    oldest = sorted(due, key=lambda w: w.ckpt_t)[: budget - len(overdue)]
    assert chosen - {id(w) for w in overdue} == {id(w) for w in oldest}
    # the next rounds take the rest, oldest first, until every due session was written
    rounds = 0
    while any(now - w.ckpt_t >= 3.0 for w in due):
        taken = streaming.due_checkpoints(due, 3.0, now)
        for w in due:
            if id(w) in taken:
                w.ckpt_t = now  # what the round's save does
        rounds += 1
    assert rounds == -(-200 // 25)
    # TONE_STREAM_CHECKPOINT_SECONDS=0: every piece, as documented
    assert streaming.due_checkpoints(due, 0.0, now) == {id(w) for w in due}
