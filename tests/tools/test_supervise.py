"""`up --detach` supervises (issue 16, item 6): a SIGKILLed worker master is restarted with a log
line, and when the supervisor itself is killed a second `up` brings back what is missing. The real
command, its own PostgreSQL and Redis, real processes killed with SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.localstack.servers import pid_alive
from tests.conftest import wait_for
from tests.tools.test_up import _run, up_env

pytestmark = pytest.mark.platform


def _state(data: Path) -> dict[str, Any]:
    return json.loads((data / "up.json").read_text())


def _pids(data: Path) -> dict[str, int]:
    return {name: int(p["pid"]) for name, p in _state(data)["processes"].items()}


@pytest.mark.timeout(400)
def test_crashed_processes_are_restarted_and_a_second_up_brings_back_what_is_missing(
    tone_model: Path,
) -> None:
    root, data, env, api_port, flower_port = up_env(tone_model, "tone-supervise-test-")
    up_args = [
        "up",
        "--detach",
        "--port",
        str(api_port),
        "--flower-port",
        str(flower_port),
        "--timeout",
        "90",
    ]
    health = f"http://127.0.0.1:{api_port}/health"
    seen: set[int] = set()
    try:
        started = _run(up_args, env, timeout=150)
        assert started.returncode == 0, started.stdout + started.stderr
        assert "supervised by pid" in started.stdout
        first = _pids(data)
        seen |= set(first.values())
        supervisor = _state(data)["supervisor_pid"]
        assert isinstance(supervisor, int) and pid_alive(supervisor)

        # the events worker's master is SIGKILLed: the supervisor starts it again
        os.killpg(first["events"], signal.SIGKILL)
        wait_for(lambda: _pids(data)["events"] != first["events"], "events restarted", timeout=30)
        restarted = _pids(data)["events"]
        seen.add(restarted)
        assert pid_alive(restarted)
        log = (data / "logs" / "up.log").read_text(errors="replace")
        assert "events exited with status -9; restarting it in" in log and "restarted events" in log

        # the supervisor itself dies, then the transcription worker: a second `up` brings it all back
        os.kill(supervisor, signal.SIGKILL)
        os.killpg(first["worker"], signal.SIGKILL)
        time.sleep(1)
        again = _run(up_args, env, timeout=200)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "missing: worker" in again.stdout, again.stdout
        now = _pids(data)
        seen |= set(now.values())
        assert set(now) == set(first) and all(pid_alive(pid) for pid in now.values()), now
        assert pid_alive(_state(data)["supervisor_pid"])
        assert httpx.get(health, timeout=10).json()["status"] == "ok"
    finally:
        stopped = _run(["down"], env, timeout=120)
    try:
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        left = [pid for pid in seen if pid_alive(pid)]
        assert not left, f"still running after down: {left}"
        assert not (data / "up.json").exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)
