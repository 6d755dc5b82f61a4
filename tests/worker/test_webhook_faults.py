"""Webhook events survive a SIGKILLed events worker (issue 16, item 4), with real processes: a
worker killed during an event's first attempt does not block the event for a day (its send lock
dies with it and beat's resend goes out), and a retry whose countdown message died with its worker
is sent by beat's due sweep within its grace, not a quarter of an hour late."""

from __future__ import annotations

import http.server
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Proc, serving, start_worker, wait_for
from tests.worker.test_webhooks import deliveries, make_job, platform  # noqa: F401 (fixture)

QUEUE = "hooks-faults"  # only this test's workers read it


class _Handler(http.server.BaseHTTPRequestHandler):
    server: HangingReceiver

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status = self.server.answer(self.path)
        if status is None:  # hang: the worker is killed while it waits
            self.server.release.wait(60)
            status = 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class HangingReceiver(http.server.ThreadingHTTPServer):
    """Answers each path from its script (None: hang until released); counts requests."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.scripts: dict[str, list[int | None]] = {}
        self.times: dict[str, list[float]] = {}

    def script(self, *answers: int | None) -> str:
        path = f"/hook/{uuid.uuid4().hex[:12]}"
        self.scripts[path] = list(answers)
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def answer(self, path: str) -> int | None:
        with self.lock:
            self.times.setdefault(path, []).append(time.monotonic())
            answers = self.scripts.get(path) or [404]
            return answers.pop(0) if len(answers) > 1 else answers[0]

    def count(self, url: str) -> int:
        with self.lock:
            return len(self.times.get("/" + url.split("/", 3)[3], []))


@pytest.fixture
def receiver() -> Iterator[HangingReceiver]:
    srv = HangingReceiver()
    with serving(srv):
        yield srv
        srv.release.set()


def _repeat_until(action: Callable[[], object], done: Callable[[], bool], proc: Proc, timeout: float) -> None:
    """Run ``action`` every 2 s (as beat runs its sweeps) until ``done()``; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not done():
        assert proc.popen.poll() is None, proc.tail()
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done after {timeout} s:\n{proc.tail()}")
        action()
        time.sleep(2)


def _kill(proc: Proc) -> None:
    os.killpg(proc.popen.pid, signal.SIGKILL)
    proc.popen.wait(10)


def test_an_event_whose_worker_died_during_its_first_attempt_is_sent_again_at_once(
    platform: str,  # noqa: F811
    platform_env: dict[str, str],
    logs: Path,
    receiver: HangingReceiver,
) -> None:
    from shared.queue import enqueue_webhook

    url = receiver.script(None, 200)
    job_id, _ = make_job(platform, url)
    first = start_worker(platform_env, logs, name="hooks-doomed", queues=QUEUE)
    second: Proc | None = None
    try:
        enqueue_webhook(job_id, "job.completed", queue=QUEUE)
        wait_for(lambda: receiver.count(url) == 1, "the first attempt in flight", first, 30)
        _kill(first)
        assert deliveries(platform, job_id) == []  # killed before it could record anything
        second = start_worker(platform_env, logs, name="hooks-second", queues=QUEUE)
        started = time.monotonic()
        # beat's sweep sends an event that was never recorded (here at once, not after its grace)
        _repeat_until(
            lambda: enqueue_webhook(job_id, "job.completed", queue=QUEUE),
            lambda: receiver.count(url) >= 2,
            second,
            45,
        )
        wait_for(lambda: len(deliveries(platform, job_id)) >= 1, "the delivery recorded", second, 20)
        took = time.monotonic() - started
        time.sleep(2)
        rows = deliveries(platform, job_id)
        assert [(r.attempt, r.success) for r in rows] == [(1, True)], rows
        assert took < 40
    finally:
        for proc in (second, first):
            if proc is not None:
                proc.stop()


def test_a_retry_whose_countdown_died_with_its_worker_is_sent_by_the_due_sweep_in_time(
    platform: str,  # noqa: F811
    platform_env: dict[str, str],
    logs: Path,
    receiver: HangingReceiver,
) -> None:
    from shared.queue import EVENTS_QUEUE, enqueue_webhook
    from worker.webhooks import CLAIM_GRACE_SECONDS, send_due

    url = receiver.script(500, 200)
    job_id, _ = make_job(platform, url)
    first = start_worker(platform_env, logs, name="hooks-retry-doomed", queues=QUEUE)
    second: Proc | None = None
    try:
        enqueue_webhook(job_id, "job.completed", queue=QUEUE)
        wait_for(lambda: len(deliveries(platform, job_id)) == 1, "attempt 1 recorded", first, 30)
        (row,) = deliveries(platform, job_id)
        assert row.status_code == 500 and row.next_attempt_at is not None  # attempt 2 in ~5 s
        time.sleep(1)  # the worker holds attempt 2's countdown message now
        _kill(first)
        second = start_worker(platform_env, logs, name="hooks-retry-second", queues=f"{QUEUE},{EVENTS_QUEUE}")
        due = row.next_attempt_at.timestamp()
        # beat's due sweep (beat runs it every 30 s; here every 2 s)
        _repeat_until(send_due, lambda: receiver.count(url) >= 2, second, 90)
        late = time.time() - due
        assert late < CLAIM_GRACE_SECONDS + 10, late
        wait_for(lambda: len(deliveries(platform, job_id)) == 2, "attempt 2 recorded", second, 20)
        rows = deliveries(platform, job_id)
        assert [(r.attempt, r.success) for r in rows] == [(1, False), (2, True)]
    finally:
        for proc in (second, first):
            if proc is not None:
                proc.stop()
