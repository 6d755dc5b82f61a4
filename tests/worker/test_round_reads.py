"""A live round reads what it needs of every session in its one take (``streaming.run_round``): a
session whose states this worker does not hold (new, or taken over from another worker's
checkpoint) gets its checkpoint's fields in the same step, not in an HMGET of its own, one session
after another, as a new burst's round did. Real Redis and the tones model; the store's
``load_fields`` is counted."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.asr.engine import Recognizer
from shared.asr.types import SAMPLE_RATE
from shared.dev.models.tones import synthesize
from shared.platform.sessions import Item, Options, SessionStore, journal_key, session_key
from shared.platform.settings import Settings
from worker import streaming


@pytest.fixture
def live(
    servers: dict[str, str], tone_model: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[SessionStore, Settings, list[str]]]:
    rec = Recognizer.load(tone_model.parent, threads=1)
    monkeypatch.setattr(streaming, "get_recognizer", lambda _: rec)
    settings = Settings(  # type: ignore[call-arg]
        model_path=str(tone_model.parent), threads=1, redis_url=servers["REDIS_URL"],
        stream_checkpoint_seconds=0,  # every piece writes its states: the takeover reads them
    )  # fmt: skip
    store = streaming.store_for(settings)
    reads: list[str] = []
    real = SessionStore.load_fields

    def counted(self: SessionStore, sid: str, names: list[str]) -> dict[str, bytes]:
        reads.append(sid)
        return real(self, sid, names)

    monkeypatch.setattr(SessionStore, "load_fields", counted)
    real_take = SessionStore.take_many

    def take(self: SessionStore, wanted: list[Any], worker: str) -> list[Any]:
        reads.extend(f"take {name}" for _, names, _ in wanted for name in names if name.startswith("state"))
        return real_take(self, wanted, worker)

    monkeypatch.setattr(SessionStore, "take_many", take)
    streaming._states.clear()
    store.heartbeat(streaming.WORKER_ID)
    yield store, settings, reads
    streaming._states.clear()


def piece(store: SessionStore, sid: str, seq: int, audio: np.ndarray) -> Item:
    store.r.hset(journal_key(sid), str(seq), audio.tobytes())
    store.r.hset(session_key(sid), "accepted", str(seq + 1))
    return Item(sid, seq, "chunk", uuid.uuid4().hex, time.time())


def test_new_and_taken_over_sessions_are_read_in_the_rounds_take(
    live: tuple[SessionStore, Settings, list[str]],
) -> None:
    store, settings, reads = live
    spoken, _ = synthesize(["кот", "дом"])
    mono = spoken.astype(np.int16)
    stereo = np.stack([mono, mono[::-1]], axis=1)
    sids = [store.create("t", Options(), 60), store.create("t", Options(channels=2), 60)]
    audio = [mono[:SAMPLE_RATE], stereo[:SAMPLE_RATE]]

    def round_of(seq: int) -> list[dict[str, Any] | None]:
        items = [piece(store, sid, seq, a) for sid, a in zip(sids, audio)]
        assert streaming.run_round(store, settings, items) == (2, [], [])
        return [store.stored_answer(sid, seq) for sid in sids]

    # new sessions: nothing to read but the take, which asks for their checkpoints
    assert all(a is not None and a["status"] == 200 for a in round_of(0))
    assert reads == ["take state:0", "take state:1", "take state"] * 2
    reads.clear()
    assert all(store.r.hexists(session_key(sid), "state:0") for sid in sids)  # checkpointed
    assert store.r.hexists(session_key(sids[1]), "state:1")

    # held by this worker: the take asks for no state
    assert all(a is not None and a["status"] == 200 for a in round_of(1))
    assert reads == []

    # this worker's cache is gone (a new worker takes over): the checkpoints come with the take
    streaming._states.clear()
    assert all(a is not None and a["status"] == 200 for a in round_of(2))
    assert reads == ["take state:0", "take state:1", "take state"] * 2
    assert set(streaming._states) == set(sids)  # held again, from the checkpoints read
