"""`tone-platform up --detach` / `down`: the real command brings the whole stack up and takes it all down."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from shared.dev.models.tones import synthesize
from shared.localstack.servers import pid_alive
from shared.localstack.supervisor import read_env_file
from tests.conftest import BIN, ROOT, free_port


def _run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "tone-platform"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _pidfile(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def up_env(tone_model: Path, prefix: str) -> tuple[Path, Path, dict[str, str], int, int]:
    """``(root, data dir, env, API port, Flower port)`` for a `tone-platform up` of its own: no
    TONE_/FLOWER_ settings or server URLs inherited, so it starts its own PostgreSQL and Redis."""
    # not pytest's tmp dirs: they are 0700, and as root the servers run as the user "tone"
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    data = root / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TONE_", "FLOWER_"))}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    env.update(TONE_DATA_DIR=str(data), TONE_MODEL_PATH=str(tone_model), TONE_THREADS="1")
    api_port, flower_port = free_port(), free_port()
    while flower_port == api_port:
        flower_port = free_port()
    return root, data, env, api_port, flower_port


@pytest.mark.timeout(240)
def test_up_detach_then_down(tone_model: Path) -> None:
    root, data, env, api_port, flower_port = up_env(tone_model, "tone-up-test-")
    up_args = ["up", "--detach", "--port", str(api_port), "--flower-port", str(flower_port)]
    pids: dict[str, int] = {}
    ports: list[int] = [api_port, flower_port]
    try:
        started = _run([*up_args, "--timeout", "90"], env, timeout=150)
        assert started.returncode == 0, started.stdout + started.stderr
        out = started.stdout
        assert f"http://127.0.0.1:{api_port}" in out
        assert f"http://127.0.0.1:{flower_port}" in out
        password = (data / "flower-password").read_text().strip()
        assert password in out, "the Flower password is printed at start"
        assert "tone-platform keys create --tenant" in out
        assert str(data / "logs") in out
        # detached, no terminal: the supervisor says how it stops, never "Ctrl-C"
        assert "Ctrl-C" not in out and "`tone-platform down` stops" in out

        state = json.loads((data / "up.json").read_text())
        assert set(state["processes"]) == {"api", "worker", "worker-live", "events", "beat", "flower"}
        assert set(state["servers"]) == {"postgres", "redis"}
        pids = {name: p["pid"] for name, p in state["processes"].items()}
        pg_pid = _pidfile(data / "postgres" / "pgdata" / "postmaster.pid")
        redis_pid = _pidfile(data / "redis" / "redis.pid")
        assert pg_pid and redis_pid
        pids.update(postgres=pg_pid, redis=redis_pid)
        assert all(pid_alive(pid) for pid in pids.values()), pids
        for name in ("postgres", "redis"):
            ports.append(json.loads((data / name / "stack.json").read_text())["port"])

        api = f"http://127.0.0.1:{api_port}"
        health = httpx.get(f"{api}/health", timeout=10)
        assert health.status_code == 200, health.text
        assert health.json()["status"] == "ok", "up --detach returns once its workers answer"

        flower = f"http://127.0.0.1:{flower_port}/"
        assert httpx.get(flower, timeout=10).status_code == 401
        assert httpx.get(flower, auth=("admin", "wrong"), timeout=10).status_code == 401
        assert httpx.get(flower, auth=("admin", password), timeout=10).status_code == 200

        # `keys create` finds the stack's own database through <data_dir>/env (no DATABASE_URL here)
        written = read_env_file(data / "env")
        assert written["DATABASE_URL"].startswith("postgresql+psycopg://")
        assert "REDIS_URL" in written
        made = _run(["keys", "create", "--tenant", "t"], env, timeout=60)
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip()
        assert key and "\n" not in key
        assert httpx.get(f"{api}/v1/jobs", timeout=10).status_code == 401
        auth = {"Authorization": f"Bearer {key}"}
        listed = httpx.get(f"{api}/v1/jobs", headers=auth, timeout=10)
        assert listed.status_code == 200, listed.text

        # a job goes through the API, the queue and the worker (the upload is in the shared data dir)
        audio, _ = synthesize(["привет мир"])
        wav = root / "speech.wav"
        sf.write(wav, audio, 8000, subtype="PCM_16")
        with wav.open("rb") as f:
            sent = httpx.post(
                f"{api}/v1/jobs", headers=auth, files={"file": ("speech.wav", f, "audio/wav")}, timeout=30
            )
        assert sent.status_code == 202, sent.text
        job_url = f"{api}/v1/jobs/{sent.json()['id']}"
        deadline = time.monotonic() + 45
        job = sent.json()
        while job["status"] not in ("completed", "failed", "cancelled") and time.monotonic() < deadline:
            time.sleep(0.3)
            job = httpx.get(job_url, headers=auth, timeout=10).json()
        assert job["status"] == "completed", job
        text = httpx.get(f"{job_url}/transcript?format=txt", headers=auth, timeout=10).text
        assert "привет мир" in text

        # a live session goes through the live queue, served by the stack's own live worker
        with httpx.Client(base_url=api, headers=auth, timeout=30) as client:
            sid = client.post("/transcribe/streaming").json()["state_id"]
            raw = {"file": ("c.raw", audio.tobytes())}
            piece = client.post("/transcribe/streaming/chunk", data={"state_id": sid}, files=raw)
            assert piece.status_code == 200, piece.text
            final = client.post("/transcribe/streaming/finalize", data={"state_id": sid}).json()
        assert [p["text"] for p in final["phrases"]] == ["привет мир"], final
        live_log = (data / "logs" / "worker-live.log").read_text(errors="replace")
        assert "tone.stream" in live_log, "the live worker served the session"

        # a second `up` on the same data directory refuses and leaves the running stack alone
        again = _run(up_args, env, timeout=60)
        assert again.returncode == 1
        assert "already up" in again.stderr
        assert httpx.get(f"{api}/health", timeout=10).status_code == 200
    finally:
        stopped = _run(["down"], env, timeout=120)
    try:
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        left = {name: pid for name, pid in pids.items() if pid_alive(pid)}
        assert not left, f"still running after down: {left}"
        assert not [p for p in ports if _listening(p)], "a port of the stack still listens"
        assert not (data / "up.json").exists()
        assert not (data / "env").exists(), "down forgets the servers it stopped (keys would dial them)"
        # nothing running is no error
        idle = _run(["down"], env, timeout=60)
        assert idle.returncode == 0, idle.stderr
        assert "nothing to stop" in idle.stdout
    finally:
        shutil.rmtree(root, ignore_errors=True)
