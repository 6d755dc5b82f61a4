"""The worker's writes to the jobs table: claims, leases, progress and final states.

The job row, not the Celery message, decides who may work on a job. A worker claims a job
atomically (``queued``, or ``processing`` whose lease expired) and writes its own name into
``lease_owner``; every later write is ``WHERE id = :id AND lease_owner = :me AND status =
'processing'``, so a worker whose lease was taken over (it stalled, or was presumed dead) can no
longer change the job, and a job gets at most one transcript. Times come from the database's clock.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Float, Text, Uuid, and_, column, func, or_, select, update, values
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.asr.engine import Transcript as EngineTranscript
from shared.db.models import FINAL_STATUSES, Job, Transcript
from shared.db.session import session_scope
from shared.platform import logs, metrics
from shared.platform.batch_state import Finished, finish_batches
from shared.platform.search import Stored, after_transcripts_stored

_NO_SYNC = {"synchronize_session": False}  # no ORM objects to refresh: plain UPDATE ... RETURNING
MAX_ATTEMPTS = 3  # claims of one job; a job whose lease expired this often fails "worker_lost"


def new_owner() -> str:
    """A lease owner name unique to this task run: host, process and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Claimed:
    """What the worker needs of a job it claimed."""

    id: str
    queue: str
    source: str
    audio_path: str | None
    audio_url: str | None
    options: dict[str, Any]
    attempts: int
    cancel_requested: bool
    webhook_url: str | None
    batch_id: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> Claimed:
        return cls(
            id=str(row.id),
            queue=row.queue,
            source=row.source,
            audio_path=row.audio_path,
            audio_url=row.audio_url,
            options=dict(row.options or {}),
            attempts=row.attempts,
            cancel_requested=row.cancel_requested,
            webhook_url=row.webhook_url,
            batch_id=str(row.batch_id) if row.batch_id else None,
        )


_RETURNING = (
    Job.id,
    Job.queue,
    Job.source,
    Job.audio_path,
    Job.audio_url,
    Job.options,
    Job.attempts,
    Job.cancel_requested,
    Job.webhook_url,
    Job.batch_id,
    Job.created_at,
    Job.started_at,
)
# what an ended job's UPDATE returns for the metrics
_ENDED = (Job.id, Job.created_at, Job.finished_at, Job.duration, Job.processing_seconds)


@dataclass(frozen=True)
class Completion:
    """A job's transcript to store (:meth:`JobStore.complete_many`)."""

    job_id: str
    transcript: EngineTranscript
    phrases: list[dict[str, Any]] | None = None
    audio_path: str | None = None


def _lease_expired() -> Any:
    return and_(Job.status == "processing", Job.lease_expires_at < func.now())


class JobStore:
    """The jobs one task run holds, written only while it still owns their lease."""

    def __init__(
        self, database_url: str, owner: str, lease_seconds: float, redis_url: str | None = None
    ) -> None:
        self.url = database_url
        self.owner = owner
        self.lease = timedelta(seconds=lease_seconds)
        self.metrics = metrics.client_for(redis_url) if redis_url else None  # where the counters go
        # rules each completed job matched (complete_many fills it, the caller pops it for job.flagged)
        self.flagged: dict[str, list[str]] = {}

    def _started(self, claimed: Sequence[Any]) -> list[Claimed]:
        """The claimed rows as :class:`Claimed`; a job's first start adds its queue wait."""
        recorder = metrics.Recorder(self.metrics)
        for row in claimed:
            if row.attempts == 1 and row.started_at is not None and row.created_at is not None:
                recorder.observe("tone_queue_wait_seconds", (row.started_at - row.created_at).total_seconds())
        recorder.flush()
        out = [Claimed.from_row(r) for r in claimed]
        for job in out:
            logs.remember_job(job.id, job.options.get("request_id"))
        return out

    def _ended(self, row: Any, status: str) -> None:
        self._ended_many([row], status)

    def _ended_many(self, rows: Sequence[Any], status: str) -> None:
        """The finished jobs' metrics, in one write to Redis."""
        if not rows:
            return
        recorder = metrics.Recorder(self.metrics)
        for row in rows:
            latency = (
                (row.finished_at - row.created_at).total_seconds()
                if row.created_at and row.finished_at
                else None
            )
            metrics.record_job_finished(
                recorder,
                status,
                latency,
                getattr(row, "duration", None),
                getattr(row, "processing_seconds", None),
            )
        recorder.flush()

    def _claim_values(self) -> dict[str, Any]:
        return {
            "status": "processing",
            "lease_owner": self.owner,
            "lease_expires_at": func.now() + self.lease,
            "started_at": func.coalesce(Job.started_at, func.now()),
            "attempts": Job.attempts + 1,
        }

    # -- claims -----------------------------------------------------------------------------------

    def claim(self, job_id: str, resume_owner: str | None = None) -> Claimed | None:
        """Take the job if it is queued, its lease expired (fewer than MAX_ATTEMPTS claims), or it
        is held by ``resume_owner`` (this task's own earlier run, retried). None: leave it alone."""
        free = or_(Job.status == "queued", and_(_lease_expired(), Job.attempts < MAX_ATTEMPTS))
        if resume_owner:
            free = or_(free, and_(Job.status == "processing", Job.lease_owner == resume_owner))
        stmt = update(Job).where(Job.id == job_id, free).values(self._claim_values()).returning(*_RETURNING)
        with session_scope(self.url) as session:
            row = session.execute(stmt, execution_options=_NO_SYNC).first()
        return self._started([row])[0] if row else None

    def claim_waiting(self, queue: str, limit: int) -> list[Claimed]:
        """Take up to ``limit`` more queued jobs of ``queue`` to batch with, skipping rows other
        workers are claiming and URL jobs not yet downloaded.

        Order: highest priority first (interactive jobs before batch jobs, priority 2); among equal
        priority, tenants share the workers: a job's turn is its place in its tenant's waiting line
        (``ROW_NUMBER() OVER (PARTITION BY tenant, priority ORDER BY created_at)``) plus the jobs
        its tenant already has processing in this queue, and the lowest turn goes first, then the
        oldest. A tenant's 10 000-recording batch therefore does not starve a batch another tenant
        submits after it: the second tenant's jobs take every other free slot.
        Postgres refuses ``FOR UPDATE`` beside window functions, so the ranking is a derived table
        and the outer query locks only the jobs rows (``FOR UPDATE OF jobs SKIP LOCKED``).
        """
        if limit <= 0:
            return []
        running = (
            select(Job.tenant_id.label("tenant_id"), func.count().label("n"))
            .where(Job.status == "processing", Job.queue == queue)
            .group_by(Job.tenant_id)
            .subquery("running")
        )
        place = func.row_number().over(
            partition_by=(Job.tenant_id, Job.priority), order_by=(Job.created_at, Job.id)
        )
        ranked = (
            select(Job.id.label("id"), (place + func.coalesce(running.c.n, 0)).label("turn"))
            .select_from(Job)
            .outerjoin(running, running.c.tenant_id == Job.tenant_id)
            .where(
                Job.status == "queued",
                Job.queue == queue,
                Job.cancel_requested.is_(False),
                or_(Job.source != "url", Job.audio_path.is_not(None)),
            )
            .subquery("ranked")
        )
        # a CTE, evaluated once: as an IN (subquery) the planner may rescan it per row, and a
        # rescan skips the rows this statement already updated and locks the next ones
        waiting = (
            select(Job.id.label("id"))
            .join(ranked, ranked.c.id == Job.id)
            .where(Job.status == "queued")
            .order_by(Job.priority.desc(), ranked.c.turn, Job.created_at, Job.id)
            .limit(limit)
            .with_for_update(of=Job, skip_locked=True)
            .cte("waiting")
        )
        stmt = (
            update(Job)
            .where(Job.id == waiting.c.id, Job.status == "queued")
            .values(self._claim_values())
            .returning(*_RETURNING)
        )
        with session_scope(self.url) as session:
            rows = session.execute(stmt, execution_options=_NO_SYNC).all()
        return self._started(rows)

    def claim_orphans(self, queue: str, limit: int) -> list[Claimed]:
        """Take up to ``limit`` jobs of ``queue`` whose holder died (lease expired, expired early
        by the dead-holder rule) into a running batch, so that they resume at once on a busy
        worker instead of waiting for a free one; jobs on their last claim are left to run alone."""
        if limit <= 0:
            return []
        orphans = (  # a CTE, evaluated once (an IN subquery may be rescanned and take more)
            select(Job.id.label("id"))
            .where(Job.queue == queue, _lease_expired(), Job.attempts < MAX_ATTEMPTS - 1)
            .order_by(Job.priority.desc(), Job.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte("orphans")
        )
        stmt = (
            update(Job)
            .where(Job.id == orphans.c.id, _lease_expired())
            .values(self._claim_values())
            .returning(*_RETURNING)
        )
        with session_scope(self.url) as session:
            return [Claimed.from_row(r) for r in session.execute(stmt, execution_options=_NO_SYNC).all()]

    def claim_resumed(self, resume_owner: str, skip: str | None = None) -> list[Claimed]:
        """Jobs an earlier run of this task held when it hit a transient error: take them back,
        except ``skip`` (the task's own job, which its claim took back already: claiming it twice
        would count two attempts)."""
        held = [Job.status == "processing", Job.lease_owner == resume_owner]
        if skip is not None:
            held.append(Job.id != skip)
        stmt = update(Job).where(*held).values(self._claim_values()).returning(*_RETURNING)
        with session_scope(self.url) as session:
            rows = session.execute(stmt, execution_options=_NO_SYNC).all()
        return self._started(rows)

    def is_over(self, job_id: str) -> bool:
        """Whether the job is final (it never changes again) or gone: its message has nothing to
        do. A batch's jobs are mostly run by another job's task run, so each of their own messages
        comes later and lands here; one indexed read, instead of a claim and a holder check."""
        with session_scope(self.url) as session:
            status = session.scalar(select(Job.status).where(Job.id == job_id))
        return status is None or status in FINAL_STATUSES

    def holder_of(self, job_id: str) -> tuple[str, float] | None:
        """``(lease owner, seconds since it last renewed the lease)`` of a processing job, else None."""
        since = func.extract("epoch", func.now() + self.lease - Job.lease_expires_at)
        stmt = select(Job.lease_owner, since).where(
            Job.id == job_id, Job.status == "processing", Job.lease_owner.is_not(None)
        )
        with session_scope(self.url) as session:
            row = session.execute(stmt).first()
        return (str(row[0]), float(row[1])) if row else None

    def adopt(self, dead_owner: str, limit: int) -> list[Claimed]:
        """Take up to ``limit`` jobs a dead holder left with their lease expired, except those that
        would be on their last claim (they run alone, through their own messages)."""
        if limit <= 0:
            return []
        left = (  # a CTE, evaluated once (see claim_waiting: an IN subquery may take more than limit)
            select(Job.id.label("id"))
            .where(
                Job.status == "processing",
                Job.lease_owner == dead_owner,
                Job.lease_expires_at <= func.now(),
                Job.attempts < MAX_ATTEMPTS - 1,
            )
            .order_by(Job.priority.desc(), Job.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte("left_behind")
        )
        stmt = (
            update(Job)
            .where(Job.id == left.c.id, Job.lease_owner == dead_owner)
            .values(self._claim_values())
            .returning(*_RETURNING)
        )
        with session_scope(self.url) as session:
            return [Claimed.from_row(r) for r in session.execute(stmt, execution_options=_NO_SYNC).all()]

    # -- while processing -------------------------------------------------------------------------

    def _mine(self, job_id: Any) -> Any:
        """The job (an id, or a column of ids) while this run still holds it."""
        return and_(Job.id == job_id, Job.lease_owner == self.owner, Job.status == "processing")

    def renew(self, job_id: str, **fields: Any) -> bool:
        """Set fields of a job this run still owns (and renew its lease); False if it lost it."""
        return job_id in self.renew_many({job_id: fields})

    def renew_many(self, by_job: dict[str, dict[str, Any]]) -> set[str]:
        """:meth:`renew` for many jobs (each with its own fields), in one transaction; the jobs
        still ours."""
        ours: set[str] = set()
        with session_scope(self.url) as session:
            for job_id, fields in by_job.items():
                stmt = (
                    update(Job)
                    .where(self._mine(job_id))
                    .values(lease_expires_at=func.now() + self.lease, **fields)
                    .returning(Job.id)
                )
                if session.execute(stmt, execution_options=_NO_SYNC).first() is not None:
                    ours.add(job_id)
        return ours

    def heartbeat(self, progress: dict[str, float]) -> tuple[set[str], set[str]]:
        """Write each job's progress and renew its lease, in one UPDATE for all of them (one per job
        before: a batch of 16 recordings wrote 16 statements a second).

        Returns (jobs still ours, jobs of those whose cancel was requested); a job missing from
        the first set was re-claimed by another worker or deleted: drop it silently.
        """
        if not progress:
            return set(), set()
        rows = values(column("id", Uuid()), column("progress", Float()), name="beat").data(
            [(uuid.UUID(job_id), value) for job_id, value in progress.items()]
        )
        stmt = (
            update(Job)
            .where(self._mine(rows.c.id))
            .values(progress=rows.c.progress, lease_expires_at=func.now() + self.lease)
            .returning(Job.id, Job.cancel_requested)
        )
        with session_scope(self.url) as session:
            ours = session.execute(stmt, execution_options=_NO_SYNC).all()
        return {str(r.id) for r in ours}, {str(r.id) for r in ours if r.cancel_requested}

    # -- final states -----------------------------------------------------------------------------

    def complete_many(self, done: Sequence[Completion]) -> dict[str, bool]:
        """Store each transcript and mark its job completed, if still ours, all in ONE transaction
        (a round of a batch ends many recordings at once: one commit, one WAL flush, instead of one
        per job), in the same few statements however many they are (one UPDATE of the jobs, one
        INSERT of the transcripts, one of their phrases' index rows, one UPDATE of their analytics;
        only a tenant's rules are checked job by job). Returns, per job, whether it was stored
        (False: the lease was lost).

        A completion's ``phrases`` are the phrases to store (with their written form, perhaps
        redacted) in place of the engine's; ``audio_path`` a new stored recording (the redacted one).
        The same transaction indexes their phrases, stores their analytics and flags the rules they
        match (``shared.platform.search.after_transcripts_stored``; the ids land in ``self.flagged``)."""
        results = {c.job_id: self._result(c) for c in done}
        flagged: dict[str, list[str]] = {}
        with session_scope(self.url) as session:
            ended = self._mark_completed(session, done)
            ours = [c for c in done if c.job_id in ended]
            if ours:
                inserted = self._insert_transcripts(session, ours, results)
                tenants = {c.job_id: ended[c.job_id].tenant_id for c in ours}
                fired = after_transcripts_stored(
                    session,
                    [
                        Stored(
                            uuid.UUID(c.job_id),
                            tenants[c.job_id],
                            results[c.job_id]["phrases"],
                            c.transcript.duration,
                            c.transcript.channels,
                        )
                        for c in ours
                        if c.job_id in inserted
                    ],
                )
                flagged = {str(k): v for k, v in fired.items()}
        self.flagged.update(flagged)  # only once committed
        self._ended_many(list(ended.values()), "completed")
        return {c.job_id: c.job_id in ended for c in done}

    @staticmethod
    def _result(c: Completion) -> dict[str, Any]:
        """The transcript as stored: the completion's phrases (their written form) when given."""
        result = c.transcript.to_dict()
        if c.phrases is not None:
            result["phrases"] = c.phrases
            result["full_text"] = " ".join(p["text"] for p in c.phrases)
        return result

    def _mark_completed(self, session: Session, done: Sequence[Completion]) -> dict[str, Any]:
        """Every job of ``done`` still ours marked completed, in one UPDATE; their ended rows by id."""
        if not done:
            return {}
        rows = values(
            column("id", Uuid()),
            column("duration", Float()),
            column("processing_seconds", Float()),
            column("audio_path", Text()),
            name="done",
        ).data(
            [
                (uuid.UUID(c.job_id), c.transcript.duration, c.transcript.processing_time, c.audio_path)
                for c in done
            ]
        )
        stmt = (
            update(Job)
            .where(self._mine(rows.c.id))
            .values(
                status="completed",
                progress=1.0,
                duration=rows.c.duration,
                processing_seconds=rows.c.processing_seconds,
                finished_at=func.now(),
                lease_expires_at=None,
                error_code=None,
                error_message=None,
                audio_path=func.coalesce(rows.c.audio_path, Job.audio_path),
            )
            .returning(*_ENDED, Job.tenant_id)
        )
        return {str(r.id): r for r in session.execute(stmt, execution_options=_NO_SYNC)}

    @staticmethod
    def _insert_transcripts(
        session: Session, ours: Sequence[Completion], results: dict[str, dict[str, Any]]
    ) -> set[str]:
        """Their transcripts, in one INSERT; the jobs that had none yet (a job never gets two)."""
        stmt = (
            insert(Transcript)
            .values(
                [
                    {
                        "job_id": uuid.UUID(c.job_id),
                        "phrases": results[c.job_id]["phrases"],
                        "full_text": results[c.job_id]["full_text"],
                        "duration": c.transcript.duration,
                        "channels": c.transcript.channels,
                    }
                    for c in ours
                ]
            )
            .on_conflict_do_nothing(index_elements=[Transcript.job_id])
            .returning(Transcript.job_id)
        )
        return {str(job_id) for job_id in session.scalars(stmt)}

    def finish_batches(self, batch_ids: Iterable[str]) -> list[Finished]:
        """After jobs of these batches became final (and that was committed): finish each batch whose
        last open job that was, in one statement. Returns them only to the one caller that finished
        them."""
        ids = sorted({b for b in batch_ids if b})
        if not ids:
            return []
        with session_scope(self.url) as session:
            return finish_batches(session, ids)

    def fail(self, job_id: str, code: str, message: str) -> bool:
        return self._end(job_id, "failed", code, message[:2000])

    def cancel(self, job_id: str) -> bool:
        return self._end(job_id, "cancelled", None, None)

    def _end(self, job_id: str, status: str, code: str | None, message: str | None) -> bool:
        stmt = (
            update(Job)
            .where(self._mine(job_id))
            .values(
                status=status,
                error_code=code,
                error_message=message,
                finished_at=func.now(),
                lease_expires_at=None,
            )
            .returning(*_ENDED)
        )
        with session_scope(self.url) as session:
            ended = session.execute(stmt, execution_options=_NO_SYNC).first()
        if ended is not None:
            self._ended(ended, status)
        return ended is not None


# -- the beat's sweep -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stuck:
    id: str
    queue: str
    priority: int
    status: str
    webhook_url: str | None
    batch_id: str | None = None


def fail_lost(session: Session) -> list[Stuck]:
    """Jobs whose lease expired after MAX_ATTEMPTS claims: failed ``worker_lost`` (workers kept dying
    on them, e.g. a file that crashes the process)."""
    stmt = (
        update(Job)
        .where(_lease_expired(), Job.attempts >= MAX_ATTEMPTS)
        .values(
            status="failed",
            error_code="worker_lost",
            finished_at=func.now(),
            lease_expires_at=None,
            error_message=f"the worker processing this job stopped {MAX_ATTEMPTS} times; giving up",
        )
        .returning(Job.id, Job.queue, Job.priority, Job.status, Job.webhook_url, Job.batch_id)
    )
    return [
        Stuck(
            str(r.id), r.queue, r.priority, r.status, r.webhook_url, str(r.batch_id) if r.batch_id else None
        )
        for r in session.execute(stmt, execution_options=_NO_SYNC)
    ]


def stale_holders(session: Session, lease_seconds: float, stale_seconds: float) -> list[str]:
    """Lease owners of processing jobs none of which was renewed for ``stale_seconds``."""
    renewed = func.max(Job.lease_expires_at)
    stmt = (
        select(Job.lease_owner)
        .where(Job.status == "processing", Job.lease_owner.is_not(None), Job.lease_expires_at > func.now())
        .group_by(Job.lease_owner)
        .having(renewed < func.now() + timedelta(seconds=lease_seconds - stale_seconds))
    )
    return [str(owner) for owner in session.scalars(stmt)]


def expire_dead_holder(
    session: Session, owner: str, lease_seconds: float, stale_seconds: float
) -> list[Stuck]:
    """Expire now the leases of ``owner`` (whose holder key is gone) that it did not renew for
    ``stale_seconds``; the jobs whose lease was expired. Rows it renewed since are left alone."""
    stmt = (
        update(Job)
        .where(
            Job.status == "processing",
            Job.lease_owner == owner,
            Job.lease_expires_at > func.now(),
            Job.lease_expires_at < func.now() + timedelta(seconds=lease_seconds - stale_seconds),
        )
        .values(lease_expires_at=func.now())
        .returning(Job.id, Job.queue, Job.priority, Job.status, Job.webhook_url, Job.batch_id)
    )
    return [
        Stuck(
            str(r.id), r.queue, r.priority, r.status, r.webhook_url, str(r.batch_id) if r.batch_id else None
        )
        for r in session.execute(stmt, execution_options=_NO_SYNC)
    ]


def find_stuck(session: Session, grace_seconds: float) -> list[Stuck]:
    """Queued jobs last sent more than ``grace_seconds`` ago, and processing jobs whose lease expired
    (and were not re-sent in the last ``grace_seconds``), oldest first, rows locked."""
    cutoff = func.now() - timedelta(seconds=grace_seconds)
    sent_before = func.coalesce(Job.enqueued_at, Job.created_at) < cutoff
    stmt = (
        select(Job.id, Job.queue, Job.priority, Job.status, Job.webhook_url)
        .where(sent_before, or_(Job.status == "queued", _lease_expired()))
        .order_by(Job.created_at)
        .with_for_update(skip_locked=True)
    )
    return [Stuck(str(r.id), r.queue, r.priority, r.status, r.webhook_url) for r in session.execute(stmt)]


def mark_sent(session: Session, job_ids: Iterable[str]) -> None:
    ids = [uuid.UUID(j) for j in job_ids]
    if ids:
        stmt = update(Job).where(Job.id.in_(ids)).values(enqueued_at=func.now())
        session.execute(stmt, execution_options=_NO_SYNC)
