"""A decoder pool's processes end with the process that made them, however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

MAKER = """
import sys
from shared.asr.decoder_pool import DecoderPool
pool = DecoderPool(2)
print(" ".join(str(p.pid) for p in pool._pool._processes.values()), flush=True)
sys.stdin.read()  # until killed
"""

# The parent dies while its pool processes are still starting (importing the engine): each is
# reparented before its initializer runs, so it must not take the new parent for its own.
MAKER_DIES_EARLY = """
import os, signal
from concurrent.futures.process import ProcessPoolExecutor
from shared.asr.decoder_pool import DecoderPool
spawn = ProcessPoolExecutor._spawn_process
def spawn_then_die(self):
    spawn(self)
    if len(self._processes) == 2:
        print(" ".join(str(pid) for pid in self._processes), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
ProcessPoolExecutor._spawn_process = spawn_then_die
DecoderPool(2)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("maker_code", [MAKER, MAKER_DIES_EARLY], ids=["running", "while-starting"])
def test_pool_processes_exit_when_their_parent_is_killed(maker_code: str) -> None:
    maker = subprocess.Popen(
        [sys.executable, "-c", maker_code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert maker.stdout is not None
    children = [int(pid) for pid in maker.stdout.readline().split()]
    assert len(children) == 2
    maker.send_signal(signal.SIGKILL)
    maker.wait(10)
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in children if alive(pid)]
    for pid in left:  # leave nothing running, whatever the assert says
        os.kill(pid, signal.SIGKILL)
    assert left == [], "decoder processes outlived the process that made them"
