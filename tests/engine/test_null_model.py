"""The null model (the model taken out, for measuring the engine): T-one's contract, state passed
through unchanged, quiet frames blank and loud frames letters, so pauses close phrases."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.asr.engine import Recognizer
from shared.asr.types import BLANK_ID, CHUNK_SAMPLES, SPACE_ID, STATE_SIZE
from shared.dev.models.null import build_null_model
from shared.dev.models.tones import synthesize


def test_null_model_keeps_the_contract_and_passes_the_state_through(tmp_path: Path) -> None:
    rec = Recognizer.load(build_null_model(tmp_path / "null"), threads=1)  # the contract is checked at load
    state = np.random.default_rng(0).normal(size=(3, STATE_SIZE)).astype(np.float16)
    signal = np.zeros((3, CHUNK_SAMPLES, 1), np.int32)
    signal[1, :1200] = 6000  # loud first half: 5 speech frames
    logprobs, state_next = rec.model.run(signal, state)
    assert np.array_equal(state_next, state)
    assert logprobs.shape == (3, 10, 35) and np.allclose(np.exp(logprobs).sum(-1), 1, atol=1e-5)
    ids = logprobs.argmax(-1)
    assert (ids[0] == BLANK_ID).all() and (ids[1, 5:] == BLANK_ID).all()
    assert not np.isin(ids[1, :5], [BLANK_ID, SPACE_ID]).any()


def test_null_model_phrases_follow_the_pauses(tmp_path: Path) -> None:
    rec = Recognizer.load(build_null_model(tmp_path / "null"), threads=1)
    audio, expected = synthesize(["абв где", "жзи", "клм ноп рст"])
    phrases = rec.transcribe_file(audio).phrases
    assert len(phrases) == 3
    # no 0.33 s delay inside (the tones model holds it in its state): times come 0.33 s early
    assert [(p.start, p.end) for p in phrases] == [
        (round(e.start - 0.33, 2), round(e.end - 0.33, 2)) for e in expected
    ]
    assert all(p.text for p in phrases)
