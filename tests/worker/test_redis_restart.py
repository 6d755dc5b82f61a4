"""A Redis restart with tasks in flight does not kill a worker (issue 16, item 5): the events worker
(threads, as the stack runs it) holds two webhook attempts whose receiver hangs while its Redis is
stopped and started again. Before the fix the worker exited at once with ``CRITICAL Unrecoverable
error: AttributeError("'NoneType' object has no attribute 'hostname'")`` right after "Restoring 2
unacknowledged message(s)" (see ``shared.queue.BrokerTransport``); now it reconnects, both
attempts are recorded, and an event sent after the restart is delivered. A Redis of this test's own,
so the session's workers never see the restart."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Proc, serving, start_worker, wait_for
from tests.worker.test_webhook_faults import HangingReceiver
from tests.worker.test_webhooks import deliveries, make_job

pytestmark = pytest.mark.platform

QUEUE = "redis-restart-tests"


@pytest.fixture
def own_redis(servers: dict[str, str]) -> Iterator[tuple[Path, str, int]]:
    """``(data dir, URL, port)`` of a Redis started for this test; this process sends through it."""
    from shared.localstack import servers as stack
    from shared.platform.settings import get_settings
    from worker.celery_app import app

    root = Path(tempfile.mkdtemp(prefix="tone-redis-restart-"))
    root.chmod(0o755)
    mp = pytest.MonkeyPatch()
    old_broker = app.conf.broker_url
    try:
        rd = stack.start_redis(root / "redis")
        for name, value in (("DATABASE_URL", servers["DATABASE_URL"]), ("REDIS_URL", rd.url)):
            mp.setenv(name, value)
        get_settings.cache_clear()
        app.close()  # drop any pool made for another broker
        app.conf.broker_url = rd.url
        yield root / "redis", rd.url, rd.port
    finally:
        app.close()
        app.conf.broker_url = old_broker
        mp.undo()
        get_settings.cache_clear()
        stack.stop(root / "redis")
        shutil.rmtree(root, ignore_errors=True)


def test_the_events_worker_survives_a_redis_restart_with_attempts_in_flight(
    own_redis: tuple[Path, str, int], servers: dict[str, str], platform_env: dict[str, str], logs: Path
) -> None:
    from shared.localstack import servers as stack
    from shared.queue import enqueue_webhook

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
                enqueue_webhook(job_id, "job.completed", queue=QUEUE)
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
            enqueue_webhook(job_id, "job.completed", queue=QUEUE)
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
