"""docker-compose.yml and Dockerfile.worker, read as text (no Docker engine here): every queue the
platform sends work to (worker/celery_app.py) has a service reading it, on CPU and in the gpu
profile, and the containers run the project's real entry points."""

from __future__ import annotations

import re
from typing import Any

import yaml

from shared.queue import all_queues
from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def _queues_read(service: dict[str, Any]) -> set[str]:
    """The Celery queues a service's worker reads: its -Q, else TONE_WORKER_QUEUES, else the image's
    default (all roles of TONE_WORKER_QUEUE)."""
    command = service.get("command")
    if isinstance(command, list) and "worker" in command and "-Q" in command:
        return set(command[command.index("-Q") + 1].split(","))
    env = service.get("environment") or {}
    if "TONE_WORKER_QUEUES" in env:
        return set(str(env["TONE_WORKER_QUEUES"]).split(","))
    if service.get("image", "").startswith("tone-platform-worker") and "command" not in service:
        return set(all_queues(str(env.get("TONE_WORKER_QUEUE", "cpu"))).split(","))
    return set()


def test_every_queue_has_a_reader_on_cpu_and_in_the_gpu_profile() -> None:
    plain = [s for s in SERVICES.values() if not s.get("profiles")]
    read = set().union(*(_queues_read(s) for s in plain))
    assert set(all_queues("cpu").split(",")) <= read, read
    gpu = [s for s in SERVICES.values() if "gpu" in (s.get("profiles") or [])]
    read_gpu = set().union(*(_queues_read(s) for s in gpu))
    assert {"gpu", "gpu.live"} <= read_gpu, read_gpu
    # a transcription worker never also reads the live queue: a long batch would hold live pieces up
    for name, service in SERVICES.items():
        queues = _queues_read(service)
        assert not ({"cpu", "cpu.live"} <= queues or {"gpu", "gpu.live"} <= queues), name


def test_live_workers_run_onnx_runtime_spinning_inside_steps_only() -> None:
    live = [name for name, service in SERVICES.items() if str((service.get("environment") or {}).get(
        "TONE_WORKER_QUEUES", "")).endswith(".live")]  # fmt: skip
    assert sorted(live) == ["worker-gpu-live", "worker-live"]
    for name in live:
        assert str(SERVICES[name]["environment"].get("TONE_ORT_SPINNING")) == "steps", name
    assert "TONE_ORT_SPINNING" not in (SERVICES["worker"].get("environment") or {})


def test_the_stack_has_its_parts_and_runs_the_real_entry_points() -> None:
    assert {
        "api",
        "worker",
        "worker-live",
        "events",
        "beat",
        "flower",
        "redis",
        "postgres",
        "migrate",
    } <= set(SERVICES)
    assert SERVICES["migrate"]["command"] == ["alembic", "upgrade", "head"]
    assert "worker.celery_app:app" in SERVICES["beat"]["command"]
    assert SERVICES["events"]["command"][:3] == ["celery", "-A", "worker.celery_app:app"]
    api = (ROOT / "Dockerfile.api").read_text()
    assert "api.main:app" in api and "onnxruntime" not in api.split("CMD")[-1]
    worker = (ROOT / "Dockerfile.worker").read_text()
    cmd = re.search(r"^CMD (.+)$", worker, re.M)
    assert cmd and "worker.celery_app:app" in cmd.group(1)
    assert "${TONE_WORKER_QUEUES:-$TONE_WORKER_QUEUE,$TONE_WORKER_QUEUE.live,events}" in cmd.group(1)


def test_every_long_running_service_restarts_and_has_a_health_check() -> None:
    for name, service in SERVICES.items():
        if name == "migrate":  # a one-shot
            assert service.get("restart") == "no"
            continue
        assert service.get("restart") == "unless-stopped", name
        check = service.get("healthcheck") or {}
        assert check.get("test"), f"{name} has no health check"
    flower_check = " ".join(SERVICES["flower"]["healthcheck"]["test"])
    assert "/healthcheck" in flower_check and "Authorization" in flower_check  # Flower's is behind auth
    assert "shared.localstack.flower" in " ".join(SERVICES["flower"]["command"])


def test_health_checks_use_readyz_celery_ping_and_beats_schedule() -> None:
    assert "/readyz" in " ".join(SERVICES["api"]["healthcheck"]["test"])
    for name in ("worker", "worker-live", "events", "worker-gpu", "worker-gpu-live"):
        check = " ".join(SERVICES[name]["healthcheck"]["test"])
        assert "celery -A worker.celery_app:app inspect ping" in check, name
    beat = " ".join(SERVICES["beat"]["healthcheck"]["test"])
    assert "celerybeat-schedule" in beat and "-s" in SERVICES["beat"]["command"]
