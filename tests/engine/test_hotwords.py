"""Hot words: a stream's vocabulary boosted in beam search (pyctcdecode's ``hotwords``), per stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.asr.engine import Recognizer
from shared.dev.models.tones import synthesize
from tests.engine.test_lm import ambiguous_audio


def decode_together(rec: Recognizer, audio: np.ndarray, vocabularies: list[tuple[str, ...]]) -> list[str]:
    """Every stream fed the same audio and advanced in the same batched model calls."""
    streams = [rec.new_stream(decoder="beam", hotwords=v) for v in vocabularies]
    results = rec.advance([(s, audio, True) for s in streams])
    return [" ".join(p.text for p in phrases) for phrases in results]


def leaning_to_mir() -> np.ndarray:
    """«мир» a little stronger than «мар» (52 : 48): plain beam search hears «мир»."""
    a, _ = synthesize(["мир"])
    b, _ = synthesize(["мар"])
    return (a * 0.52 + b * 0.48).astype(np.int16)


def test_a_listed_word_wins_where_it_otherwise_loses_and_lists_do_not_leak(tone_model: Path) -> None:
    rec = Recognizer.load(tone_model)
    assert rec.lm_path is None  # beam search without an LM
    plain, with_mir, with_mar, plain_again = decode_together(
        rec, leaning_to_mir(), [(), ("мир",), ("мар",), ()]
    )
    assert plain == "мир"
    assert with_mar == "мар"  # the listed word wins where it otherwise loses
    assert with_mir == "мир"
    assert plain_again == "мир"  # a stream without a list, in the same batched calls, is unchanged


def test_each_stream_gets_its_own_word_from_equal_letters(tone_model: Path) -> None:
    rec = Recognizer.load(tone_model)
    got = decode_together(rec, ambiguous_audio(), [("мир",), (), ("мар",), ("мир",)])
    assert got == ["мир", "маир", "мар", "мир"]


def test_hot_words_do_not_change_a_clear_recording(tone_model: Path) -> None:
    audio, expected = synthesize(["привет мир"])
    rec = Recognizer.load(tone_model)
    (boosted,) = decode_together(rec, audio, [("мар",)])
    assert boosted == expected[0].text


def test_greedy_streams_ignore_hot_words(tone_model: Path) -> None:
    rec = Recognizer.load(tone_model)
    stream = rec.new_stream(decoder="greedy", hotwords=("мар",))
    stream_plain = rec.new_stream(decoder="greedy")
    a, b = rec.advance([(stream, ambiguous_audio(), True), (stream_plain, ambiguous_audio(), True)])
    assert [p.text for p in a] == [p.text for p in b]


def test_the_cli_vocabulary_makes_a_listed_word_win_in_files_alone_and_together(
    tone_model: Path, tmp_path: Path
) -> None:
    import json

    import soundfile as sf

    from tests.engine.test_cli import run_cli

    path = tmp_path / "mir.wav"
    sf.write(path, leaning_to_mir(), 8000, subtype="PCM_16")
    other = tmp_path / "clear.wav"
    sf.write(other, synthesize(["привет"])[0], 8000, subtype="PCM_16")

    def texts(*args: object) -> list[str]:
        out = run_cli("transcribe", path, other, "--model", tone_model, "--format", "json", *args)
        assert out.returncode == 0, out.stderr
        return [" ".join(p["text"] for p in json.loads(line)["phrases"]) for line in out.stdout.splitlines()]

    assert texts("--decoder", "beam") == ["мир", "привет"]
    assert texts("--vocabulary", "мар") == ["мар", "привет"]  # batched: transcribe_many
    assert texts("--vocabulary", "мар", "--batch", "1") == ["мар", "привет"]  # one file at a time
    bad = run_cli("transcribe", path, "--model", tone_model, "--vocabulary", "мар", "--decoder", "greedy")
    assert bad.returncode == 2 and "[invalid_vocabulary]" in bad.stderr
