"""The benchmark's beam-search part runs end to end on a tiny LM (it broke once: its timing wrapper
took no hot words after the decoders did, and `make bench` stopped there with a TypeError)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.dev.bench import run_lm_bench


def test_the_beam_search_bench_runs_greedy_beam_and_the_flashlight_comparison(
    tone_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = run_lm_bench(
        tone_model, "tones", words=300, recordings=2, seconds=6, workers=0, threads=1, rounds=1
    )
    assert [r.label for r in runs] == ["greedy", "beam, inline", "beam, inline, every phrase searched"]
    assert all(r.phrases > 0 and r.rate > 0 for r in runs)
    assert runs[1].texts == runs[2].texts  # the single-path rule changes no phrase
    out = capsys.readouterr().out
    single = int(out.split(" phrases had a single path")[0].rsplit("\n", 1)[1].split(" of ")[0])
    assert single == runs[1].phrases  # the tones model's frames are peaked: one candidate each
    assert "% of greedy" in out
    assert "phrases equal" in out or "flashlight-text: not installed" in out
