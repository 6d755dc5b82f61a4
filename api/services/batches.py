"""Batches: many recordings in one request, from an archive (ZIP or tar), a JSON manifest of URLs,
or a folder under the server's ``TONE_BATCH_ROOT``; one ``batches`` row and one job per recording.

Each job points at its batch (``jobs.batch_id``) and carries ``options["batch_name"]`` (its path in
the archive or folder, or the manifest item's name) and ``options["batch_names"]`` (every path with
that content: the same content twice is transcribed once). ``client_metadata`` holds the row of
``metadata.csv`` for it, or the manifest item's ``metadata``.

Where the recordings come from (archives, folders, manifests, and their guard rails):
``api.services.batch_sources``; the results, streamed: ``api.services.batch_results``.
Here: the batch and all its jobs inserted in one transaction, then enqueued; idempotency; listing,
items, cancel and delete.
Counts, items and results are read with SQL aggregates and pages (``shared.platform.batch_state``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import delete, func, select, true, tuple_, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from api.deps import Caller
from api.errors import ApiError, not_found
from api.schemas import BatchOptions, JobOptions
from api.services import jobs as svc
from api.services.batch_results import job_error
from api.services.batch_sources import Item, discard
from api.uploads import remove_quietly
from shared.db.models import Batch, Job
from shared.platform.batch_state import batch_stats, batch_view, load_view
from shared.platform.settings import Settings
from shared.queue import enqueue_webhook

# -- create ------------------------------------------------------------------------------------------


def request_digest(source: str, options: BatchOptions, content: Any) -> str:
    body = {"source": source, "options": options.model_dump(), "content": content}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def idempotent_match(
    db: Session, caller: Caller, key: str | None, digest: str, settings: Settings
) -> Batch | None:
    """The earlier batch of this Idempotency-Key (same request), or None; 409 for another request.
    As for jobs, a key older than ``idempotency_hours`` is released for reuse."""
    if not key:
        return None
    batch = db.scalar(select(Batch).where(Batch.tenant_id == caller.tenant_id, Batch.idempotency_key == key))
    if batch is None:
        return None
    if batch.created_at < datetime.now(timezone.utc) - timedelta(hours=settings.idempotency_hours):
        batch.idempotency_key = None
        db.flush()
        return None
    if batch.request_hash is None and (batch.options or {}).get("receiving"):
        raise ApiError(
            409,
            "idempotency_conflict",
            "a request with this Idempotency-Key is still uploading its archive; retry once it is answered",
        )
    if batch.request_hash != digest:
        raise ApiError(
            409,
            "idempotency_conflict",
            "this Idempotency-Key was used with a different request; use a new key for a new request",
        )
    return batch


@dataclass
class Submission:
    """A checked batch request: where its recordings come from and what the batch row holds."""

    source: str  # archive | manifest | directory
    options: BatchOptions
    digest: str
    idempotency_key: str | None


DELETE_ATTEMPTS = 3  # a DELETE chosen as a deadlock's victim (see delete_batch) tries again
SOURCE_KEYS = ("directory", "archive")  # where a preparing batch's recordings are, in its options


def options_of(batch: Batch) -> BatchOptions:
    """The options a batch was submitted with, from its row (for jobs made after the request)."""
    stored = {k: v for k, v in batch.options.items() if k not in SOURCE_KEYS}
    return BatchOptions.model_validate({**stored, "name": batch.name, "webhook_url": batch.webhook_url})


def _job_options(options: BatchOptions, **extra: Any) -> JobOptions:
    return JobOptions(
        channels=options.channels,
        decoder=options.decoder,
        priority=options.priority,
        webhook_url=options.webhook_url if options.item_webhooks else None,
        **options.text_options().to_dict(),
        **extra,
    )


def _named(job: Job, batch_id: uuid.UUID, name: str, names: list[str]) -> Job:
    job.batch_id = batch_id
    job.options = {**job.options, "batch_name": name, "batch_names": names}
    return job


def file_jobs(
    caller: Caller,
    batch_id: uuid.UUID,
    items: list[Item],
    meta: dict[str, Any],
    sub: Submission,
    settings: Settings,
) -> list[Job]:
    """One job per distinct recording of an archive or folder."""
    jobs = []
    for item in items:
        new = svc.NewJob(_job_options(sub.options), item.stored, filename=PurePosixPath(item.name).name)
        job = _named(
            svc.job_row(caller, new, svc.request_hash(new), settings), batch_id, item.name, item.names
        )
        job.client_metadata = meta.get(item.name)
        job.duration = item.duration
        if not item.owned:
            job.source = "directory"
        jobs.append(job)
    return jobs


def url_jobs(
    caller: Caller,
    batch_id: uuid.UUID,
    checked: list[tuple[str, str, dict[str, Any] | None]],
    sub: Submission,
    settings: Settings,
) -> list[Job]:
    """One URL job per manifest item (the worker downloads it, as for a single URL job)."""
    jobs = []
    for name, url, metadata in checked:
        new = svc.NewJob(_job_options(sub.options, audio_url=url, metadata=metadata))
        job = svc.job_row(caller, new, svc.request_hash(new), settings)
        jobs.append(_named(job, batch_id, name, [name]))
    return jobs


@dataclass
class Built:
    """What a batch request's ``build`` made: the job rows, the skipped entries, how many names they
    hold, and the files to remove if the batch is not created; or, with ``preparing`` (a folder
    relative to the batch root, or an uploaded archive kept on disk, too large to read in the
    request), nothing yet: the batch is created empty in status ``preparing`` for
    :mod:`api.services.batch_intake`, which finds its source in the batch's options."""

    jobs: list[Job]
    skipped: list[dict[str, str]]
    items: int
    files: list[Item]
    preparing: dict[str, str] | None = None  # {"directory": relative} or {"archive": kept path}


def batch_options(options: BatchOptions) -> dict[str, Any]:
    """What a batch row's ``options`` hold of its request's options (its jobs' are read back from it)."""
    return {
        "channels": options.channels,
        "decoder": options.decoder,
        "priority": options.priority,
        "item_webhooks": options.item_webhooks,
        **options.text_options().to_dict(),
    }


def create_batch(
    db: Session,
    caller: Caller,
    sub: Submission,
    build: Callable[[uuid.UUID], Built],
    settings: Settings,
) -> tuple[Batch, bool]:
    """Insert the batch and its jobs in one transaction, commit, enqueue; ``(batch, created)``.

    ``build(batch_id)`` makes the job rows (extracting, scanning or checking URLs), or says the
    batch is a folder or archive too large to read in the request (:class:`Built`). With an Idempotency-Key
    already used for the same request, the earlier batch comes back instead."""
    existing = idempotent_match(db, caller, sub.idempotency_key, sub.digest, settings)
    if existing is not None:
        db.commit()
        return existing, False
    batch_id = uuid.uuid4()
    built = build(batch_id)
    jobs, files, preparing = built.jobs, built.files, built.preparing
    batch = Batch(
        id=batch_id,
        tenant_id=caller.tenant_id,
        name=sub.options.name,
        source=sub.source,
        status="queued" if preparing is None else "preparing",
        options={**batch_options(sub.options), **(preparing or {})},
        prepared_beat_at=None if preparing is None else datetime.now(timezone.utc),
        skipped=built.skipped,
        items=built.items,
        webhook_url=sub.options.webhook_url,
        idempotency_key=sub.idempotency_key,
        request_hash=sub.digest,
    )
    try:
        db.add(batch)
        db.flush()  # the batch row first: the jobs' foreign key points at it
        svc.with_tenant_vocabulary(db, caller, jobs)
        db.add_all(jobs)
        db.commit()
    except IntegrityError:
        db.rollback()
        discard(files)
        again = idempotent_match(db, caller, sub.idempotency_key, sub.digest, settings)
        if again is None:
            raise
        return again, False
    except BaseException:
        db.rollback()
        discard(files)
        raise
    for job in jobs:
        svc.enqueue(job)
    if not jobs:  # nothing to transcribe (every entry skipped): the batch ends now
        svc.end_batch_if_done(db, batch_id)
    return batch, True


def view(db: Session, batch: Batch) -> dict[str, Any]:
    db.refresh(batch)
    return load_view(db, batch)


# -- read -------------------------------------------------------------------------------------------


def load_batch(db: Session, caller: Caller, batch_id: str) -> Batch:
    """The tenant's batch, or 404 (unknown, malformed or another tenant's id look the same)."""
    try:
        key = uuid.UUID(batch_id)
    except ValueError:
        raise not_found("batch") from None
    batch = db.get(Batch, key, populate_existing=True)
    if batch is None or batch.tenant_id != caller.tenant_id:
        raise not_found("batch")
    return batch


def list_batches(
    db: Session, caller: Caller, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the tenant's batches, newest first (keyed on created_at, id), with their counts
    from one aggregate query for the whole page."""
    query = select(Batch).where(Batch.tenant_id == caller.tenant_id)
    if cursor:
        query = query.where(tuple_(Batch.created_at, Batch.id) < tuple_(*svc.decode_cursor(cursor)))
    rows = list(db.scalars(query.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit + 1)))
    page = rows[:limit]
    stats = batch_stats(db, [b.id for b in page])
    cursor = svc.encode_cursor(page[-1]) if len(rows) > limit else None
    return [batch_view(b, stats[b.id]) for b in page], cursor


def item_names() -> Any:
    """Each job's names, unnested from ``options->'batch_names'``: a LATERAL to join a job to (its
    column ``name``)."""
    return func.jsonb_array_elements_text(Job.options["batch_names"]).table_valued("name").lateral("n")


def list_items(
    db: Session, batch: Batch, limit: int, cursor: str | None, status: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the batch's items (names), by name, in SQL: a job's names are unnested from
    ``options->'batch_names'``; only ``limit + 1`` rows are read. ``status``: only items whose job
    is in it (e.g. the failed ones of a 10 000-recording batch)."""
    names = item_names()
    query = (
        select(
            names.c.name,
            Job.id,
            Job.status,
            Job.error_code,
            Job.error_message,
            Job.duration,
            Job.client_metadata,
        )
        .select_from(Job)
        .join(names, true())
        .where(Job.batch_id == batch.id)
    )
    if cursor is not None:
        query = query.where(names.c.name > cursor)
    if status is not None:
        query = query.where(Job.status == status)
    rows = db.execute(query.order_by(names.c.name).limit(limit + 1)).all()
    items = [
        {
            "name": r.name,
            "job_id": str(r.id),
            "status": r.status,
            "error": job_error(r.error_code, r.error_message),
            "duration": r.duration,
            "metadata": r.client_metadata,
        }
        for r in rows[:limit]
    ]
    return items, items[-1]["name"] if len(rows) > limit else None


def delete_batch(db: Session, batch: Batch, settings: Settings) -> int:
    """Remove the batch and all of it: its jobs, transcripts, webhook deliveries and the audio the
    platform stored (a server folder's files are the customer's and stay). Running jobs lose their
    rows, so their workers stop at the next heartbeat and write nothing. Returns the jobs removed."""
    batch_id = batch.id
    kept = (batch.options or {}).get("archive")  # a large archive still being read: its reader stops
    for attempt in range(DELETE_ATTEMPTS):
        try:
            # the row first: a folder still being read (preparing) adds its jobs under this lock,
            # so none can be added between the DELETE of the jobs and the batch's
            db.execute(select(Batch.id).where(Batch.id == batch_id).with_for_update())
            jobs = db.execute(select(Job.id, Job.audio_path).where(Job.batch_id == batch_id)).all()
            db.execute(delete(Job).where(Job.batch_id == batch_id))
            db.execute(delete(Batch).where(Batch.id == batch_id))
            db.commit()
            break
        except OperationalError as exc:
            # a worker storing a round updates several of these job rows in one statement, in
            # another order than this DELETE's, so PostgreSQL may pick this transaction as a
            # deadlock's victim; it holds nothing now, and the next try finds the round stored
            db.rollback()
            rolled_back = str(getattr(exc.orig, "sqlstate", "")).startswith("40")  # 40P01 deadlock
            if not rolled_back or attempt == DELETE_ATTEMPTS - 1:
                raise
    root = settings.audio_path.resolve()
    if kept and Path(kept).resolve().is_relative_to(root):
        remove_quietly(kept)
    for _, path in jobs:
        if path and Path(path).resolve().is_relative_to(root):
            remove_quietly(path)
    return len(jobs)


def cancel_batch(db: Session, batch: Batch) -> int:
    """Mark the batch cancelled (unless it ended), cancel its queued jobs at once and ask the
    workers to stop its processing ones; the batch ends (one batch.cancelled event) when the last
    one stops. Returns how many jobs this call cancelled or asked to stop."""
    db.execute(
        update(Batch)
        .where(Batch.id == batch.id, Batch.finished_at.is_(None), Batch.cancel_requested_at.is_(None))
        .values(cancel_requested_at=func.now())
    )
    now = datetime.now(timezone.utc)
    stopped = db.execute(
        update(Job)
        .where(Job.batch_id == batch.id, Job.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=now)
        .returning(Job.id, Job.webhook_url, Job.queue),
        execution_options={"synchronize_session": False},
    ).all()
    asked = db.execute(
        update(Job)
        .where(Job.batch_id == batch.id, Job.status == "processing", Job.cancel_requested.is_(False))
        .values(cancel_requested=True)
        .returning(Job.id),
        execution_options={"synchronize_session": False},
    ).all()
    db.commit()
    for row in stopped:
        if row.webhook_url:
            try:
                enqueue_webhook(str(row.id), "job.cancelled")
            except Exception:
                svc.log.exception("job %s: could not queue the job.cancelled webhook", row.id)
    svc.end_batch_if_done(db, batch.id)
    return len(stopped) + len(asked)
