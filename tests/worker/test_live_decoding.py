"""The live worker does not make every session of a round wait for the decoder pool: a session whose
piece closed a phrase that the pool is still decoding stays locked and is saved and answered when
the phrase is decoded (``streaming.settle``), while the other sessions' pieces of the round are
answered at once and later rounds go on. Real Redis; the recognizer's pool is this test's own, so
that the test decides when the phrase is decoded."""

from __future__ import annotations

import shutil
import threading
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
from shared.platform.sessions import Item, Options, SessionStore, journal_key, lag_key, lock_key
from shared.platform.settings import Settings
from tests.engine.test_decoding_overlap import HeldPool
from tests.engine.test_lm import ambiguous_audio, unigram_lm
from worker import streaming

SILENCE = np.zeros(3 * SAMPLE_RATE // 2, np.int16)  # 1.5 s: the phrase before it closes in its piece


@pytest.fixture
def held(
    servers: dict[str, str], tone_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[SessionStore, Settings, HeldPool]]:
    root = tmp_path / "model"
    root.mkdir()
    shutil.copy(tone_model, root / "model.onnx")
    unigram_lm(root / "kenlm.bin", {"мир": -0.1, "мар": -4.0, "дом": -0.5, "кот": -0.7})
    rec = Recognizer.load(root, threads=1)
    pool = HeldPool(rec)
    rec.pool = pool  # type: ignore[assignment]
    monkeypatch.setattr(streaming, "get_recognizer", lambda _: rec)
    settings = Settings(model_path=str(root), threads=1, redis_url=servers["REDIS_URL"])  # type: ignore[call-arg]
    store = streaming.store_for(settings)
    streaming._decoding.clear()
    streaming._states.clear()
    yield store, settings, pool
    pool.release()
    streaming.drain(store, settings)


def piece(store: SessionStore, sid: str, seq: int, audio: np.ndarray) -> Item:
    store.r.hset(journal_key(sid), str(seq), audio.tobytes())
    return Item(sid, seq, "chunk", uuid.uuid4().hex, time.time())


def texts(answer: dict[str, Any] | None) -> list[str] | None:
    return None if answer is None else [p["text"] for p in answer["body"]["phrases"]]


def test_a_session_waiting_for_the_pool_holds_back_no_other(
    held: tuple[SessionStore, Settings, HeldPool],
) -> None:
    store, settings, pool = held
    store.heartbeat(streaming.WORKER_ID)
    slow = store.create("t", Options(), 60)  # beam search (the LM is beside the model)
    quick = store.create("t", Options(), 60)
    spoken, _ = synthesize(["кот"])
    safety = threading.Timer(10.0, pool.release)  # a worker that waited for the pool: fails, no hang
    safety.start()
    round_1 = [
        piece(store, slow, 0, np.concatenate([ambiguous_audio(), SILENCE])),  # two paths: the pool's
        piece(store, quick, 0, np.concatenate([spoken, SILENCE])),  # one path: spelled in the worker
    ]
    done, later, elsewhere = streaming.run_round(store, settings, round_1)
    assert (done, later, elsewhere) == (2, [], [])
    assert texts(store.stored_answer(quick, 0)) == ["кот"]  # answered while the other phrase decodes
    assert store.stored_answer(slow, 0) is None and pool.outstanding() == 1
    assert store.r.get(lock_key(slow)) is not None  # still locked: its next piece must wait
    assert len(streaming._decoding) == 1

    # the next round: the held session's piece waits, the other's is answered
    round_2 = [piece(store, slow, 1, SILENCE), piece(store, quick, 1, SILENCE)]
    done, later, elsewhere = streaming.run_round(store, settings, round_2)
    assert later == [round_2[0]] and elsewhere == []
    assert texts(store.stored_answer(quick, 1)) == []
    assert streaming.settle(store, settings) == 0  # nothing decoded yet: nothing to answer

    safety.cancel()
    pool.release()
    assert streaming.settle(store, settings, timeout=5.0) == 1
    assert texts(store.stored_answer(slow, 0)) == ["мир"]  # the LM's choice, in the piece's answer
    assert store.r.get(lock_key(slow)) is None and not streaming._decoding
    assert [p["text"] for p in store.phrases_many([slow])[0]] == ["мир"]
    done, later, elsewhere = streaming.run_round(store, settings, later)
    assert (done, later, elsewhere) == (1, [], [])
    assert texts(store.stored_answer(slow, 1)) == []


def test_a_run_hands_over_only_once_every_held_session_is_answered(
    held: tuple[SessionStore, Settings, HeldPool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's time is up while a session waits for the pool: it waits for it (keeping its
    heartbeat, so its locks) and answers it before it returns."""
    store, settings, pool = held
    monkeypatch.setattr(streaming, "RUN_SECONDS", 0.5)
    queue = f"test-{uuid.uuid4().hex[:8]}"
    sid = store.create("t", Options(), 60)
    store.r.hset(journal_key(sid), "0", np.concatenate([ambiguous_audio(), SILENCE]).tobytes())
    store.enqueue(queue, sid, 0, "chunk", uuid.uuid4().hex)
    threading.Timer(2.0, pool.release).start()
    started = time.monotonic()
    assert streaming.run(queue, settings) == 1
    assert time.monotonic() - started >= 1.5
    assert texts(store.stored_answer(sid, 0)) == ["мир"]
    assert store.r.get(lock_key(sid)) is None and not streaming._decoding
    # the piece counts in the queue's lag when it is answered: admission sees the pool's wait too
    assert float(store.r.get(lag_key(queue)) or 0) >= 1.5
