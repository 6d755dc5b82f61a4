"""A large server folder, read in the background: ``POST /v1/batches {"directory"}`` answers at once.

A call center's folder is thousands of calls, and each file is read whole for the dedupe's SHA-256
and probed; in the request that held it a minute or more (past a proxy's timeout). A folder with
more audio files than ``TONE_BATCH_INLINE_FILES`` (200) is therefore only listed in the request (its
limits and path checked, so refusals stay 4xx); the batch is created empty in status ``preparing``
and answered 202. Then, on a thread of the API process, the folder is read
``TONE_BATCH_INTAKE_CHUNK`` files at a time (32): each chunk's jobs are committed and queued at
once, so the workers transcribe the first calls while the rest are still being read. When every
file is read, the batch becomes ``queued`` and ends, as any batch, when its last job does (never
while it is preparing).

Nothing is lost if the API process dies: ``prepared_beat_at`` is renewed with every chunk, and is
the reader's token: every chunk's UPDATE of the batch row requires the value the reader last wrote.
A batch whose beat is older than ``TONE_BATCH_INTAKE_STALE_SECONDS`` (60) is taken over by any API
process's sweep (every half of that), which skips the files that already have a job or a skip; a
reader whose token was taken stops at its next chunk. A cancel stops the reading at the next chunk
(a chunk in flight is not committed: its UPDATE sees the cancel under the row's lock); a DELETE
locks the row first.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import ARRAY, Text, func, literal, select, true, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from api.deps import Caller
from api.errors import ApiError
from api.services import batch_sources as sources
from api.services import batches as batch_svc
from api.services import jobs as svc
from shared.db.models import Batch, Job
from shared.db.session import sessionmaker_for
from shared.platform.settings import Settings

log = logging.getLogger("tone.api.batch_intake")

READERS = 2  # folders read at once per API process

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def audio_files(entries: list[sources.Entry]) -> int:
    """How many entries the request would read and probe: regular files with an audio extension."""
    return sum(
        1
        for e in entries
        if e.kind == "file" and sources.PurePosixPath(e.name).suffix.lower() in sources.AUDIO_SUFFIXES
    )


def submit(batch_id: uuid.UUID, beat: datetime, settings: Settings) -> None:
    """Read the batch's folder on this process's readers (the caller committed it, beat ``beat``)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(READERS, thread_name_prefix="batch-intake")
        _pool.submit(contextvars.copy_context().run, prepare, batch_id, beat, settings)


def prepare(batch_id: uuid.UUID, beat: datetime, settings: Settings) -> None:
    """Read the folder of a preparing batch whose beat is ``beat``; never raises (a failure leaves
    the beat to go stale, and a sweep takes the batch over)."""
    try:
        with sessionmaker_for(settings.database_url)() as db:
            _prepare(db, batch_id, beat, settings)
    except Exception:
        stale = settings.batch_intake_stale_seconds
        log.exception("batch %s: reading its folder failed; taken over in %.0f s", batch_id, stale)


def _renew(
    db: Session, batch_id: uuid.UUID, beat: datetime, skipped: list[dict[str, str]], names: int, **values: Any
) -> datetime | None:
    """The batch row's UPDATE that opens a chunk's transaction (and locks the row): the beat renewed,
    the chunk's skips and names added. None when the batch is no longer this reader's: deleted,
    cancelled, or taken over."""
    now = datetime.now(timezone.utc)
    done = db.execute(
        update(Batch)
        .where(
            Batch.id == batch_id,
            Batch.status == "preparing",
            Batch.prepared_beat_at == beat,
            Batch.cancel_requested_at.is_(None),
        )
        .values(
            prepared_beat_at=values.pop("prepared_beat_at", now),
            skipped=Batch.skipped.op("||")(literal(skipped, JSONB())),
            items=Batch.items + names,
            **values,
        ),
        execution_options={"synchronize_session": False},
    )
    return now if done.rowcount else None  # type: ignore[attr-defined]


def _chunks(entries: list[sources.Entry], size: int) -> Iterator[list[sources.Entry]]:
    size = max(1, size)
    for i in range(0, len(entries), size):
        yield entries[i : i + size]


def _read_so_far(db: Session, batch: Batch) -> tuple[set[str], dict[str, uuid.UUID]]:
    """What an earlier reader of this batch did: every name it placed (in a job or skipped), and its
    jobs by content (for the dedupe of later files)."""
    names = func.jsonb_array_elements_text(Job.options["batch_names"]).table_valued("name").lateral("n")
    query = select(names.c.name).select_from(Job).join(names, true()).where(Job.batch_id == batch.id)
    done: set[str] = {str(name) for name in db.scalars(query)}
    done |= {s["name"] for s in batch.skipped or []}
    rows = db.execute(select(Job.id, Job.sha256).where(Job.batch_id == batch.id))
    by_hash = {str(sha): job_id for job_id, sha in rows if sha}
    return done, by_hash


def _prepare(db: Session, batch_id: uuid.UUID, beat: datetime, settings: Settings) -> None:
    claimed = _renew(db, batch_id, beat, [], 0)
    db.commit()
    if claimed is None:
        _stopped(db, batch_id, beat)
        return
    beat = claimed
    batch = db.get(Batch, batch_id)
    assert batch is not None  # the UPDATE just matched it
    directory = str(batch.options.get("directory", ""))
    try:
        entries = sources.list_directory(sources.resolve_directory(directory, settings), settings)
    except ApiError as exc:  # the folder went away or changed since the request: its reason, no jobs
        log.warning("batch %s: its folder %r can no longer be read: %s", batch_id, directory, exc.message)
        _done(db, batch_id, beat, [{"name": directory, "reason": f"{exc.code}: {exc.message}"}])
        return
    meta: dict[str, Any] = {}
    files = []
    for e in entries:
        if e.kind == "file" and sources.clean_name(e.name) == sources.METADATA_CSV:
            meta = sources.parse_metadata_csv(b"".join(sources._limited(e.open(), e.size, e.name)))
        else:
            files.append(e)
    done, by_hash = _read_so_far(db, batch)
    caller = Caller(batch.tenant_id, "", "")
    sub = batch_svc.Submission("directory", batch_svc.options_of(batch), batch.request_hash or "", None)
    todo = [e for e in files if sources.clean_name(e.name) not in done]
    log.info("batch %s: reading %d files of %r (%d read before)", batch_id, len(todo), directory, len(done))
    for chunk in _chunks(todo, settings.batch_intake_chunk):
        items, skipped, _ = sources.collect(
            chunk, settings, sources._hash_in_place, threads=sources.SCAN_THREADS
        )
        fresh = [i for i in items if i.stored.sha256 not in by_hash]
        renewed = _renew(db, batch_id, beat, skipped, sum(len(i.names) for i in items))
        if renewed is None:  # the chunk is not committed: its jobs would be queued in a cancelled batch
            db.rollback()
            _stopped(db, batch_id, beat)
            return
        beat = renewed
        for item in items:  # the same content as a file of an earlier chunk: one more name of its job
            if item.stored.sha256 in by_hash:
                db.execute(
                    update(Job)
                    .where(Job.id == by_hash[item.stored.sha256])
                    .values(
                        options=func.jsonb_set(
                            Job.options,
                            literal(["batch_names"], ARRAY(Text())),
                            Job.options["batch_names"].op("||")(literal(item.names, JSONB())),
                        )
                    ),
                    execution_options={"synchronize_session": False},
                )
        jobs = batch_svc.file_jobs(caller, batch_id, fresh, meta, sub, settings)
        svc.with_tenant_vocabulary(db, caller, jobs)
        db.add_all(jobs)
        db.commit()
        for job in jobs:
            by_hash[job.sha256 or ""] = job.id
            svc.enqueue(job)
    _done(db, batch_id, beat, [])


def _done(db: Session, batch_id: uuid.UUID, beat: datetime, skipped: list[dict[str, str]]) -> None:
    """Every file read: the batch is queued (it ends when its last job does, now if it has none)."""
    if _renew(db, batch_id, beat, skipped, 0, status="queued", prepared_beat_at=None) is None:
        db.rollback()
        return
    db.commit()
    log.info("batch %s: its folder is read", batch_id)
    svc.end_batch_if_done(db, batch_id)


def _stopped(db: Session, batch_id: uuid.UUID, beat: datetime) -> None:
    """This reader's batch changed under it: if a cancel was asked for, it is queued (reading
    stops) and ends as cancelled when its running jobs stop; deleted or taken over, nothing."""
    ended = db.execute(
        update(Batch)
        .where(
            Batch.id == batch_id,
            Batch.status == "preparing",
            Batch.prepared_beat_at == beat,
            Batch.cancel_requested_at.is_not(None),
        )
        .values(status="queued", prepared_beat_at=None),
        execution_options={"synchronize_session": False},
    ).rowcount  # type: ignore[attr-defined]
    db.commit()
    if ended:
        log.info("batch %s: cancelled while its folder was read: reading stopped", batch_id)
        svc.end_batch_if_done(db, batch_id)
    else:
        log.info("batch %s: deleted, or taken over by another reader: stopped", batch_id)


def take_over_stale(settings: Settings) -> list[uuid.UUID]:
    """Claim every preparing batch whose reader stopped (its beat older than the stale seconds) and
    read it here (a cancelled one just ends). Returns the batches taken."""
    now = datetime.now(timezone.utc)
    taken: list[uuid.UUID] = []
    with sessionmaker_for(settings.database_url)() as db:
        stale = db.execute(
            select(Batch.id, Batch.prepared_beat_at).where(
                Batch.status == "preparing",
                Batch.finished_at.is_(None),
                (Batch.prepared_beat_at.is_(None))
                | (Batch.prepared_beat_at < now - timedelta(seconds=settings.batch_intake_stale_seconds)),
            )
        ).all()
        for batch_id, old in stale:
            claim = update(Batch).where(Batch.id == batch_id, Batch.status == "preparing")
            claim = claim.where(
                Batch.prepared_beat_at.is_(None) if old is None else Batch.prepared_beat_at == old
            )
            won = db.execute(
                claim.values(prepared_beat_at=now), execution_options={"synchronize_session": False}
            ).rowcount  # type: ignore[attr-defined]
            db.commit()
            if not won:
                continue
            log.info("batch %s: its folder's reader stopped; reading it here", batch_id)
            taken.append(batch_id)
            submit(batch_id, now, settings)
    return taken


async def sweeps(settings: Settings) -> None:
    """The API's lifespan task: take over stale preparing batches now and every half of the stale
    seconds (only where folder batches are allowed at all)."""
    if settings.batch_root is None:
        return
    while True:
        try:
            await asyncio.to_thread(take_over_stale, settings)
        except Exception:  # the database may be away for a while: the next sweep tries again
            log.warning("could not look for batches whose folder reader stopped", exc_info=True)
        await asyncio.sleep(settings.batch_intake_stale_seconds / 2)
