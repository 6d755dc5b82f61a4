"""A Redis restart with tasks in flight does not kill a worker (issue 16, item 5): the events worker
(threads, as the stack runs it) holds two webhook attempts whose receiver hangs while its Redis is
stopped and started again. Before the fix the worker exited at once with ``CRITICAL Unrecoverable
error: AttributeError("'NoneType' object has no attribute 'hostname'")`` right after "Restoring 2
unacknowledged message(s)" (see ``shared.queue.BrokerTransport``); now it reconnects, both
attempts are recorded, and an event sent after the restart is delivered. A Redis of this test's own,
so the session's workers never see the restart."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BIN, ROOT, Proc, serving, start_worker, wait_for
from tests.worker.test_webhook_faults import HangingReceiver
from tests.worker.test_webhooks import deliveries, make_job

pytestmark = pytest.mark.platform

QUEUE = "redis-restart-tests"


@pytest.fixture
def own_redis() -> Iterator[tuple[Path, str, int]]:
    """``(data dir, URL, port)`` of a Redis started for this test."""
    from shared.localstack import servers as stack

    root = Path(tempfile.mkdtemp(prefix="tone-redis-restart-"))
    root.chmod(0o755)
    try:
        rd = stack.start_redis(root / "redis")
        yield root / "redis", rd.url, rd.port
    finally:
        stack.stop(root / "redis")
        shutil.rmtree(root, ignore_errors=True)


def send_event(env: dict[str, str], job_id: str) -> None:
    """``job.completed`` for the job, sent through this test's Redis by a process of its own: this
    test process's Celery app (shared by every test module) keeps the session's broker (pointing it
    elsewhere and back left later tests sending to this Redis once it was gone)."""
    call = f"send({job_id!r}, 'job.completed', queue={QUEUE!r})"
    code = f"from shared.queue import enqueue_webhook as send; {call}"
    subprocess.run([str(BIN / "python"), "-c", code], env=env, cwd=ROOT, check=True, timeout=60)


def test_the_events_worker_survives_a_redis_restart_with_attempts_in_flight(
    own_redis: tuple[Path, str, int], servers: dict[str, str], platform_env: dict[str, str], logs: Path
) -> None:
    from shared.localstack import servers as stack

    data_dir, url, port = own_redis
    db = servers["DATABASE_URL"]
    env = {**platform_env, "REDIS_URL": url}
    receiver = HangingReceiver()
    proc: Proc | None = None
    with serving(receiver):
        try:
            proc = start_worker(
                env, logs, name="redis-restart-events", queues=QUEUE, concurrency=4, pool="threads"
            )
            hooks = [receiver.script(None) for _ in range(2)]  # hang until released, then 200
            jobs = [make_job(db, hook)[0] for hook in hooks]
            for job_id in jobs:
                send_event(env, job_id)
            wait_for(lambda: all(receiver.count(h) == 1 for h in hooks), "both attempts in flight", proc, 30)
            stack.stop(data_dir)
            wait_for(
                lambda: "Connection to broker lost" in proc.log.read_text(errors="replace"), "lost", proc, 20
            )
            time.sleep(1)
            stack.start_redis(data_dir, port=port)

            def lines(text: str) -> int:
                return proc.log.read_text(errors="replace").count(text)

            # before the fix: "Restoring 2 unacknowledged message(s)", then "Unrecoverable error"
            wait_for(
                lambda: lines("Connected to") >= 2 or lines("Unrecoverable") > 0, "reconnected", proc, 30
            )
            assert lines("Unrecoverable error") == 0 and proc.popen.poll() is None, proc.tail(60)
            receiver.release.set()  # the attempts in flight end (and are acked on the old channel)
            for job_id in jobs:
                wait_for(lambda j=job_id: len(deliveries(db, j)) >= 1, "attempt recorded", proc, 30)
            # the worker consumes again: an event sent after the restart is delivered
            after = receiver.script(200)
            job_id = make_job(db, after)[0]
            send_event(env, job_id)
            wait_for(lambda: len(deliveries(db, job_id)) == 1, "an event after the restart", proc, 60)
            assert [r.success for r in deliveries(db, job_id)] == [True]
            time.sleep(1)
            log = proc.log.read_text(errors="replace")
            assert proc.popen.poll() is None and "Unrecoverable error" not in log, proc.tail(60)
            assert "'NoneType' object has no attribute 'hostname'" not in log, proc.tail(60)
        finally:
            receiver.release.set()
            if proc is not None:
                proc.stop()
