"""The worker's ``BatchRunner`` with a decoder pool: a recording read to its end waits for its last
beam-search phrases beside the others, its lease renewed meanwhile, and ends when they are decoded
(the pool of ``tests/engine/test_decoding_overlap.py``, which decodes only when released)."""

from __future__ import annotations

from pathlib import Path

import soundfile as sf

from shared.asr.engine import Recognizer
from shared.asr.types import SAMPLE_RATE
from tests.engine.test_decoding_overlap import HeldPool, lm_dir, recordings, release_when
from worker.processing import BatchRunner, Work

__all__ = ["lm_dir"]  # the fixture, used by name


def test_the_worker_runner_ends_a_recording_when_its_phrases_are_decoded(
    lm_dir: Path, tmp_path: Path
) -> None:
    audios = recordings()
    paths = []
    for i, a in enumerate(audios):
        paths.append(tmp_path / f"{i}.wav")
        sf.write(paths[-1], a, SAMPLE_RATE, subtype="PCM_16")
    inline = Recognizer.load(lm_dir)
    want = {str(i): t.phrases for i, t in inline.transcribe_many(audios, batch=3)}

    rec = Recognizer.load(lm_dir)
    pool = HeldPool(rec)
    rec.pool = pool  # type: ignore[assignment]
    runner = BatchRunner(rec)
    for i, path in enumerate(paths):
        runner.add(Work(str(i), str(path)))
    said = release_when(pool, lambda: runner.stepping == 0)
    order, got = [], {}
    rounds = 0
    while len(runner):
        rounds += 1
        assert rounds < 1000
        for outcome in runner.round():
            assert outcome.error is None and outcome.transcript is not None
            order.append(outcome.job_id)
            got[outcome.job_id] = outcome.transcript.phrases
            assert outcome.job_id not in runner.job_ids
        if runner.stepping == 0 and len(runner):
            assert set(runner.progress()) == set(runner.job_ids)  # its lease is renewed meanwhile
    assert not said["late"]
    assert got == want
    assert order[-1] == "0" and rec.pool_wait_s == 0.0
