"""``up``'s process plan, without starting anything: a reader for every queue, secrets off argv."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.localstack.supervisor import process_plan
from shared.queue import EVENTS_QUEUE, all_queues


def plan(tmp_path: Path, workers: int = 3) -> dict[str, list[str]]:
    planned = process_plan(
        {"PATH": "/usr/bin"},
        queue="cpu",
        host="127.0.0.1",
        port=8123,
        flower_port=5566,
        workers=workers,
        data_dir=tmp_path,
        flower_auth="admin:s3cret",
    )
    assert [p.name for p in planned] == ["api", "worker", "worker-live", "events", "beat", "flower"]
    assert all("s3cret" not in " ".join(p.cmd) for p in planned)
    flower = next(p for p in planned if p.name == "flower")
    assert flower.env["FLOWER_BASIC_AUTH"] == "admin:s3cret"
    assert all("FLOWER_BASIC_AUTH" not in p.env for p in planned if p.name != "flower")
    return {p.name: p.cmd for p in planned}


def queues_read(cmd: list[str]) -> set[str]:
    return set(cmd[cmd.index("-Q") + 1].split(",")) if "-Q" in cmd else set()


def test_every_queue_of_the_role_has_exactly_one_reader(tmp_path: Path) -> None:
    cmds = plan(tmp_path)
    readers = [q for cmd in cmds.values() for q in queues_read(cmd)]
    assert sorted(readers) == sorted(all_queues("cpu").split(","))
    assert queues_read(cmds["events"]) == {EVENTS_QUEUE}
    assert cmds["worker"][cmds["worker"].index("-c") + 1] == "3"
    assert cmds["worker-live"][cmds["worker-live"].index("-c") + 1] == "1"


def test_only_the_live_worker_runs_onnx_runtime_spinning_inside_steps_only(tmp_path: Path) -> None:
    planned = {p.name: p.env for p in process_plan(
        {"PATH": "/usr/bin"}, queue="cpu", host="127.0.0.1", port=8123, flower_port=5566, workers=1,
        data_dir=tmp_path, flower_auth="a:b",
    )}  # fmt: skip
    assert planned["worker-live"]["TONE_ORT_SPINNING"] == "steps"
    assert "TONE_ORT_SPINNING" not in planned["worker"]
    spinning = process_plan(
        {"PATH": "/usr/bin", "TONE_ORT_SPINNING": "1"}, queue="cpu", host="127.0.0.1", port=8123,
        flower_port=5566, workers=1, data_dir=tmp_path, flower_auth="a:b",
    )  # fmt: skip
    assert {p.name: p.env for p in spinning}["worker-live"]["TONE_ORT_SPINNING"] == "1"  # asked for: kept


def test_the_api_listens_where_asked_and_beat_keeps_its_schedule_in_the_data_dir(tmp_path: Path) -> None:
    cmds = plan(tmp_path, workers=1)
    api = cmds["api"]
    assert api[api.index("--host") + 1] == "127.0.0.1" and api[api.index("--port") + 1] == "8123"
    assert str(tmp_path / "celerybeat-schedule") in cmds["beat"]
    assert "--port=5566" in cmds["flower"]


def test_up_warns_when_health_says_the_model_is_missing() -> None:
    """`up` says "degraded (no model)" and why, from /health's model_status and model_error."""
    import json

    from shared.localstack.supervisor import _model_warning

    missing = {
        "status": "degraded",
        "model_status": "missing",
        "model_error": "no model at /x; run `make models`",
    }
    warning = _model_warning(json.dumps(missing))
    assert warning is not None and "every job will fail" in warning and "make models" in warning
    assert _model_warning(json.dumps({"status": "ok", "model_status": "ok"})) is None
    assert _model_warning("not json") is None


def test_up_warns_in_its_banner_when_auth_is_off(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from types import SimpleNamespace

    from shared.localstack.supervisor import Stack, _banner

    stack = Stack(tmp_path, "127.0.0.1", 8000, 5555, False)
    stack.urls = {"api": "http://127.0.0.1:8000", "flower": "http://127.0.0.1:5555"}
    settings = SimpleNamespace(auth_disabled=True, model_path="/m", flower_user="admin")
    _banner(stack, settings, "127.0.0.1", "pw", "")
    assert "TONE_AUTH_DISABLED=1: no API key is checked" in capsys.readouterr().out
    _banner(
        stack,
        SimpleNamespace(auth_disabled=False, model_path="/m", flower_user="admin"),
        "127.0.0.1",
        "pw",
        "",
    )
    assert "TONE_AUTH_DISABLED" not in capsys.readouterr().out
