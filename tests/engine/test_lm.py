"""Beam search with a KenLM language model beside model.onnx (the `lm` extra), as the reference."""

from __future__ import annotations

import shutil
from pathlib import Path

import kenlm  # noqa: F401  (the lm extra, installed by `make test`: its absence is a failure)
import numpy as np
import pytest

from shared.asr.decoder import BeamSearchDecoder, single_path
from shared.asr.engine import Recognizer
from shared.asr.errors import ModelError
from shared.asr.types import BLANK_ID, SPACE_ID
from shared.dev.models.tones import synthesize


def unigram_lm(path: Path, words: dict[str, float]) -> Path:
    """A tiny ARPA bigram model (KenLM reads ARPA as well as its binary format)."""
    unigrams = ["-1.0\t<unk>\t0", "0\t<s>\t0", "-1.0\t</s>"] + [f"{lp}\t{w}\t0" for w, lp in words.items()]
    bigrams = [f"{lp}\t<s> {w}" for w, lp in words.items()]  # KenLM wants at least a bigram model
    path.write_text(
        f"\\data\\\nngram 1={len(unigrams)}\nngram 2={len(bigrams)}\n\n\\1-grams:\n"
        + "\n".join(unigrams)
        + "\n\n\\2-grams:\n"
        + "\n".join(bigrams)
        + "\n\n\\end\\\n"
    )
    return path


def ambiguous_audio() -> np.ndarray:
    """ "мир" and "мар" at once: the middle letter is и and а at equal strength."""
    a, _ = synthesize(["мир"])
    b, _ = synthesize(["мар"])
    return ((a.astype(np.int32) + b) // 2).astype(np.int16)


@pytest.mark.parametrize(("preferred", "other"), [("мир", "мар"), ("мар", "мир")])
def test_kenlm_beside_the_model_decides_between_equal_letters(
    tone_model: Path, tmp_path: Path, preferred: str, other: str
) -> None:
    shutil.copy(tone_model, tmp_path / "model.onnx")
    unigram_lm(tmp_path / "kenlm.bin", {preferred: -0.1, other: -4.0})
    rec = Recognizer.load(tmp_path)
    assert rec.lm_path == tmp_path / "kenlm.bin"
    assert rec.default_decoder == "beam"
    (phrase,) = rec.transcribe(ambiguous_audio())
    assert phrase.text == preferred
    assert [w.text for w in phrase.words] == [preferred]


def test_without_lm_the_default_decoder_is_greedy(tone_model: Path) -> None:
    rec = Recognizer.load(tone_model)
    assert rec.lm_path is None
    assert rec.default_decoder == "greedy"


def test_unreadable_kenlm_is_refused_at_load(tone_model: Path, tmp_path: Path) -> None:
    shutil.copy(tone_model, tmp_path / "model.onnx")
    (tmp_path / "kenlm.bin").write_bytes(b"not a language model")
    with pytest.raises(ModelError, match=r"kenlm\.bin"):
        Recognizer.load(tmp_path)


def test_decoder_pool_gives_the_inline_beam_transcripts(tone_model: Path, tmp_path: Path) -> None:
    """Beam search in 2 decoder processes while the model steps on: the same phrases, same order."""
    shutil.copy(tone_model, tmp_path / "model.onnx")
    unigram_lm(tmp_path / "kenlm.bin", {"мир": -0.1, "мар": -4.0, "дом": -0.5, "кот": -0.7})
    amb = ambiguous_audio()
    audios = []
    for i in range(5):
        speech, _ = synthesize(["дом кот", "кот", "дом"][: 1 + i % 3], pause=0.9)
        audios.append(np.concatenate([speech, amb, np.zeros(4000 * i, np.int16), amb]))
    inline = Recognizer.load(tmp_path)
    want = [list(inline.transcribe(a)) for a in audios]
    pooled = Recognizer.load(tmp_path, decoder_workers=2)
    try:
        assert pooled.pool is not None
        got = [list(pooled.transcribe(a)) for a in audios]
        many = dict(pooled.transcribe_many(audios, batch=4))
    finally:
        pooled.close()
    assert got == want
    assert [list(many[i].phrases) for i in range(len(audios))] == want
    assert sum(p.text == "мир" for ps in want for p in ps) == 2 * len(audios)


def test_flashlight_beam_search_equals_pyctcdecode_on_peaked_phrases(
    tone_model: Path, tmp_path: Path
) -> None:
    """The optional C++ decoder (flashlight-text, cp311 x86-64 wheels only) spells the same words
    with the same frames as pyctcdecode when every word is in its vocabulary."""
    pytest.importorskip(
        "flashlight.lib.text.decoder", reason="flashlight-text has wheels for cp311 x86-64 only"
    )
    from shared.asr.flashlight_decoder import FlashlightBeamDecoder

    words = {"мир": -0.1, "мар": -4.0, "дом": -0.5, "кот": -0.7, "слон": -1.0}
    lm = unigram_lm(tmp_path / "lm.arpa", words)
    rec = Recognizer.load(tone_model)
    audio, _ = synthesize(["дом кот", "слон", "кот дом слон"])
    audio = np.concatenate([audio, ambiguous_audio()])
    rec.set_decoder("beam", BeamSearchDecoder(lm))
    want = list(rec.transcribe(audio, decoder="beam"))
    rec.set_decoder("beam", FlashlightBeamDecoder(lm, words))
    got = list(rec.transcribe(audio, decoder="beam"))
    assert [p.text for p in want] == ["дом кот", "слон", "кот дом слон", "мир"]
    assert got == want


def single_path_frames(rng: np.random.Generator, n: int) -> np.ndarray:
    """Frames of speech-like tokens (blank runs, letters, repeats, spaces, also at the ends and
    doubled) where only each frame's token is a candidate for pyctcdecode (others below -5)."""
    weights = np.full(35, 1.0)
    weights[BLANK_ID], weights[SPACE_ID] = 12.0, 4.0
    tokens = rng.choice(35, size=n, p=weights / weights.sum())
    runs = rng.integers(1, 4, size=n)
    ids = np.repeat(tokens, runs)[:n]
    lp = rng.uniform(-40.0, -5.6, size=(n, 35))
    lp[np.arange(n), ids] = rng.uniform(-0.4, 0.0, size=n)
    return lp.astype(np.float32)


def test_single_path_phrases_are_spelled_as_pyctcdecode_spells_them(tmp_path: Path) -> None:
    """Where every frame has one candidate token, the beam search holds one beam: our spelling of
    that path equals pyctcdecode's run, text and word frames, with an LM and with hot words."""
    lm = unigram_lm(tmp_path / "lm.arpa", {"мир": -0.1, "мар": -4.0, "дом": -0.5})
    fast, full = BeamSearchDecoder(lm), BeamSearchDecoder(lm, fast_path=False)
    rng = np.random.default_rng(7)
    spelled = 0
    for i in range(400):
        lp = single_path_frames(rng, int(rng.integers(1, 80)))
        assert single_path(lp)
        hotwords = ["дом", "кот"] if i % 3 == 0 else []
        assert fast.decode(lp, hotwords) == full.decode(lp, hotwords)
        spelled += 1
    assert fast.single_paths == spelled
    assert full.single_paths == 0


def test_a_second_candidate_sends_the_phrase_to_the_search(tmp_path: Path) -> None:
    lm = unigram_lm(tmp_path / "lm.arpa", {"мир": -0.1, "мар": -4.0})
    rng = np.random.default_rng(3)
    lp = single_path_frames(rng, 40)
    k = int(np.argmax(lp[:, BLANK_ID] < -1))  # a frame whose best is not the blank
    lp[k, BLANK_ID] = -4.9  # still a candidate for pyctcdecode (≥ -5 after its log-softmax)
    assert not single_path(lp)
    lp[k, BLANK_ID] = -5.0005  # rounding could put it either side of -5: not ours to decide
    assert not single_path(lp)
    lp[k, BLANK_ID] = -6.0
    assert single_path(lp)
    decoder = BeamSearchDecoder(lm)
    lp[k, BLANK_ID] = -4.9
    decoder.decode(lp)
    assert decoder.single_paths == 0
    assert not single_path(np.exp(lp) / np.exp(lp).sum(axis=1, keepdims=True))  # probabilities
    assert not single_path(np.zeros((0, 35), np.float32))
    nan = single_path_frames(rng, 10)
    nan[3, 5] = np.nan
    assert not single_path(nan)
