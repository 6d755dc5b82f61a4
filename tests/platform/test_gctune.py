"""Serving processes tune the cyclic garbage collector (``shared.platform.gctune``): the API once its
lifespan has warmed it, a worker's pool process once its model is loaded. Each is checked in a
fresh interpreter (this test process's collector is left as it is)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shared.platform import gctune

ROOT = Path(__file__).resolve().parents[2]
TUNED = [gctune.THRESHOLD_0, gctune.THRESHOLD_1, gctune.THRESHOLD_2]

API = """
import gc
from fastapi.testclient import TestClient
from api.main import app
assert gc.get_freeze_count() == 0 and gc.get_threshold() == (700, 10, 10)
with TestClient(app):  # runs the lifespan, as uvicorn does before it accepts a connection
    print(*gc.get_threshold(), gc.get_freeze_count())
"""

WORKER = """
import gc, threading
from worker import tasks
assert gc.get_freeze_count() == 0
tasks._process_init()  # what Celery runs in a fresh pool process
for t in threading.enumerate():
    if t.name == "model-load":
        t.join(120)
print(*gc.get_threshold(), gc.get_freeze_count())
"""


def run(code: str, **env: str) -> list[int]:
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env}, capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return [int(v) for v in done.stdout.split()[-4:]]


def test_the_api_freezes_what_startup_built_and_raises_the_thresholds() -> None:
    *thresholds, frozen = run(API)
    assert thresholds == TUNED
    assert frozen > 20_000  # FastAPI, pydantic, SQLAlchemy: tens of thousands of objects


def test_a_worker_process_freezes_once_its_model_is_loaded(tone_model: Path) -> None:
    *thresholds, frozen = run(
        WORKER, TONE_MODEL_PATH=str(tone_model), DATABASE_URL="postgresql://127.0.0.1:1/none"
    )
    assert thresholds == TUNED
    assert frozen > 20_000


def test_a_worker_process_whose_model_cannot_load_still_freezes_its_imports(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-model.onnx")
    *thresholds, frozen = run(WORKER, TONE_MODEL_PATH=missing, DATABASE_URL="postgresql://127.0.0.1:1/none")
    assert thresholds == TUNED
    assert frozen > 20_000


def test_tune_and_freeze_in_this_process() -> None:
    import gc

    before = gc.get_threshold()
    try:
        gctune.tune()
        assert gc.get_threshold() == tuple(TUNED)
        gctune.freeze()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
