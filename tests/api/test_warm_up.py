"""A fresh API process does its first requests' one-off work while it starts (``api.main.warm_up``,
in the app's lifespan): the ORM's mapper configuration and the audio readers' import. Checked in a
fresh interpreter, since this test process has done both long ago."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHECK = """
import sys
from fastapi.testclient import TestClient
from api.main import app
from shared.db.models import Base
assert Base.registry._new_mappers and "shared.asr.audio" not in sys.modules, "already warm at import"
with TestClient(app):  # runs the lifespan, as uvicorn does before it accepts a connection
    pass
print(Base.registry._new_mappers, "shared.asr.audio" in sys.modules)
"""


def test_the_api_configures_the_orm_and_imports_the_audio_readers_before_its_first_request() -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", CHECK],
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "True"]
