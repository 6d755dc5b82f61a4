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
    assert [r.label for r in runs] == ["greedy", "beam, inline"]
    assert all(r.phrases > 0 and r.rate > 0 for r in runs)
    out = capsys.readouterr().out
    assert "% of greedy" in out
    assert "phrases equal" in out or "flashlight-text: not installed" in out
