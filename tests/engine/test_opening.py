"""A new stream's first chunk (the reference's 300 ms of front padding on a zero state) is answered
from the model's ``opening``, computed once, instead of a model call: the same bits, one call fewer
per stream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.asr.engine import Recognizer
from shared.asr.stream import StreamState
from shared.asr.types import CHUNK_SAMPLES, PADDING_SAMPLES, STATE_SIZE
from shared.dev.models.tones import synthesize


@pytest.fixture(scope="module")
def cost_recognizer(cost_model: Path) -> Iterator[Recognizer]:
    """The cost-faithful model: random weights, so its opening is far from trivial."""
    rec = Recognizer.load(cost_model.parent, threads=2, decoder="greedy")
    yield rec
    rec.close()


def count_rows(monkeypatch: pytest.MonkeyPatch, rec: Recognizer) -> list[int]:
    """The batch size of every model call ``rec`` makes from now on."""
    calls: list[int] = []
    step = rec.model.step

    def counted(bank: Any, streams: list[StreamState], signal: Any) -> Any:
        calls.append(len(streams))
        return step(bank, streams, signal)

    monkeypatch.setattr(rec.model, "step", counted)
    return calls


def plain_run(rec: Recognizer, audio: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The reference's loop: zero state, 2400 zeros in front, one ``session.run`` per chunk."""
    padded = np.concatenate([np.zeros(PADDING_SAMPLES, np.int16), audio])
    state = np.zeros((1, STATE_SIZE), np.float16)
    logprobs = []
    for k in range(len(padded) // CHUNK_SAMPLES):
        signal = padded[k * CHUNK_SAMPLES : (k + 1) * CHUNK_SAMPLES].astype(np.int32).reshape(1, -1, 1)
        lp, state = rec.model.run(signal, state)
        logprobs.append(lp[0])
    return logprobs, state[0]


def test_the_opening_is_the_models_answer_to_the_front_padding(cost_recognizer: Recognizer) -> None:
    zeros = np.zeros((1, CHUNK_SAMPLES, 1), np.int32)
    want_lp, want_state = cost_recognizer.model.run(zeros, np.zeros((1, STATE_SIZE), np.float16))
    got_lp, got_state = cost_recognizer.model.opening()
    assert np.array_equal(got_lp, want_lp[0]) and np.array_equal(got_state, want_state[0])
    assert np.count_nonzero(got_state) > 1000  # not a trivial answer: the test below means something
    with pytest.raises(ValueError, match="read-only"):
        got_state[0] = 1  # shared by every new stream: nobody may write into it


def test_streams_state_after_the_opening_equals_the_reference_loop(
    cost_recognizer: Recognizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(5)
    audio = rng.integers(-4000, 4000, 5 * CHUNK_SAMPLES).astype(np.int16)
    _, want_state = plain_run(cost_recognizer, audio)
    calls = count_rows(monkeypatch, cost_recognizer)
    stream = cost_recognizer.new_stream()
    cost_recognizer.feed(stream, audio)
    assert calls == [1] * 5  # 6 chunks with the front padding, 5 model calls
    assert stream.chunks == 6
    assert np.array_equal(stream.model_state, want_state)
    # each new stream's opening is a copy of its own: writing into one changes no other
    opening = cost_recognizer.model.opening()[1].copy()
    fresh = cost_recognizer.new_stream()
    cost_recognizer.feed(fresh, np.zeros(1, np.int16))  # the padding's chunk only
    assert fresh.chunks == 1 and calls == [1] * 5
    fresh.model_state[:] = 0
    assert np.array_equal(cost_recognizer.model.opening()[1], opening)
    assert np.array_equal(cost_recognizer.new_stream().model_state, np.zeros(STATE_SIZE, np.float16))


def test_a_batch_of_new_and_running_streams_equals_streams_run_alone(
    recognizer: Recognizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streams joining a running batch take the opening while the others go to the model: the
    phrases are those of each stream transcribed alone, and each new stream saved one row."""
    texts = [["абв где"], ["ёжз ийк лмн"], ["опр сту"], ["фхц чшщ ъыь"]]
    audios = [synthesize(t)[0] for t in texts]
    alone = [list(recognizer.transcribe(a)) for a in audios]
    calls = count_rows(monkeypatch, recognizer)
    streams = [recognizer.new_stream() for _ in audios]
    got: list[list[Any]] = [[] for _ in audios]
    pos = [0] * len(audios)
    for round_ in range(400):
        items, which = [], []
        for i, s in enumerate(streams):
            if s.finished or round_ < 3 * i:  # stream i joins at round 3i, mid-run of the others
                continue
            piece = audios[i][pos[i] : pos[i] + 1600]
            pos[i] += len(piece)
            items.append((s, piece, pos[i] >= len(audios[i])))
            which.append(i)
        if not items:
            break
        for i, phrases in zip(which, recognizer.advance(items)):
            got[i] += phrases
    assert got == alone
    chunks = sum(s.chunks for s in streams)
    assert sum(calls) == chunks - len(streams)


def test_only_a_true_opening_skips_the_model(recognizer: Recognizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first chunk that is not silence, or a state that is not the zero state, goes to the model."""
    calls = count_rows(monkeypatch, recognizer)
    loud = StreamState(pending=np.full(CHUNK_SAMPLES, 1000, np.int16))
    primed = StreamState(model_state=np.full(STATE_SIZE, 0.25, np.float16))
    new = StreamState()
    recognizer.advance([(s, np.zeros(CHUNK_SAMPLES, np.int16), False) for s in (loud, primed, new)])
    # round 1: loud and primed in one call, new from its opening; round 2: the three of them
    assert calls == [2, 3]
    assert [s.chunks for s in (loud, primed, new)] == [2, 2, 2]


def test_the_zero_state_test_is_nps_on_every_edge(
    recognizer: Recognizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The zero-state test reads the row's bits (``np.any`` on float16 took 460 µs a row): -0.0
    counts as zero as ``np.any`` has it, one subnormal, a NaN or an infinity anywhere does not."""
    from shared.asr.engine import _all_zero

    rows = {"zero": np.zeros(STATE_SIZE, np.float16), "minus zero": np.full(STATE_SIZE, -0.0, np.float16)}
    for name, value in (("subnormal", 6e-8), ("nan", np.nan), ("inf", np.inf), ("minus", -1.0)):
        row = np.zeros(STATE_SIZE, np.float16)
        row[STATE_SIZE - 1] = value
        rows[name] = row
    mixed = np.zeros(STATE_SIZE, np.float16)
    mixed[::7] = -0.0
    rows["mixed zeros"] = mixed
    for name, row in rows.items():
        assert _all_zero(row) == (not np.any(row)), name
    assert [name for name, row in rows.items() if _all_zero(row)] == ["zero", "minus zero", "mixed zeros"]
    # and through the engine: a state of -0.0 is the zero state (its opening), a subnormal is not
    calls = count_rows(monkeypatch, recognizer)
    streams = [
        StreamState(model_state=rows["minus zero"].copy()),
        StreamState(model_state=rows["subnormal"].copy()),
    ]
    recognizer.advance([(s, np.zeros(CHUNK_SAMPLES, np.int16), False) for s in streams])
    assert calls == [1, 2]
