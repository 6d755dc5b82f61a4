"""A large batch read in the background: ``POST /v1/batches`` of a big folder or archive answers at once.

A call center's folder or archive is thousands of calls, and each is read whole for the dedupe's
SHA-256 (an archive's also written out) and probed; in the request that held it a minute or more
(past a proxy's timeout). A server folder or an uploaded archive with more audio files than
``TONE_BATCH_INLINE_FILES`` (200) is therefore only listed in the request (its limits and paths
checked, so refusals stay 4xx; an archive is kept on disk as ``<batch id>.archive``); the batch is
created empty in status ``preparing`` and answered 202. Then, on a thread of the API process, the
entries are read ``TONE_BATCH_INTAKE_CHUNK`` at a time (32): each chunk's jobs are committed and
queued at once, so the workers transcribe the first calls while the rest are still being read. An
entry the request would have refused the whole batch for (an archive entry holding more than it
declares, a folder file that grew since the walk) is one skipped item with that reason. When every
entry is read, the batch becomes ``queued`` (the kept archive is removed) and ends, as any batch,
when its last job does (never while it is preparing).

Nothing is lost if the API process dies: ``prepared_beat_at`` is renewed with every chunk, and is
the reader's token: every chunk's UPDATE of the batch row requires the value the reader last wrote.
A batch whose beat is older than ``TONE_BATCH_INTAKE_STALE_SECONDS`` (60) is taken over by any API
process's sweep (every half of that), which skips the entries that already have a job or a skip
(the audio directory, where an archive is kept, is shared by the API processes as by the workers);
a reader whose token was taken stops at its next chunk. A cancel stops the reading at the next chunk
(a chunk in flight is not committed, its extracted files removed: its UPDATE sees the cancel under
the row's lock); a DELETE locks the row first and removes the kept archive. An API shutting down
(``stop_readers``) has its readers stop at their next chunk and clear their beat: the batch is
taken over at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import ARRAY, Text, column, func, literal, select, true, update
from sqlalchemy import values as sa_values
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from api.deps import Caller
from api.errors import ApiError
from api.services import batch_sources as sources
from api.services import batches as batch_svc
from api.services import jobs as svc
from api.uploads import StoredAudio, remove_quietly
from shared.db.models import Batch, Job
from shared.db.session import sessionmaker_for
from shared.platform.settings import Settings

log = logging.getLogger("tone.api.batch_intake")

READERS = 2  # folders read at once per API process

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_stopping = threading.Event()  # the API is shutting down: readers hand their batches on


def stop_readers() -> None:
    """At the API's shutdown: every reader stops at its next chunk and releases its batch (its beat
    cleared), which any API's next sweep takes over at once, instead of holding the process's exit
    until a 10 000-file folder is read."""
    _stopping.set()


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


def renew(
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


CHUNK_BYTES = 1024**3  # a chunk also ends here: its read stays well within the stale seconds


def _chunks(entries: list[sources.Entry], size: int) -> Iterator[list[sources.Entry]]:
    """``size`` entries at a time, fewer where they would hold more than ``CHUNK_BYTES`` (at least
    one): a chunk of 32 four-hour calls read from a slow disk must not outlast the reader's beat."""
    chunk: list[sources.Entry] = []
    held = 0
    for e in entries:
        if chunk and (len(chunk) >= max(1, size) or held + e.size > CHUNK_BYTES):
            yield chunk
            chunk, held = [], 0
        chunk.append(e)
        held += e.size
    if chunk:
        yield chunk


def _read_so_far(db: Session, batch: Batch) -> tuple[set[str], dict[str, uuid.UUID]]:
    """What an earlier reader of this batch did: every name it placed (in a job or skipped), and its
    jobs by content (for the dedupe of later files)."""
    names = batch_svc.item_names()
    query = select(names.c.name).select_from(Job).join(names, true()).where(Job.batch_id == batch.id)
    done: set[str] = {str(name) for name in db.scalars(query)}
    done |= {s["name"] for s in batch.skipped or []}
    rows = db.execute(select(Job.id, Job.sha256).where(Job.batch_id == batch.id))
    by_hash = {str(sha): job_id for job_id, sha in rows if sha}
    return done, by_hash


@dataclass
class _Source:
    """Where a preparing batch's recordings are: its folder, or its uploaded archive kept on disk."""

    name: str  # for logs and a whole-source skip: the folder's relative path, or "archive"
    entries: list[sources.Entry]
    place: Callable[[sources.Entry, str], tuple[StoredAudio, bool]]
    threads: int
    archive: Path | None = None
    handle: Any = None

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def _open(batch: Batch, settings: Settings) -> _Source:
    """The batch's source, listed and checked again (ApiError if it can no longer be read)."""
    if "archive" in batch.options:
        archive = Path(str(batch.options["archive"]))
        if not archive.is_file():
            raise ApiError(410, "archive_gone", "the uploaded archive is no longer on the server")
        handle, entries = sources.list_archive(archive, settings)
        return _Source(
            "archive", entries, sources.extracted(settings), sources.archive_threads(handle), archive, handle
        )
    directory = str(batch.options.get("directory", ""))
    entries = sources.list_directory(sources.resolve_directory(directory, settings), settings)
    return _Source(directory, entries, sources._hash_in_place, sources.SCAN_THREADS)


def _prepare(db: Session, batch_id: uuid.UUID, beat: datetime, settings: Settings) -> None:
    claimed = renew(db, batch_id, beat, [], 0)
    db.commit()
    if claimed is None:
        stopped(db, batch_id, beat, settings)
        return
    beat = claimed
    batch = db.get(Batch, batch_id)
    assert batch is not None  # the UPDATE just matched it
    try:
        source = _open(batch, settings)
    except ApiError as exc:  # gone or changed since the request: the reason, no more jobs
        where = str(batch.options.get("directory") or "archive")
        log.warning("batch %s: its %r can no longer be read: %s", batch_id, where, exc.message)
        _done(db, batch_id, beat, [{"name": where, "reason": f"{exc.code}: {exc.message}"}], settings)
        return
    try:
        last = _read_all(db, batch, beat, source, settings)
    finally:
        source.close()
    if last is not None:
        _done(db, batch_id, last, [], settings)


def _read_all(
    db: Session, batch: Batch, beat: datetime, source: _Source, settings: Settings
) -> datetime | None:
    """Every entry not read before, a chunk per transaction; the last beat, or None if it stopped."""
    batch_id = batch.id
    meta: dict[str, Any] = {}
    unread: dict[str, str] | None = None  # metadata.csv's skip: why no metadata is attached
    files = []
    for e in source.entries:
        if e.kind == "file" and sources.clean_name(e.name) == sources.METADATA_CSV:
            meta, unread = sources.metadata_of(e)
        else:
            files.append(e)
    done, by_hash = _read_so_far(db, batch)
    if unread is not None and unread["name"] not in done:  # (said once, whoever reads the rest)
        renewed = renew(db, batch_id, beat, [unread], 0)
        db.commit()
        if renewed is None:
            stopped(db, batch_id, beat, settings)
            return None
        beat = renewed
    caller = Caller(batch.tenant_id, "", "")
    sub = batch_svc.Submission(batch.source, batch_svc.options_of(batch), batch.request_hash or "", None)
    todo = [e for e in files if sources.clean_name(e.name) not in done]
    log.info(
        "batch %s: reading %d entries of %r (%d read before)", batch_id, len(todo), source.name, len(done)
    )
    for chunk in _chunks(todo, settings.batch_intake_chunk):
        if _stopping.is_set():
            _release(db, batch_id, beat)
            return None
        try:
            items, skipped, _ = sources.collect(
                chunk, settings, source.place, threads=source.threads, lenient=True
            )
        except (OperationalError, InterfaceError):
            raise  # the database: a later reader takes the batch over
        except Exception as exc:  # anything else would fail again: the reading ends, with its reason
            log.exception("batch %s: reading stopped", batch_id)
            reason = f"internal_error: reading stopped here: {exc}"[:500]
            _done(
                db, batch_id, beat, [{"name": sources.clean_name(chunk[0].name), "reason": reason}], settings
            )
            return None
        renewed = commit_chunk(db, batch_id, beat, items, skipped, meta, by_hash, caller, sub, settings)
        if renewed is None:
            stopped(db, batch_id, beat, settings)
            return None
        beat = renewed
    return beat


def commit_chunk(
    db: Session,
    batch_id: uuid.UUID,
    beat: datetime,
    items: list[sources.Item],
    skipped: list[dict[str, str]],
    meta: dict[str, Any],
    by_hash: dict[str, uuid.UUID],
    caller: Caller,
    sub: batch_svc.Submission,
    settings: Settings,
) -> datetime | None:
    """One chunk's jobs (and skips) committed and queued in one transaction under the reader's beat;
    content already in a job of the batch (``by_hash``, kept up to date) is one more name of that job.
    The new beat, or None when the batch is no longer this reader's (nothing committed, the chunk's
    files removed)."""
    renewed = renew(db, batch_id, beat, skipped, sum(len(i.names) for i in items))
    if renewed is None:  # the chunk is not committed: its jobs would be queued in a cancelled batch
        db.rollback()
        sources.discard(items)
        return None
    fresh = []
    for item in items:
        if item.stored.sha256 not in by_hash:
            fresh.append(item)
            continue
        # the same content as an entry of an earlier chunk: one more name of its job
        sources.discard([item])
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
    try:
        db.commit()
    except BaseException:
        db.rollback()
        sources.discard(fresh)
        raise
    for job in jobs:
        by_hash[job.sha256 or ""] = job.id
        svc.enqueue(job)
    return renewed


def attach_metadata(db: Session, batch_id: uuid.UUID, meta: dict[str, Any]) -> None:
    """``metadata.csv``'s rows on the batch's jobs by their first name (jobs made before the file was
    read: an archive read while it uploads); the caller commits."""
    if not meta:
        return
    rows = [(name, json.dumps(row, ensure_ascii=False)) for name, row in meta.items()]
    values = sa_values(column("name", Text()), column("row", Text()), name="meta").data(rows)
    db.execute(
        update(Job)
        .where(Job.batch_id == batch_id, Job.options["batch_name"].as_string() == values.c.name)
        .values(client_metadata=func.cast(values.c.row, JSONB())),
        execution_options={"synchronize_session": False},
    )


def _release(db: Session, batch_id: uuid.UUID, beat: datetime) -> None:
    """Hand the batch on: its beat cleared, so that any API's next sweep takes it over."""
    db.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status == "preparing", Batch.prepared_beat_at == beat)
        .values(prepared_beat_at=None),
        execution_options={"synchronize_session": False},
    )
    db.commit()
    log.info("batch %s: the API is stopping: reading handed on", batch_id)


def _drop_archive(db: Session, batch_id: uuid.UUID, settings: Settings) -> None:
    """The kept archive of a batch whose reading ended (read, cancelled or deleted)."""
    options = db.scalar(select(Batch.options).where(Batch.id == batch_id))
    kept = (options or {}).get("archive") if options is not None else None
    if kept and Path(kept).resolve().is_relative_to(settings.audio_path.resolve()):
        remove_quietly(kept)


def _done(
    db: Session, batch_id: uuid.UUID, beat: datetime, skipped: list[dict[str, str]], settings: Settings
) -> None:
    """Every entry read: the batch is queued (it ends when its last job does, now if it has none)."""
    if renew(db, batch_id, beat, skipped, 0, status="queued", prepared_beat_at=None) is None:
        db.rollback()
        stopped(db, batch_id, beat, settings)
        return
    db.commit()
    log.info("batch %s: its recordings are read", batch_id)
    _drop_archive(db, batch_id, settings)
    svc.end_batch_if_done(db, batch_id)


def stopped(db: Session, batch_id: uuid.UUID, beat: datetime, settings: Settings) -> None:
    """This reader's batch changed under it: if a cancel was asked for, it is queued (reading
    stops) and ends as cancelled when its running jobs stop; deleted, nothing is left; taken over
    by another reader, nothing is done."""
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
        log.info("batch %s: cancelled while its recordings were read: reading stopped", batch_id)
        _drop_archive(db, batch_id, settings)
        svc.end_batch_if_done(db, batch_id)
    elif db.get(Batch, batch_id) is None:
        log.info("batch %s: deleted while its recordings were read: stopped", batch_id)
    else:
        log.info("batch %s: taken over by another reader: stopped", batch_id)


def take_over_stale(settings: Settings) -> list[uuid.UUID]:
    """Claim every preparing batch whose reader stopped (its beat older than the stale seconds) and
    read it here (a cancelled one just ends). Returns the batches taken."""
    now = datetime.now(timezone.utc)
    taken: list[uuid.UUID] = []
    with sessionmaker_for(settings.database_url)() as db:
        stale = db.execute(
            select(Batch.id, Batch.prepared_beat_at, Batch.options).where(
                Batch.status == "preparing",
                Batch.finished_at.is_(None),
                (Batch.prepared_beat_at.is_(None))
                | (Batch.prepared_beat_at < now - timedelta(seconds=settings.batch_intake_stale_seconds)),
            )
        ).all()
        for batch_id, old, options in stale:
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
            if (options or {}).get("receiving"):  # its upload's reader died: the client got no answer
                receiving = db.get(Batch, batch_id)
                if receiving is not None:
                    batch_svc.delete_batch(db, receiving, settings)
                    log.info("batch %s: its upload stopped before it ended: removed", batch_id)
                continue
            log.info("batch %s: its folder's reader stopped; reading it here", batch_id)
            taken.append(batch_id)
            submit(batch_id, now, settings)
    return taken


async def sweeps(settings: Settings) -> None:
    """The API's lifespan task: take over stale preparing batches (a large folder or archive whose
    reader stopped, an archive whose upload stopped) now and every half of the stale seconds."""
    while True:
        try:
            await asyncio.to_thread(take_over_stale, settings)
        except Exception:  # the database may be away for a while: the next sweep tries again
            log.warning("could not look for batches whose folder reader stopped", exc_info=True)
        await asyncio.sleep(settings.batch_intake_stale_seconds / 2)
