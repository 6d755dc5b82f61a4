"""The Celery tasks: ``tone.transcribe`` (claim, batch, transcribe, store) and ``tone.requeue_stuck``.

Both are thin and idempotent; the job row decides everything. A duplicate or stale
``tone.transcribe`` message finds its job taken or final and returns. Transient failures (the
database or the broker unreachable) are retried with exponential backoff, up to 5 times, and the
retry takes back the jobs its failed run held.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from typing import Any

from celery import Task
from celery.signals import after_setup_logger, task_prerun, worker_process_init
from sqlalchemy import text

from shared.db.session import engine_for, session_scope, sessionmaker_for
from shared.platform import gctune, logs, metrics
from shared.platform.batch_state import finish_done_batches
from shared.platform.settings import Settings, get_settings
from shared.queue import REQUEUE_TASK, TRANSCRIBE_TASK, enqueue_transcription, enqueue_webhook
from worker.celery_app import app
from worker.jobs import (
    HEARTBEAT_SECONDS,
    TRANSIENT_ERRORS,
    BatchRun,
    current_job,
    get_recognizer,
    log,
    notify_batch_end,
)
from worker.liveness import ALIVE_TTL_SECONDS, STALE_SECONDS, Liveness, is_alive
from worker.store import (
    MAX_ATTEMPTS,
    JobStore,
    Stuck,
    expire_dead_holder,
    fail_lost,
    find_stuck,
    mark_sent,
    new_owner,
    stale_holders,
)

MAX_RETRIES = 5


@after_setup_logger.connect
def _setup_logs(**_: Any) -> None:
    """Celery set its handlers up: give them the request id, and TONE_LOG_FORMAT=json's formatter."""
    logs.configure(get_settings().log_format)


@task_prerun.connect
def _task_request_id(task: Any = None, **_: Any) -> None:
    """The request id the sender put in the message's headers (None when it had none)."""
    rid = task.request.get("request_id") if task is not None else None
    logs.request_id.set(rid if isinstance(rid, str) else None)


@worker_process_init.connect
def _process_init(**_: Any) -> None:
    """A fresh pool process: no database connections inherited from the parent; the model starts
    loading in the background so that the first job does not wait for all of it."""
    sessionmaker_for.cache_clear()
    engine_for.cache_clear()

    def warm() -> None:
        settings = get_settings()
        try:
            get_recognizer(settings)
        except Exception as exc:  # reported again, as the job's error, by the first task
            log.error("the model could not be loaded: %s", exc, job="-")
            gctune.freeze()  # the imports at least
            return
        # the first job's other first-time cost, paid before it comes (the model's warm-up step
        # is get_recognizer's): a pooled database connection with the driver's imports (measured:
        # the first claim took 0.2 s, later ones 0.05)
        try:
            with session_scope(settings.database_url) as db:
                db.execute(text("SELECT 1"))
        except Exception as exc:  # the first job meets it again, and retries
            log.warning("the database could not be reached while warming up: %s", exc, job="-")
        gctune.freeze()  # the model, its sessions and the imports: left out of later collections

    gctune.tune()
    threading.Thread(target=warm, name="model-load", daemon=True).start()


def _backoff(retries: int) -> float:
    return float(min(60, 2**retries)) + random.uniform(0, 1)


@app.task(name=TRANSCRIBE_TASK, bind=True, max_retries=MAX_RETRIES)
def transcribe(self: Task, job_id: str, resume_owner: str | None = None) -> None:  # type: ignore[type-arg,unused-ignore]
    """Transcribe a job, with other waiting jobs of its queue batched in."""
    try:
        uuid.UUID(job_id)
    except (ValueError, TypeError):
        log.error("not a job id: %r", job_id, job="-")
        return
    token = current_job.set(job_id)
    # a retry runs as the owner that holds the jobs: a retry that fails before its claim (the
    # database still down) passes on the same owner, not a new one holding nothing
    owner = resume_owner or new_owner()
    try:
        run_job(job_id, owner, resume_owner)
    except TRANSIENT_ERRORS as exc:
        delay = _backoff(self.request.retries)
        log.warning("transient failure (%s), retrying in %.0f s", exc.__class__.__name__, delay)
        raise self.retry(exc=exc, countdown=delay, kwargs={"resume_owner": owner}) from exc
    finally:
        current_job.reset(token)


def run_job(job_id: str, owner: str, resume_owner: str | None = None) -> None:
    settings = get_settings()
    store = JobStore(settings.database_url, owner, settings.job_lease_seconds, settings.redis_url)
    if resume_owner is None and store.is_over(job_id):  # a retry may still hold other jobs: not here
        log.info("nothing to do: the job is final or gone")
        return
    with Liveness(settings.redis_url, owner):
        previous = store.holder_of(job_id)
        first = store.claim(job_id, resume_owner)
        dead = first is None and previous is not None and previous[0] != owner
        if dead and previous is not None and _holder_died(store, job_id, previous, settings):
            first = store.claim(job_id)
        claimed = [first] if first else []
        if resume_owner:
            claimed += store.claim_resumed(resume_owner, skip=job_id)
        if not claimed:
            log.info("nothing to do: the job is taken, final or gone")
            return
        # a job on its last claim after lost workers runs alone, so that a file that kills
        # workers takes no other job down with it; before that, a dead holder's other jobs
        # resume together here (its whole batch, not one job per lease expiry)
        last_chance = first is not None and first.attempts >= MAX_ATTEMPTS
        if last_chance:
            log.info("claimed for the last time after lost workers: running it alone")
        elif first is not None and first.attempts > 1 and previous is not None and previous[0] != owner:
            adopted = store.adopt(previous[0], settings.worker_batch - len(claimed))
            claimed += [c for c in adopted if c.id != job_id]
            log.info("took over %d jobs of a dead worker (%s)", len(claimed), previous[0])
        BatchRun(store, settings, batching=not last_chance).run(claimed)


def _holder_died(store: JobStore, job_id: str, previous: tuple[str, float], settings: Settings) -> bool:
    """Whether the job's holder is dead (its holder key gone and its rows not renewed for
    STALE_SECONDS); its leases are then expired. A holder renewing its rows is alive at once (a
    duplicate message); one that stopped renewing is watched until its key lapses."""
    owner, since = previous
    if since < 2 * HEARTBEAT_SECONDS + 0.5:
        return False
    deadline = time.monotonic() + ALIVE_TTL_SECONDS + STALE_SECONDS + 2
    while True:
        now = store.holder_of(job_id)
        if now is None:  # final, or queued again: the plain claim decides
            return True
        if now[0] != owner or now[1] < 2 * HEARTBEAT_SECONDS + 0.5:
            return False  # taken over by another, or its holder renews it: alive
        if now[1] >= STALE_SECONDS and not is_alive(settings.redis_url, owner):
            with session_scope(settings.database_url) as session:
                expired = expire_dead_holder(session, owner, settings.job_lease_seconds, STALE_SECONDS)
                mark_sent(session, (s.id for s in expired))
            log.warning("the worker holding this job is dead (%s): %d leases expired", owner, len(expired))
            for stuck in expired:  # each job gets a message: the ones not adopted here still run
                if stuck.id != job_id:
                    enqueue_transcription(stuck.id, queue=stuck.queue, priority=stuck.priority)
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(1.0)


@app.task(name=REQUEUE_TASK)
def requeue_stuck() -> dict[str, int]:
    """Beat: re-send jobs whose message was lost or whose worker's lease expired; fail jobs that
    lost their worker MAX_ATTEMPTS times (``worker_lost``); finish batches left with no open job."""
    settings = get_settings()
    # holders that died (key gone, rows not renewed): their leases expire now, not in minutes
    with session_scope(settings.database_url) as session:
        dead = [
            owner
            for owner in stale_holders(session, settings.job_lease_seconds, STALE_SECONDS)
            if not is_alive(settings.redis_url, owner)
        ]
        lease = settings.job_lease_seconds
        orphans = [s for owner in dead for s in expire_dead_holder(session, owner, lease, STALE_SECONDS)]
        mark_sent(session, (s.id for s in orphans))
    for job in orphans:
        log.warning("re-enqueued: its worker died", job=job.id)
        enqueue_transcription(job.id, queue=job.queue, priority=job.priority)
    with session_scope(settings.database_url) as session:
        lost = fail_lost(session)
        stuck = find_stuck(session, settings.queued_grace_seconds)
        resend = _to_resend(stuck)
        mark_sent(session, (s.id for s in resend))
    for job in lost:
        log.warning("failed: worker_lost", job=job.id)
        metrics.job_finished(metrics.client_for(settings.redis_url), "failed", None)
        if job.webhook_url:
            enqueue_webhook(job.id, "job.failed")
    for job in resend:
        why = "its lease expired" if job.status == "processing" else "no worker took it"
        log.info("re-enqueued: %s", why, job=job.id)
        enqueue_transcription(job.id, queue=job.queue, priority=job.priority)
    # after the commit above: batches whose last job just failed worker_lost, or whose finisher
    # died between its job's commit and the batch check, end here (once: see finish_batch)
    with session_scope(settings.database_url) as session:
        finished = finish_done_batches(session)
    for batch in finished:
        notify_batch_end(batch)
    return {"resent": len(resend), "worker_lost": len(lost), "batches_finished": len(finished)}


def _to_resend(stuck: list[Stuck]) -> list[Stuck]:
    """Expired leases always; old queued jobs of a queue only when the broker holds fewer waiting
    messages for it than there are such jobs (their messages were lost, e.g. Redis restarted
    without persistence), so a long backlog is not flooded with duplicates."""
    resend = [s for s in stuck if s.status == "processing"]
    queued: dict[str, list[Stuck]] = {}
    for s in stuck:
        if s.status == "queued":
            queued.setdefault(s.queue, []).append(s)
    for queue, jobs in queued.items():
        waiting = _broker_waiting(queue)
        if waiting is None or waiting < len(jobs):
            resend += jobs
    return resend


def _broker_waiting(queue: str) -> int | None:
    """Messages waiting in a Redis queue (all priority levels), or None when it can't be read."""
    import redis

    try:
        client = redis.Redis.from_url(get_settings().redis_url, socket_timeout=5)
        try:
            keys = [queue] + [f"{queue}:{p}" for p in range(1, 10)]
            return sum(int(client.llen(k)) for k in keys)
        finally:
            client.close()
    except Exception:
        return None
