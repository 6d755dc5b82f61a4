"""How much audio the worker's ``BatchRunner`` reads per recording per round: more when the model is
fast (fewer reads and rounds per recording), ``BLOCK_SECONDS`` when it is slow; the transcripts are
the same whatever the block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from shared.asr.engine import Recognizer
from shared.dev.models.tones import synthesize
from worker import processing
from worker.processing import BLOCK_SECONDS, MAX_BLOCK_SECONDS, BatchRunner, Work


def _transcripts(runner: BatchRunner, paths: list[Path]) -> dict[str, list]:
    for path in paths:
        runner.add(Work(path.name, str(path), channels="split"))
    got = {}
    while len(runner):
        for outcome in runner.round():
            assert outcome.error is None and outcome.transcript is not None
            got[outcome.job_id] = outcome.transcript.phrases
    return got


def test_the_transcripts_are_the_same_whatever_the_block(tmp_path: Path, tone_model: Path) -> None:
    """Stereo calls at 16 kHz (resampled to 8 kHz as they are read) in blocks of 2 s and of 16 s."""
    paths = []
    for i, (left, right) in enumerate([(["привет мир"], ["да"]), (["как дела"] * 6, ["хорошо"] * 5)]):
        a, _ = synthesize(left)
        b, _ = synthesize(right)
        stereo = np.zeros((max(len(a), len(b)), 2), np.int16)
        stereo[: len(a), 0], stereo[: len(b), 1] = a, b
        wide = np.repeat(stereo, 2, axis=0)  # 16 kHz
        paths.append(tmp_path / f"call{i}.wav")
        sf.write(paths[-1], wide, 16000, subtype="PCM_16")
    rec = Recognizer.load(tone_model, threads=1)
    small = _transcripts(BatchRunner(rec, block_seconds=2.0), paths)
    large = _transcripts(BatchRunner(rec, block_seconds=16.0), paths)
    assert small == large and all(small.values())


@pytest.fixture
def runner(recognizer: Recognizer) -> BatchRunner:
    processing._LEARNED.pop(recognizer, None)
    return BatchRunner(recognizer)


def test_a_fast_model_reads_more_per_round_and_a_slow_one_the_least(runner: BatchRunner) -> None:
    assert runner.block_seconds == BLOCK_SECONDS
    runner._tune(per_stream=2.0, elapsed=0.5)  # 4 s of audio per stream per second: 1 s a round
    assert runner.block_seconds == BLOCK_SECONDS
    runner._tune(per_stream=2.0, elapsed=0.05)  # 40 s/s per stream: 10 s in a quarter second
    assert runner.block_seconds == 10.0
    runner._tune(per_stream=2.0, elapsed=0.001)
    assert runner.block_seconds == MAX_BLOCK_SECONDS
    runner._tune(per_stream=0.3, elapsed=0.0001)  # a last, short block tells nothing
    assert runner.block_seconds == MAX_BLOCK_SECONDS
    # the next run of this process's model starts where this one ended
    assert BatchRunner(runner.recognizer).block_seconds == MAX_BLOCK_SECONDS
    fixed = BatchRunner(runner.recognizer, block_seconds=3.0)
    fixed._tune(per_stream=3.0, elapsed=0.001)
    assert fixed.block_seconds == 3.0


def test_the_block_is_chosen_from_the_rounds_it_runs(runner: BatchRunner, tmp_path: Path) -> None:
    """The tones model is fast: after a round or two of a real recording, the next recordings are
    read in larger blocks than the first."""
    audio, _ = synthesize(["привет мир"] * 8)
    path = tmp_path / "long.wav"
    sf.write(path, audio, 8000, subtype="PCM_16")
    _transcripts(runner, [path])
    assert runner.block_seconds > BLOCK_SECONDS
