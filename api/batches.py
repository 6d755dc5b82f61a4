"""Batches of recordings from one archive (ZIP or tar), kept as ordinary jobs.

No table of their own: every job of a batch carries ``options["batch_id"]``, ``options["batch_name"]``
(its path in the archive) and ``options["batch_names"]`` (every path with that content: the same
content twice is transcribed once). ``client_metadata`` holds the row of ``metadata.csv`` for it.

The archive is checked whole before anything is extracted (entry count, declared sizes, compression
ratio, paths); extraction counts the bytes actually read; on any refusal every extracted file is
removed and no job exists. All jobs are inserted in one transaction, then enqueued.
"""

from __future__ import annotations

import csv
import io
import json
import stat
import tarfile
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from api import jobs_service as svc
from api.deps import Caller
from api.errors import ApiError, not_found
from api.schemas import JobOptions
from api.uploads import PIECE, StoredAudio, audio_file_path, remove_quietly, save_stream
from shared.db.models import FINAL_STATUSES, Job
from shared.db.session import sessionmaker_for
from shared.settings import Settings

MAX_RATIO = 200
METADATA_CSV = "metadata.csv"
METADATA_LIMIT = 64 * 1024 * 1024
AUDIO_SUFFIXES = {
    ".wav", ".wave", ".mp3", ".ogg", ".oga", ".opus", ".flac", ".m4a", ".aac", ".mp4", ".gsm",
    ".au", ".snd", ".aif", ".aiff", ".amr", ".webm", ".wma", ".raw", ".vox",
}  # fmt: skip


@dataclass
class Entry:
    name: str
    size: int  # declared uncompressed size
    compressed: int | None  # declared compressed size (zip), None for tar
    kind: str  # file | dir | link | device
    open: Callable[[], IO[bytes]]


@dataclass
class Item:
    name: str
    stored: StoredAudio
    duration: float | None
    names: list[str] = field(default_factory=list)


def _unsafe(name: str) -> bool:
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return True
    return ".." in PurePosixPath(norm).parts


def clean_name(name: str) -> str:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts)


def _zip_entries(zf: zipfile.ZipFile) -> list[Entry]:
    out = []
    for info in zf.infolist():
        mode = info.external_attr >> 16
        if info.is_dir():
            kind = "dir"
        elif stat.S_ISLNK(mode):
            kind = "link"
        elif mode and not stat.S_ISREG(mode) and stat.S_IFMT(mode):
            kind = "device"
        else:
            kind = "file"
        out.append(Entry(info.filename, info.file_size, info.compress_size, kind, lambda i=info: zf.open(i)))
    return out


def _tar_entries(tf: tarfile.TarFile, limit: int) -> list[Entry]:
    out = []
    for m in tf:
        if len(out) > limit:  # enough to refuse: read no further
            break
        kind = (
            "dir" if m.isdir() else "link" if (m.issym() or m.islnk()) else "file" if m.isfile() else "device"
        )
        out.append(Entry(m.name, m.size, None, kind, lambda m=m: tf.extractfile(m)))  # type: ignore[misc]
    return out


def open_archive(path: Path, settings: Settings) -> tuple[Any, list[Entry]]:
    """``(the open archive, its entries)``; 415 ``unsupported_archive`` for anything else."""
    if zipfile.is_zipfile(path):
        try:
            zf = zipfile.ZipFile(path)
            return zf, _zip_entries(zf)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ApiError(415, "unsupported_archive", f"the ZIP archive cannot be read: {exc}") from None
    try:
        tf = tarfile.open(path, "r:*")  # noqa: SIM115 (closed by extract)
        return tf, _tar_entries(tf, settings.batch_max_entries)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ApiError(
            415, "unsupported_archive", f"the upload is not a ZIP or tar(.gz) archive ({exc})"
        ) from None


def check_entries(entries: list[Entry], archive_size: int, settings: Settings) -> None:
    """Refuse the whole archive before extracting anything (bombs, oversize, unsafe paths)."""
    if len(entries) > settings.batch_max_entries:
        raise ApiError(
            413,
            "too_many_entries",
            f"the archive has {len(entries)} entries, over the limit of {settings.batch_max_entries}",
        )
    total = 0
    for e in entries:
        if _unsafe(e.name):
            raise ApiError(400, "unsafe_path", f"the archive entry {e.name!r} has an absolute or '..' path")
        if e.kind != "file":
            continue
        if e.size > settings.max_upload_bytes:
            raise ApiError(
                413,
                "archive_too_large",
                f"the entry {e.name!r} holds {e.size} bytes, over the limit of {settings.max_upload_bytes}",
            )
        if e.compressed is not None and e.size > MAX_RATIO * max(e.compressed, 1) and e.size > 1024 * 1024:
            raise ApiError(
                400, "archive_bomb", f"the entry {e.name!r} expands more than {MAX_RATIO} times: refused"
            )
        total += e.size
    if total > settings.batch_max_total_bytes:
        raise ApiError(
            413,
            "archive_too_large",
            f"the archive expands to {total} bytes, over the limit of {settings.batch_max_total_bytes}",
        )
    compressed = entries and entries[0].compressed is None
    if compressed and total > 1024 * 1024 and total > MAX_RATIO * max(archive_size, 1):
        raise ApiError(400, "archive_bomb", f"the archive expands more than {MAX_RATIO} times: refused")


def _limited(source: IO[bytes], declared: int, name: str) -> Iterator[bytes]:
    seen = 0
    with source:
        while piece := source.read(PIECE):
            seen += len(piece)
            if seen > declared:
                raise ApiError(400, "archive_bomb", f"the entry {name!r} holds more than it declares")
            yield piece


def _read_metadata(entry: Entry) -> dict[str, dict[str, str]]:
    raw = b"".join(_limited(entry.open(), min(entry.size, METADATA_LIMIT), entry.name))
    rows = csv.DictReader(io.StringIO(raw.decode("utf-8-sig", errors="replace")))
    first = rows.fieldnames[0] if rows.fieldnames else None
    return {clean_name(row[first]): dict(row) for row in rows if first and row.get(first)}


def _probe(path: Path, settings: Settings) -> tuple[str | None, float | None]:
    """``(reason to skip or None, duration or None)``, from the headers only."""
    try:
        from shared.asr.audio import probe
    except ImportError:
        return None, None
    try:
        info = probe(path)
    except Exception as exc:
        return getattr(exc, "code", "corrupt_audio"), None
    if info.duration > settings.max_audio_seconds:
        return "audio_too_long", info.duration
    return None, info.duration


def extract(archive: Path, settings: Settings) -> tuple[list[Item], list[dict[str, str]], dict[str, Any]]:
    """``(distinct recordings, skipped, metadata rows)``; on any refusal nothing stays on disk."""
    handle, entries = open_archive(archive, settings)
    items: dict[str, Item] = {}
    skipped: list[dict[str, str]] = []
    try:
        check_entries(entries, archive.stat().st_size, settings)
        meta: dict[str, Any] = {}
        seen: set[str] = set()
        for e in entries:
            name = clean_name(e.name)
            if e.kind == "dir":
                continue
            if e.kind in ("link", "device"):
                skipped.append({"name": name, "reason": f"{e.kind}: only regular files are read"})
                continue
            if name == METADATA_CSV:
                meta = _read_metadata(e)
                continue
            if name in seen:
                skipped.append({"name": name, "reason": "duplicate_name"})
                continue
            seen.add(name)
            if PurePosixPath(name).suffix.lower() not in AUDIO_SUFFIXES:
                skipped.append({"name": name, "reason": "not_audio: the extension is not an audio one"})
                continue
            if e.size == 0:
                skipped.append({"name": name, "reason": "empty_audio"})
                continue
            dest = audio_file_path(settings.audio_path, str(uuid.uuid4()), name)
            stored = save_stream(_limited(e.open(), e.size, name), dest, settings.max_upload_bytes)
            reason, duration = _probe(stored.path, settings)
            if reason:
                remove_quietly(stored.path)
                skipped.append({"name": name, "reason": reason})
            elif stored.sha256 in items:
                remove_quietly(stored.path)
                items[stored.sha256].names.append(name)
            else:
                items[stored.sha256] = Item(name, stored, duration, [name])
    except BaseException:
        for item in items.values():
            remove_quietly(item.stored.path)
        raise
    finally:
        handle.close()
    return list(items.values()), skipped, meta


def batch_links(batch_id: str) -> dict[str, str]:
    base = f"/v1/batches/{batch_id}"
    return {
        "self": base,
        "items": f"{base}/items",
        "results": f"{base}/results",
        "cancel": f"{base}/cancel",
    }


def create_batch(
    db: Session, caller: Caller, archive: Path, options: JobOptions, settings: Settings
) -> dict[str, Any]:
    """Extract, insert one job per distinct recording (one transaction), commit, enqueue."""
    items, skipped, meta = extract(archive, settings)
    batch_id = str(uuid.uuid4())
    jobs = []
    try:
        for item in items:
            new = svc.NewJob(options, item.stored, filename=PurePosixPath(item.name).name)
            job = svc.job_row(caller, new, svc.request_hash(new), settings)
            job.options = {
                **job.options,
                "batch_id": batch_id,
                "batch_name": item.name,
                "batch_names": item.names,
            }
            job.client_metadata = meta.get(item.name)
            job.duration = item.duration
            jobs.append(job)
        db.add_all(jobs)
        db.commit()
    except BaseException:
        db.rollback()
        for item in items:
            remove_quietly(item.stored.path)
        raise
    for job in jobs:
        svc.enqueue(job)
    count = sum(len(i.names) for i in items)
    return {
        "id": batch_id,
        "items": count,
        "jobs": len(jobs),
        "skipped": skipped,
        "links": batch_links(batch_id),
    }


# -- read -------------------------------------------------------------------------------------------


def batch_jobs(db: Session, caller: Caller, batch_id: str, *, transcripts: bool = False) -> list[Job]:
    """The tenant's jobs of a batch, by name; 404 when there are none (unknown or another tenant's)."""
    try:
        batch_id = str(uuid.UUID(batch_id))
    except ValueError:
        raise not_found("batch") from None
    query = select(Job).where(
        Job.tenant_id == caller.tenant_id, Job.options["batch_id"].as_string() == batch_id
    )
    if transcripts:
        query = query.options(selectinload(Job.transcript))
    jobs = sorted(db.scalars(query), key=lambda j: j.options.get("batch_name", ""))
    if not jobs:
        raise not_found("batch")
    return jobs


def _names(job: Job) -> list[str]:
    return list(job.options.get("batch_names") or [job.options.get("batch_name", "")])


def _error(job: Job) -> dict[str, str] | None:
    return {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None


def item_rows(jobs: Iterable[Job]) -> list[dict[str, Any]]:
    rows = [
        {"name": n, "job_id": str(j.id), "status": j.status, "error": _error(j), "duration": j.duration}
        for j in jobs
        for n in _names(j)
    ]
    return sorted(rows, key=lambda r: r["name"])


def batch_view(batch_id: str, jobs: list[Job]) -> dict[str, Any]:
    counts = dict.fromkeys(("queued", "processing", "completed", "failed", "cancelled"), 0)
    for j in jobs:
        counts[j.status] = counts.get(j.status, 0) + 1
    done = sum(j.duration or 0.0 for j in jobs if j.status == "completed")
    open_jobs = [j for j in jobs if j.status not in FINAL_STATUSES]
    left = None if any(j.duration is None for j in open_jobs) else sum(j.duration or 0.0 for j in open_jobs)
    started = [j.started_at for j in jobs if j.started_at]
    eta = None
    if started and done > 0 and left is not None:
        elapsed = (datetime.now(timezone.utc) - min(started)).total_seconds()
        if elapsed > 0:
            eta = left / (done / elapsed)
    finished = len(jobs) - len(open_jobs)
    return {
        "id": batch_id,
        "status": "completed" if not open_jobs else "processing" if started else "queued",
        "items": sum(len(_names(j)) for j in jobs),
        "jobs": len(jobs),
        "counts": counts,
        "audio_seconds_done": done,
        "audio_seconds_left": left,
        "progress": finished / len(jobs),
        "eta_seconds": eta,
        "links": batch_links(batch_id),
    }


def cancel_batch(db: Session, jobs: list[Job]) -> int:
    return sum(1 for j in jobs if j.status not in FINAL_STATUSES and svc.request_cancel(db, j))


# -- results, streamed ------------------------------------------------------------------------------

PAGE = 50


def _result_records(settings: Settings, ids: list[uuid.UUID]) -> Iterator[dict[str, Any]]:
    """One record per item name, reading the jobs ``PAGE`` at a time in a session of its own."""
    session = sessionmaker_for(settings.database_url)()
    try:
        for start in range(0, len(ids), PAGE):
            query = select(Job).where(Job.id.in_(ids[start : start + PAGE]))
            for job in db_sorted(session.scalars(query.options(selectinload(Job.transcript)))):
                phrases = job.transcript.phrases if job.status == "completed" and job.transcript else []
                for name in _names(job):
                    yield {
                        "name": name,
                        "job_id": str(job.id),
                        "status": job.status,
                        "error": _error(job),
                        "metadata": job.client_metadata,
                        "duration": job.duration,
                        "phrases": phrases,
                    }
            session.expunge_all()
    finally:
        session.close()


def db_sorted(jobs: Iterable[Job]) -> list[Job]:
    return sorted(jobs, key=lambda j: j.options.get("batch_name", ""))


def stream_jsonl(settings: Settings, ids: list[uuid.UUID]) -> Iterator[bytes]:
    for rec in _result_records(settings, ids):
        yield (json.dumps(rec, ensure_ascii=False) + "\n").encode()


def stream_csv(settings: Settings, ids: list[uuid.UUID]) -> Iterator[bytes]:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["name", "job_id", "channel", "start", "end", "text"])
    for rec in _result_records(settings, ids):
        for p in rec["phrases"]:
            writer.writerow(
                [rec["name"], rec["job_id"], p.get("channel", 0), p["start_time"], p["end_time"], p["text"]]
            )
        yield buf.getvalue().encode()
        buf.seek(0)
        buf.truncate()
    yield buf.getvalue().encode()


class _Sink:
    """A write-only, non-seekable file for ``zipfile``: it writes data descriptors then."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


def stream_zip(settings: Settings, ids: list[uuid.UUID]) -> Iterator[bytes]:
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as zf:  # type: ignore[arg-type]
        for rec in _result_records(settings, ids):
            if rec["status"] != "completed":
                continue
            zf.writestr(rec["name"] + ".json", json.dumps(rec, ensure_ascii=False, indent=1))
            yield sink.take()
    yield sink.take()
