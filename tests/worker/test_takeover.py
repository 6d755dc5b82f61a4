"""A SIGKILLed worker's jobs resume on another worker within seconds, not after the lease (issue
16, item 2): real workers, an events worker and beat as the stack runs them (already running when
the worker dies), the production lease of 300 s, 16 jobs in the killed worker's batch. The holder's
Redis key lapses, beat's sweep (every 5 s, run by the events worker) finds the holder dead, expires
its leases and re-sends the jobs; the first task takes the whole batch over. Each job completes
once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from shared.db.models import Job
from tests.conftest import BIN, ROOT, Proc, start_beat, start_worker, wait_for
from tests.worker.test_worker import job_row, new_job, transcripts, write_long

QUEUE = "takeover-tests"
JOBS = 16
RESUME_WITHIN_SECONDS = 20.0


@pytest.fixture(scope="module")
def db(servers: dict[str, str]) -> str:
    return servers["DATABASE_URL"]


def own_broker(redis_url: str) -> str:
    """The session's Redis, another database: this test's queues (its "events" queue above all,
    which beat's sweeps go to) have no reader but this test's processes (the session's workers
    read "events" too, and a sweep one of them held back once stalled the takeover for 30 s)."""
    base, _, number = redis_url.rpartition("/")
    return f"{base}/{int(number or 0) + 7}"


def send_all(env: dict[str, str], ids: list[str]) -> None:
    """The jobs' messages, sent on this test's broker by a process of its own (this process's
    Celery app, shared by every test module, keeps the session's broker)."""
    loop = f"for j in {ids!r}: send(j, queue={QUEUE!r}, priority=5)"
    code = f"from shared.queue import enqueue_transcription as send\n{loop}"
    subprocess.run([str(BIN / "python"), "-c", code], env=env, cwd=ROOT, check=True, timeout=60)


def test_a_killed_workers_batch_of_16_resumes_on_another_worker_within_20_s(
    db: str,
    platform_env: dict[str, str],
    logs: Path,
    tmp_path: Path,
) -> None:
    from shared.queue import EVENTS_QUEUE

    env = {**platform_env, "TONE_JOB_LEASE_SECONDS": "300", "TONE_WORKER_BATCH": str(JOBS)}
    env["REDIS_URL"] = own_broker(env["REDIS_URL"])
    audio = write_long(tmp_path / "long.wav", 60)  # still running when the survivor is up
    survivor: Proc | None = None
    doomed: Proc | None = None
    # beat and the events worker that runs its sweeps are up (and sweeping) before any job runs
    events = start_worker(
        env, logs, name="takeover-events", queues=EVENTS_QUEUE, concurrency=4, pool="threads"
    )
    beat = start_beat(env, logs, tmp_path)
    try:

        def sweeps() -> list[str]:
            lines = events.log.read_text(errors="replace").splitlines()
            return [line for line in lines if "tone.requeue_stuck[" in line and "succeeded" in line]

        wait_for(lambda: bool(sweeps()), "beat's first sweep run", beat, 60)
        doomed = start_worker(env, logs, name="takeover-doomed", queues=QUEUE)
        ids = [new_job(db, audio, queue=QUEUE) for _ in range(JOBS)]
        send_all(env, ids)

        def all_running() -> bool:
            rows = [job_row(db, j) for j in ids]
            return all(r.status == "processing" and r.progress > 0 for r in rows)

        wait_for(all_running, "16 jobs in one running batch", doomed, 60)
        owners = {job_row(db, j).lease_owner for j in ids}
        assert len(owners) == 1, owners  # one batch of one task run
        survivor = start_worker(env, logs, name="takeover-survivor", queues=QUEUE)
        os.killpg(doomed.popen.pid, signal.SIGKILL)
        doomed.popen.wait(10)
        killed_at = time.monotonic()
        before = {j: job_row(db, j) for j in ids}
        progress = sorted(r.progress for r in before.values())
        print(f"progress at the kill: {progress[0]:.2f}..{progress[-1]:.2f}")
        states = [(r.status, round(r.progress, 3), r.lease_owner) for r in before.values()]
        assert all(r.status == "processing" and r.progress < 1 for r in before.values()), states

        def resumed(row: Job) -> bool:
            return row.status == "completed" or (row.status == "processing" and row.lease_owner not in owners)

        wait_for(lambda: all(resumed(job_row(db, j)) for j in ids), "all 16 resumed", survivor, 60)
        stall = time.monotonic() - killed_at
        print(f"longest stall after the kill: {stall:.1f} s")
        assert stall < RESUME_WITHIN_SECONDS, (stall, sweeps()[-8:])
        wait_for(
            lambda: all(job_row(db, j).status == "completed" for j in ids), "all completed", survivor, 180
        )
        time.sleep(2)
        for job_id in ids:
            row = job_row(db, job_id)
            assert row.status == "completed" and row.attempts == 2, (row.status, row.attempts)
            assert len(transcripts(db, job_id)) == 1
    finally:
        for proc in (beat, events, survivor, doomed):
            if proc is not None:
                proc.stop()
