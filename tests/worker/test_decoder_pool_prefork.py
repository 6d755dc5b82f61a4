"""TONE_DECODER_WORKERS inside a Celery prefork child: such a child is a daemonic process, which
multiprocessing refuses children to; the decoder pool must start there all the same and give the
inline beam-search phrases."""

from __future__ import annotations

import shutil
from pathlib import Path

import billiard

from tests.engine.test_lm import ambiguous_audio, unigram_lm


def _transcribe_in_child(model_dir: str) -> list[str]:
    from shared.asr.engine import Recognizer

    rec = Recognizer.load(model_dir, decoder_workers=1)
    try:
        assert rec.pool is not None
        return [p.text for p in rec.transcribe(ambiguous_audio())]
    finally:
        rec.close()


def test_decoder_pool_starts_in_a_prefork_child(tone_model: Path, tmp_path: Path) -> None:
    shutil.copy(tone_model, tmp_path / "model.onnx")
    unigram_lm(tmp_path / "kenlm.bin", {"мир": -4.0, "мар": -0.1})
    with billiard.Pool(1) as pool:  # the pool Celery's prefork workers run tasks in
        assert pool.apply(_transcribe_in_child, (str(tmp_path),)) == ["мар"]
