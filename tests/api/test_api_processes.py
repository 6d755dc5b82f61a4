"""``python -m api`` with several processes on one port: every process answers, and ``/metrics``
counts the requests of all of them whichever process a scrape reaches."""

from __future__ import annotations

import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import start_api

REQUESTS = 40


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def _livez_count(text: str) -> float:
    found = re.search(r'tone_http_requests_total\{method="GET",route="/livez",status="200"\} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def test_two_processes_answer_and_metrics_add_up_across_them(
    platform_env: dict[str, str], logs: Path
) -> None:
    proc = start_api({**platform_env, "TONE_API_WORKERS": "2"}, logs, "api-two-processes")
    try:
        workers = [
            p for p in _children(proc.popen.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()
        ]
        assert len(workers) == 2, workers
        folder = Path(_environ(workers[0])["PROMETHEUS_MULTIPROC_DIR"])  # set by the parent, for them
        # Which process accepts a new connection is the kernel's choice, and one process can take a
        # whole round; rounds go on until both have answered some (each writes its own counts file).
        sent, writers = 0, set[str]()
        deadline = time.monotonic() + 30
        while len(writers) < 2 and time.monotonic() < deadline:
            with ThreadPoolExecutor(8) as pool:  # new connections at once
                codes = list(
                    pool.map(
                        lambda _: httpx.get(f"{proc.url}/livez", timeout=10).status_code, range(REQUESTS)
                    )
                )
            assert codes == [200] * REQUESTS
            sent += REQUESTS
            writers = {f.stem.rsplit("_", 1)[1] for f in folder.glob("counter_*.db")}
        assert len(writers) == 2, writers  # both processes answered some of them
        for _ in range(6):  # each scrape on a new connection, reaching either process
            scrape = httpx.get(f"{proc.url}/metrics", timeout=10)
            assert scrape.status_code == 200
            assert _livez_count(scrape.text) == sent
            assert "tone_jobs_finished_total" in scrape.text or "tone_queue_depth" in scrape.text
    finally:
        proc.stop()
    assert not folder.exists()  # the counts of this run are gone with it


def test_one_process_when_asked(platform_env: dict[str, str], logs: Path) -> None:
    proc = start_api({**platform_env, "TONE_API_WORKERS": "1"}, logs, "api-one-process")
    try:
        assert _children(proc.popen.pid) == []  # uvicorn serves in this process itself
        for _ in range(3):
            assert httpx.get(f"{proc.url}/livez", timeout=10).status_code == 200
        assert _livez_count(httpx.get(f"{proc.url}/metrics", timeout=10).text) == 3
    finally:
        proc.stop()
