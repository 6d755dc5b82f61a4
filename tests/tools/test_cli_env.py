"""Where the command line finds the platform without flags: ``batch``'s server (TONE_SERVER_URL, else
the `up` stack's URL) and the broker of ``celery -A worker.celery_app`` (the `up` stack's env file,
as ``keys`` reads it). No servers: the URLs point at closed ports and the commands say so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, free_port


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TONE_")}
    for name in ("DATABASE_URL", "REDIS_URL"):
        env.pop(name, None)
    return {**env, "TONE_DATA_DIR": str(data_dir), **extra}


def _batch(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import numpy as np
    import soundfile as sf

    (tmp_path / "in").mkdir(exist_ok=True)
    sf.write(tmp_path / "in" / "a.wav", np.zeros(800, dtype=np.int16), 8000, subtype="PCM_16")
    cmd = [
        sys.executable,
        "-m",
        "shared.cli.main",
        "batch",
        str(tmp_path / "in"),
        "--out",
        str(tmp_path / "out"),
    ]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_batch_finds_its_server_in_tone_server_url_then_in_the_up_stack(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    none = _batch(tmp_path, _env(data))
    assert none.returncode == 2 and "TONE_SERVER_URL" in none.stderr

    stack = f"http://127.0.0.1:{free_port()}"
    (data / "up.json").write_text(json.dumps({"urls": {"api": stack}}))
    from_stack = _batch(tmp_path, _env(data))
    assert from_stack.returncode == 2 and f"cannot reach the server at {stack}" in from_stack.stderr

    server = f"http://127.0.0.1:{free_port()}"
    from_env = _batch(tmp_path, _env(data, TONE_SERVER_URL=server))
    assert from_env.returncode == 2 and f"cannot reach the server at {server}" in from_env.stderr


def test_the_celery_app_reads_the_up_stacks_env_file_when_no_url_is_set(tmp_path: Path) -> None:
    broker = f"redis://127.0.0.1:{free_port()}/0"
    (tmp_path / "env").write_text(
        f"export DATABASE_URL='postgresql+psycopg://x@127.0.0.1:1/x'\nexport REDIS_URL='{broker}'\n"
    )
    code = "from worker.celery_app import app; print(app.conf.broker_url)"
    got = subprocess.run(
        [sys.executable, "-c", code], env=_env(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == broker
