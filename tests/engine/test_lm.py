"""Beam search with a KenLM language model beside model.onnx (the `lm` extra), as the reference."""

from __future__ import annotations

import shutil
from pathlib import Path

import kenlm  # noqa: F401  (the lm extra, installed by `make test`: its absence is a failure)
import numpy as np
import pytest

from shared.asr.decoder import BeamSearchDecoder
from shared.asr.engine import Recognizer
from shared.asr.errors import ModelError
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
