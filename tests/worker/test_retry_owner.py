"""A PostgreSQL outage under a running batch (issue 16, item 3): the transient-retry chain of
``tone.transcribe`` keeps the lease owner that holds the jobs, so the batch resumes under that owner
as soon as the database is back, however many retries failed before their claim meanwhile.

Real processes: a PostgreSQL of this module's own is stopped under a worker running a batch of
three jobs (one task message; its two batch-mates have none, so only the retry's ``claim_resumed``
brings them back) and started again after the first retry failed before its claim as well. Before
the fix each retry ran as a new owner holding nothing, so the jobs waited for their lease to expire
(276 s in the fault run) or, since item 2, for another owner to declare their holder dead and take
them over. No beat runs here: nothing but the retry chain can resume them."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Proc, start_worker, wait_for
from tests.worker.test_worker import job_row, log_lines, new_job, send, transcripts, write_long

pytestmark = pytest.mark.platform

QUEUE = "retry-owner-tests"
JOBS = 3
RESUME_WITHIN_SECONDS = 20.0  # the retry backoff after two failures; the lease here is 300 s


@pytest.fixture(scope="module")
def own_postgres(servers: dict[str, str]) -> Iterator[tuple[Path, str, int]]:
    """``(data dir, URL, port)`` of a PostgreSQL started for this module, schema at head; this
    process sends its tasks through the session's Redis."""
    from shared.db.migrate import alembic_upgrade
    from shared.localstack import servers as stack
    from worker.celery_app import app

    root = Path(tempfile.mkdtemp(prefix="tone-pg-retry-"))
    root.chmod(0o755)
    old_broker = app.conf.broker_url
    try:
        pg = stack.start_postgres(root / "postgres")
        alembic_upgrade(pg.url)
        app.close()
        app.conf.broker_url = servers["REDIS_URL"]
        yield root / "postgres", pg.url, pg.port
    finally:
        app.close()
        app.conf.broker_url = old_broker
        stack.stop(root / "postgres")
        shutil.rmtree(root, ignore_errors=True)


def test_retries_during_a_postgres_outage_keep_the_owner_and_the_batch_resumes_when_it_is_back(
    own_postgres: tuple[Path, str, int], platform_env: dict[str, str], logs: Path, tmp_path: Path
) -> None:
    from shared.localstack import servers as stack

    data_dir, db, port = own_postgres
    env = {**platform_env, "DATABASE_URL": db, "TONE_JOB_LEASE_SECONDS": "300", "TONE_WORKER_BATCH": "4"}
    audio = write_long(tmp_path / "long.wav", 120)
    worker: Proc = start_worker(env, logs, name="retry-owner", queues=QUEUE)
    try:
        ids = [new_job(db, audio, queue=QUEUE) for _ in range(JOBS)]
        send(ids[0], QUEUE)  # the others join its batch: they have no message of their own

        def all_running() -> bool:
            rows = [job_row(db, j) for j in ids]
            return all(r.status == "processing" and r.progress > 0 for r in rows)

        wait_for(all_running, "three jobs in one running batch", worker, 90)
        owners = {job_row(db, j).lease_owner for j in ids}
        assert len(owners) == 1, owners
        (owner,) = owners

        def failures() -> int:
            return len(log_lines(worker, "transient failure"))

        stack.stop(data_dir)
        # the run fails at its next write, then its first retry fails before its claim
        wait_for(lambda: failures() >= 2, "the run and its first retry failed", worker, 60)
        stack.start_postgres(data_dir, port=port)
        back = time.monotonic()

        def resumed() -> bool:
            rows = [job_row(db, j) for j in ids]
            return all(r.attempts >= 2 and r.status in ("processing", "completed") for r in rows)

        wait_for(resumed, "the batch resumed", worker, 60)
        took = time.monotonic() - back
        rows = [job_row(db, j) for j in ids]
        # resumed by the retry chain, as the owner that held them: no takeover, no new owner
        assert [r.lease_owner for r in rows] == [owner] * JOBS, (owner, [r.lease_owner for r in rows])
        # one claim each for the resume (the task's own job was claimed twice, 3 attempts, before)
        assert [r.attempts for r in rows] == [2] * JOBS
        assert not log_lines(worker, "is dead"), log_lines(worker, "is dead")
        assert took < RESUME_WITHIN_SECONDS, took
        print(f"retries failed meanwhile: {failures() - 1}; resumed {took:.1f} s after PostgreSQL was back")
        wait_for(lambda: all(job_row(db, j).status == "completed" for j in ids), "all completed", worker, 180)
        for job_id in ids:
            row = job_row(db, job_id)
            assert (row.status, row.attempts, row.lease_owner) == ("completed", 2, owner)
            assert len(transcripts(db, job_id)) == 1
    finally:
        worker.stop()
