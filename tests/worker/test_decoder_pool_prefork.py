"""TONE_DECODER_WORKERS inside a Celery prefork child: such a child is a daemonic process, which
multiprocessing refuses children to; the decoder pool must start there all the same and give the
inline beam-search phrases."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.api.test_api import auth, wait_final
from tests.conftest import make_key, start_api, start_worker
from tests.engine.test_lm import ambiguous_audio, unigram_lm

QUEUE = "decoder-pool"


def _transcribe_in_child(model_dir: str) -> list[str]:
    from shared.asr.engine import Recognizer

    rec = Recognizer.load(model_dir, decoder_workers=1)
    try:
        assert rec.pool is not None
        return [p.text for p in rec.transcribe(ambiguous_audio())]
    finally:
        rec.close()


PREFORK = """
import sys
import billiard
from tests.worker.test_decoder_pool_prefork import _transcribe_in_child
if __name__ == "__main__":
    with billiard.Pool(1) as pool:  # the pool Celery's prefork workers run tasks in
        print(pool.apply(_transcribe_in_child, (sys.argv[1],)))
"""


def test_decoder_pool_starts_in_a_prefork_child(tone_model: Path, tmp_path: Path) -> None:
    """The prefork pool is made in a fresh interpreter, as a Celery worker makes it: forked from
    pytest, whose other threads (servers' readers, timers) may hold an import lock at the fork,
    the child once hung importing multiprocessing's resource tracker."""
    shutil.copy(tone_model, tmp_path / "model.onnx")
    unigram_lm(tmp_path / "kenlm.bin", {"мир": -4.0, "мар": -0.1})
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", PREFORK, str(tmp_path)],
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "['мар']"


@pytest.mark.platform
def test_a_worker_with_decoder_processes_gives_the_lm_transcript(
    platform_env: dict[str, str], logs: Path, servers: dict[str, str], tone_model: Path, tmp_path: Path
) -> None:
    """A real Celery worker with TONE_DECODER_WORKERS=2 and kenlm.bin beside the model: the job's
    transcript is the LM's choice, decoded in the pool's processes."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    model_dir.chmod(0o755)
    shutil.copy(tone_model, model_dir / "model.onnx")
    unigram_lm(model_dir / "kenlm.bin", {"мир": -4.0, "мар": -0.1})
    (model_dir / "kenlm.bin").chmod(0o644)
    env = {
        **platform_env,
        "TONE_WORKER_QUEUE": QUEUE,
        "TONE_MODEL_PATH": str(model_dir),
        "TONE_DECODER_WORKERS": "2",
    }
    api = start_api(env, logs, "api-decoder-pool")
    worker = start_worker(env, logs, name="decoder-pool", queues=QUEUE)
    try:
        key = make_key(servers, "decoder-pool")
        buf = io.BytesIO()
        sf.write(buf, np.concatenate([ambiguous_audio()] * 2), 8000, format="WAV", subtype="PCM_16")
        got = httpx.post(f"{api.url}/v1/jobs", headers=auth(key), files={"file": ("a.wav", buf.getvalue())})
        assert got.status_code == 202, got.text
        job = wait_final(api.url, key, got.json()["id"], timeout=120)
        assert job["status"] == "completed", (job, worker.tail())
        doc = httpx.get(f"{api.url}/v1/jobs/{job['id']}/transcript", headers=auth(key)).json()
        assert [p["text"] for p in doc["phrases"]] == ["мар", "мар"]
        said = worker.log.read_text(errors="replace")
        loaded = "decoder beam, LM " in said and "2 decoder processes); a warm-up step at B=" in said
        assert loaded, worker.tail()
    finally:
        worker.stop()
        api.stop()
