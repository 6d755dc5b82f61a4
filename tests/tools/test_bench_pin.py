"""The bench's stack: ``--pin-live-workers`` puts each live worker process, its children and their
threads, on a CPU of its own (one-core machines, emulated); the stack runs the bench's own code."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.dev.bench import _pin_live_workers

# a "worker": a main process with a thread, and a child process, all sleeping
TREE = """
import subprocess, sys, threading, time
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


def _tasks(pid: int) -> list[int]:
    return [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to tell the pins apart")
def test_each_live_worker_tree_is_pinned_to_a_cpu_of_its_own(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    children: list[int] = []
    try:
        children += [int(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
        time.sleep(0.2)  # the threads are up
        stack, extra = procs[0].pid, procs[1].pid
        (tmp_path / "up.json").write_text(json.dumps({"processes": {"worker-live": {"pid": stack}}}))
        cpus = sorted(os.sched_getaffinity(0))
        _pin_live_workers(tmp_path, [extra])
        for main, child, cpu in ((stack, children[0], cpus[0]), (extra, children[1], cpus[1])):
            assert len(_tasks(main)) >= 2  # the main thread and the sleeping one
            for task in _tasks(main) + _tasks(child):
                assert os.sched_getaffinity(task) == {cpu}
        assert os.sched_getaffinity(0) == set(cpus)  # the bench itself is not pinned
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for p in procs:
            p.kill()
            p.wait()


def test_the_stack_starts_in_the_root_of_the_code_the_bench_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``python -m`` puts the current directory before PYTHONPATH: started from anywhere else, a
    bench run from a `git worktree` would measure the other directory's servers."""
    from shared.dev import bench

    calls: list[tuple[list[str], object]] = []

    def run(cmd: list[str], **kwargs: object) -> None:
        calls.append((cmd, kwargs.get("cwd")))
        raise RuntimeError("stopped before the stack starts")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(subprocess, "run", run)
    with pytest.raises(RuntimeError, match="stopped"), bench.bench_stack(tmp_path / "model.onnx", 1):
        pass
    up = [cwd for cmd, cwd in calls if cmd[1] == "up"]
    assert up == [bench.CODE_ROOT] and (bench.CODE_ROOT / "api" / "__main__.py").is_file()
    assert Path(bench.__file__).resolve().is_relative_to(bench.CODE_ROOT)


def test_the_batch_bench_measures_the_bare_engine_on_the_batchs_own_recordings(
    tmp_path: Path, tone_model: Path
) -> None:
    """The batch run's second reference: the engine alone on the same files (channels split, as the
    batch's jobs), every recording transcribed, its wall time; a recording it cannot read fails."""
    import argparse

    from shared.asr.errors import AudioError
    from shared.dev.bench import batch_folder, files_meter

    batch_folder(tmp_path, recordings=3, seconds=2.0, channels=2)
    files = sorted((tmp_path / "calls").glob("*.wav"))
    measure = files_meter(tone_model, argparse.Namespace(precisions="float16", provider="cpu"), 1)
    assert 0 < measure(files, 4) < 60
    (tmp_path / "calls" / "broken.wav").write_bytes(b"RIFF" + bytes(40))
    with pytest.raises(AudioError, match="is not audio"):
        measure([*files, tmp_path / "calls" / "broken.wav"], 4)
