"""The model does not wait for the decoder pool while it has audio to step (issue 12): a recording
read to its end waits for its last beam-search phrases beside the others, ``transcribe_many`` and the
worker's ``BatchRunner`` (``tests/worker/test_runner_overlap.py``) yield it when they are decoded,
and the pool's backlog stays bounded.

A pool of this module's own stands in for the decoder processes, so that the test decides when a
phrase is decoded: it decodes with the recognizer's own beam decoder, only when released."""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.asr.decoder import to_phrase
from shared.asr.engine import Recognizer, pool_backlog
from shared.asr.types import SAMPLE_RATE
from shared.dev.models.tones import synthesize
from tests.engine.test_lm import ambiguous_audio, unigram_lm


class HeldPool:
    """Futures that the test completes (``release``), decoded then by the recognizer's decoder."""

    def __init__(self, rec: Recognizer) -> None:
        self.rec = rec
        self.held: list[tuple[Future[Any], str, Any, int, tuple[str, ...]]] = []
        self.most_outstanding = 0
        self.lock = threading.Lock()

    def submit(self, decoder: str, raw: Any, channel: int, hotwords: tuple[str, ...] = ()) -> Future[Any]:
        future: Future[Any] = Future()
        with self.lock:
            self.held.append((future, decoder, raw, channel, hotwords))
            self.most_outstanding = max(self.most_outstanding, self.outstanding())
        return future

    def outstanding(self) -> int:
        return sum(not f.done() for f, *_ in self.held)

    def release(self) -> None:
        with self.lock:
            for future, decoder, raw, channel, hotwords in self.held:
                if not future.done():
                    future.set_result(to_phrase(self.rec.decoder(decoder), raw, channel, hotwords))

    def close(self) -> None:
        pass


class Steps:
    """Counts the recognizer's model calls."""

    def __init__(self, rec: Recognizer) -> None:
        self.count = 0
        step = rec.model.step

        def counted(*args: Any) -> Any:
            self.count += 1
            return step(*args)

        rec.model.step = counted  # type: ignore[method-assign]


class Draining:
    """Notes when the recognizer starts waiting for the pool's last phrases (``wait_any`` with
    ``drain``: no model work left)."""

    def __init__(self, rec: Recognizer) -> None:
        self.started = threading.Event()
        wait_any = rec.wait_any

        def noted(decodings: Any, *, drain: bool = False, timeout: float | None = None) -> None:
            if drain:
                self.started.set()
            wait_any(decodings, drain=drain, timeout=timeout)

        rec.wait_any = noted  # type: ignore[method-assign]


def release_when(pool: HeldPool, done: Any, limit: float = 20.0) -> dict[str, bool]:
    """A thread that releases the pool's phrases once ``done()`` holds, or after ``limit`` seconds
    (then ``late``: the recognizer waited for the pool instead of stepping on), and from then on
    every phrase as it comes."""
    said = {"late": False}

    def run() -> None:
        deadline = time.monotonic() + limit
        while not done():
            if time.monotonic() > deadline:
                said["late"] = True
                break
            time.sleep(0.01)
        while True:
            pool.release()
            time.sleep(0.01)

    threading.Thread(target=run, daemon=True).start()
    return said


@pytest.fixture
def lm_dir(tone_model: Path, tmp_path: Path) -> Path:
    root = tmp_path / "model"
    root.mkdir()
    shutil.copy(tone_model, root / "model.onnx")
    unigram_lm(root / "kenlm.bin", {"мир": -0.1, "мар": -4.0, "дом": -0.5, "кот": -0.7})
    return root


def recordings() -> list[np.ndarray]:
    """The first ends with a phrase for the pool (two letters at once); the others are plain
    speech, spelled in the recognizer's process (a single path through the search)."""
    speech, _ = synthesize(["дом кот"], pause=0.9)
    other, _ = synthesize(["кот", "дом"], pause=0.9)
    return [np.concatenate([speech, ambiguous_audio()]), other, np.concatenate([other, speech])]


def test_the_model_steps_the_next_recordings_while_a_finished_ones_phrase_decodes(lm_dir: Path) -> None:
    audios = recordings()
    inline = Recognizer.load(lm_dir)
    steps = Steps(inline)
    want = {i: t.phrases for i, t in inline.transcribe_many(audios, batch=1)}
    assert sum(p.text == "мир" for p in want[0]) == 1
    every_step = steps.count

    rec = Recognizer.load(lm_dir)
    pool = HeldPool(rec)
    rec.pool = pool  # type: ignore[assignment]
    steps = Steps(rec)
    draining = Draining(rec)
    # released once every step was taken and the drain began: the count rises as the last step
    # starts, so releasing on it alone could free the phrase before the drain (a fresh-clone run failed so)
    said = release_when(pool, lambda: steps.count >= every_step and draining.started.is_set())
    order = []
    got = {}
    for i, t in rec.transcribe_many(audios, batch=1):
        order.append(i)
        got[i] = t.phrases
    assert not said["late"], "the model waited for the pool while it had recordings to step"
    assert got == want
    assert order[0] == 1 and sorted(order) == [0, 1, 2]  # 1 came while 0's phrase was held
    assert len(pool.held) == 1 and rec.pool_wait_s == 0.0 and rec.drain_wait_s > 0


def test_the_pools_backlog_is_bounded(lm_dir: Path) -> None:
    """Phrases held forever: the model steps until the backlog is full, then waits for it."""
    amb = ambiguous_audio()
    audios = [np.concatenate([amb, np.zeros(SAMPLE_RATE, np.int16)]) for _ in range(pool_backlog(2) + 4)]
    rec = Recognizer.load(lm_dir)
    pool = HeldPool(rec)
    rec.pool = pool  # type: ignore[assignment]
    steps = Steps(rec)

    def stalled() -> bool:  # no model call for a second while phrases are held
        before = steps.count
        time.sleep(1.0)
        return steps.count == before and pool.outstanding() > 0

    said = release_when(pool, stalled, limit=60.0)
    done = dict(rec.transcribe_many(audios, batch=2))
    assert not said["late"]
    assert len(done) == len(audios) and all(p.text == "мир" for t in done.values() for p in t.phrases)
    assert pool_backlog(2) <= pool.most_outstanding <= pool_backlog(2) + 2  # + one step's phrases
    assert rec.pool_wait_s > 0  # the model waited for a full backlog


def test_a_backlog_of_one_long_recordings_phrases_is_waited_for_not_spun_on(lm_dir: Path) -> None:
    """The backlog full of a recording still being read: the model waits for that recording's
    phrases (a wait that blocks, not a loop that polls)."""
    amb = ambiguous_audio()
    pause = np.zeros(SAMPLE_RATE, np.int16)
    audio = np.concatenate([np.concatenate([amb, pause]) for _ in range(pool_backlog(1) + 8)])
    rec = Recognizer.load(lm_dir)
    pool = HeldPool(rec)
    rec.pool = pool  # type: ignore[assignment]
    steps = Steps(rec)
    waits = []
    wait_any = rec.wait_any

    def counted(*args: Any, **kwargs: Any) -> None:
        waits.append(1)
        wait_any(*args, **kwargs)

    rec.wait_any = counted  # type: ignore[method-assign]

    def stalled() -> bool:
        before = steps.count
        time.sleep(1.0)
        return steps.count == before and pool.outstanding() > 0

    said = release_when(pool, stalled, limit=60.0)
    ((_, transcript),) = rec.transcribe_many([audio], batch=1)
    assert not said["late"]
    assert [p.text for p in transcript.phrases] == ["мир"] * (pool_backlog(1) + 8)
    assert pool.most_outstanding >= pool_backlog(1)
    assert len(waits) < 50, f"{len(waits)} waits: the recognizer polled instead of waiting"
