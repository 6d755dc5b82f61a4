"""A batch's state, computed in SQL from its jobs, and the one UPDATE that finishes it.

Shared by the API (the batch view, cancel) and the workers (the batch-end webhook): no web
framework or queue imports here.

Counts are aggregates (``GROUP BY status``), never a load of every job, so a 10 000-recording batch
is as cheap to poll as a small one. A batch is finished by :func:`finish_batch`: one ``UPDATE ...
WHERE finished_at IS NULL AND NOT EXISTS (an open job of it) RETURNING``, run after the transaction
that made a job final has committed (never while the batch is still ``preparing``: its folder is
still being read). Whoever's UPDATE returns the row sends the batch's one final event; the others
get nothing back. Two workers ending the batch's last two jobs at once both run it after their
commits, so the later one sees both jobs final, and the row lock lets only one win.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import and_, case, exists, func, select, update
from sqlalchemy.orm import Session

from shared.db.models import FINAL_STATUSES, JOB_STATUSES, Batch, Job
from shared.platform.statuses import OPEN_STATUSES

BATCH_EVENTS = {"completed": "batch.completed", "cancelled": "batch.cancelled"}
_NO_SYNC = {"synchronize_session": False}


def iso(moment: datetime | None) -> str | None:
    """UTC ISO 8601 with a ``Z``, as the API's other timestamps."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def batch_links(batch_id: str | uuid.UUID) -> dict[str, str]:
    base = f"/v1/batches/{batch_id}"
    return {"self": base, "items": f"{base}/items", "results": f"{base}/results", "cancel": f"{base}/cancel"}


@dataclass
class Stats:
    """Per-status aggregates of one batch's jobs."""

    counts: dict[str, int]
    seconds: dict[str, float]  # sum of known durations per status
    unknown: dict[str, int]  # jobs per status whose duration is not known yet
    first_started: datetime | None


def _empty() -> Stats:
    return Stats(dict.fromkeys(JOB_STATUSES, 0), {}, {}, None)


def batch_stats(session: Session, batch_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Stats]:
    """The aggregates of several batches in one query (a page of the batch list, or one batch)."""
    ids = list(batch_ids)
    out = {i: _empty() for i in ids}
    if not ids:
        return out
    rows = session.execute(
        select(
            Job.batch_id,
            Job.status,
            func.count(),
            func.coalesce(func.sum(Job.duration), 0.0),
            func.count() - func.count(Job.duration),
            func.min(Job.started_at),
        )
        .where(Job.batch_id.in_(ids))
        .group_by(Job.batch_id, Job.status)
    )
    for batch_id, status, n, seconds, unknown, started in rows:
        st = out[batch_id]  # type: ignore[index]  # never NULL: filtered on the ids
        st.counts[status] = int(n)
        st.seconds[status] = float(seconds or 0.0)
        st.unknown[status] = int(unknown)
        if started is not None and (st.first_started is None or started < st.first_started):
            st.first_started = started
    return out


def view_status(batch: Batch, st: Stats) -> str:
    """preparing | queued | processing | completed | cancelled (cancelled as soon as a cancel was
    asked for; preparing while a large folder is still being read, its first jobs maybe running)."""
    if batch.finished_at is not None:
        return batch.status
    if batch.cancel_requested_at is not None:
        return "cancelled"
    if batch.status == "preparing":
        return "preparing"
    if not any(st.counts.get(s, 0) for s in OPEN_STATUSES):
        return "completed"
    started = st.counts.get("processing", 0) or any(st.counts.get(s, 0) for s in FINAL_STATUSES)
    return "processing" if started else "queued"


def batch_view(batch: Batch, st: Stats, now: datetime | None = None) -> dict[str, Any]:
    """The batch as the API shows it (and as the batch webhook's ``data``): JSON-ready."""
    jobs = sum(st.counts.values())
    open_jobs = sum(st.counts.get(s, 0) for s in OPEN_STATUSES)
    done = st.seconds.get("completed", 0.0)
    unknown_left = sum(st.unknown.get(s, 0) for s in OPEN_STATUSES)
    left = None if unknown_left else sum(st.seconds.get(s, 0.0) for s in OPEN_STATUSES)
    eta = None
    if st.first_started is not None and done > 0 and left is not None:
        elapsed = ((now or datetime.now(timezone.utc)) - st.first_started).total_seconds()
        if elapsed > 0:
            eta = left / (done / elapsed)
    return {
        "id": str(batch.id),
        "name": batch.name,
        "source": batch.source,
        "status": view_status(batch, st),
        "created_at": iso(batch.created_at),
        "finished_at": iso(batch.finished_at),
        "items": batch.items,
        "jobs": jobs,
        "counts": st.counts,
        "audio_seconds_done": done,
        "audio_seconds_left": left,
        "progress": (jobs - open_jobs) / jobs if jobs else (0.0 if batch.status == "preparing" else 1.0),
        "eta_seconds": eta,
        "skipped": batch.skipped or [],
        "webhook_url": batch.webhook_url,
        "links": batch_links(batch.id),
    }


def load_view(session: Session, batch: Batch) -> dict[str, Any]:
    return batch_view(batch, batch_stats(session, [batch.id])[batch.id])


@dataclass(frozen=True)
class Finished:
    """A batch that this call finished: send ``event`` to ``webhook_url`` (when set)."""

    id: str
    status: str
    webhook_url: str | None

    @property
    def event(self) -> str:
        return BATCH_EVENTS[self.status]


def _finish(session: Session, where: Any) -> list[Finished]:
    open_job = exists().where(and_(Job.batch_id == Batch.id, Job.status.in_(OPEN_STATUSES)))
    stmt = (
        update(Batch)
        .where(Batch.finished_at.is_(None), Batch.status != "preparing", ~open_job, where)
        .values(
            finished_at=func.now(),
            status=case((Batch.cancel_requested_at.is_not(None), "cancelled"), else_="completed"),
        )
        .returning(Batch.id, Batch.status, Batch.webhook_url)
    )
    return [
        Finished(str(r.id), r.status, r.webhook_url)
        for r in session.execute(stmt, execution_options=_NO_SYNC)
    ]


def finish_batch(session: Session, batch_id: str | uuid.UUID) -> Finished | None:
    """Mark the batch finished if no job of it is open and nobody did yet; commit it before sending
    the event. Call it after the transaction that made one of its jobs final has committed."""
    rows = _finish(session, Batch.id == uuid.UUID(str(batch_id)))
    return rows[0] if rows else None


def finish_batches(session: Session, batch_ids: Iterable[str | uuid.UUID]) -> list[Finished]:
    """:func:`finish_batch` for several batches in one UPDATE (a round of a worker ended jobs of
    them); the ones this call finished."""
    ids = [uuid.UUID(str(b)) for b in batch_ids]
    return _finish(session, Batch.id.in_(ids)) if ids else []


def finish_done_batches(session: Session) -> list[Finished]:
    """The beat's sweep: finish every batch whose jobs are all final but that nobody finished (its
    last job's worker died between its commit and the check, or its last job was deleted). Only
    unfinished batches are looked at, each with an index lookup of its jobs."""
    return _finish(session, Batch.finished_at.is_(None))
