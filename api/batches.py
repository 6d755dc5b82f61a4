"""Batches: many recordings in one request, from an archive (ZIP or tar), a JSON manifest of URLs,
or a folder under the server's ``TONE_BATCH_ROOT``; one ``batches`` row and one job per recording.

Each job points at its batch (``jobs.batch_id``) and carries ``options["batch_name"]`` (its path in
the archive or folder, or the manifest item's name) and ``options["batch_names"]`` (every path with
that content: the same content twice is transcribed once). ``client_metadata`` holds the row of
``metadata.csv`` for it, or the manifest item's ``metadata``.

An archive is checked whole before anything is extracted (entry count, declared sizes, compression
ratio, paths); extraction counts the bytes actually read; a folder is walked without following
links, its files used in place (never deleted: job DELETE removes only files under the audio
directory); a manifest's URLs all pass the SSRF guard first. On any refusal nothing is created and
every extracted file is removed. The batch and all its jobs are inserted in one transaction, then
enqueued. Counts, items and results are read with SQL aggregates and pages (``shared.batch_state``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from sqlalchemy import delete, func, select, true, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from api import jobs_service as svc
from api.deps import Caller
from api.errors import ApiError, not_found
from api.schemas import BatchOptions, BatchRequest, JobOptions
from api.uploads import PIECE, StoredAudio, audio_file_path, remove_quietly, save_stream
from shared.asr.formats import FORMATS
from shared.batch_state import batch_stats, batch_view, load_view
from shared.db.models import Batch, Job
from shared.db.session import sessionmaker_for
from shared.settings import Settings
from worker.celery_app import enqueue_webhook

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
    path: Path | None = None  # a file in a folder (used in place), not in an archive


@dataclass
class Item:
    name: str
    stored: StoredAudio
    duration: float | None
    names: list[str] = field(default_factory=list)
    owned: bool = True  # extracted by us (removed on refusal); False: a file used in place


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
        out.append(Entry(zip_name(info), info.file_size, info.compress_size, kind, lambda i=info: zf.open(i)))
    return out


def zip_name(info: zipfile.ZipInfo) -> str:
    """An entry's name as its maker meant it. Without the UTF-8 flag (0x800) Python reads a name as
    CP437, but Windows' own compressed folders write the OEM code page (CP866 on Russian Windows)
    and some tools write UTF-8 without setting the flag: UTF-8 first, then CP866."""
    if info.flag_bits & 0x800:
        return info.filename
    try:
        raw = info.filename.encode("cp437")
    except UnicodeEncodeError:
        return info.filename
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp866")


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


def check_entries(entries: list[Entry], archive_size: int | None, settings: Settings) -> None:
    """Refuse the whole archive before extracting anything (bombs, oversize, unsafe paths).
    ``archive_size`` None: not an archive (a folder), no compression ratio to check."""
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
    tar_like = bool(entries) and entries[0].compressed is None
    if (
        tar_like
        and archive_size is not None
        and total > 1024 * 1024
        and total > MAX_RATIO * max(archive_size, 1)
    ):
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
    return parse_metadata_csv(raw)


def parse_metadata_csv(raw: bytes) -> dict[str, dict[str, str]]:
    """``metadata.csv`` as spreadsheets write it: UTF-8 (with or without a BOM) or, failing that,
    Windows-1251 (Excel's "CSV" on Russian Windows); comma, semicolon (Excel's separator where the
    decimal mark is a comma) or tab. Rows by their first column, the recording's path."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("cp1251", errors="replace")
    header = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=header.count) if any(d in header for d in ",;\t") else ","
    rows = csv.DictReader(io.StringIO(text), delimiter=delimiter)
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


def collect(
    entries: list[Entry], settings: Settings, place: Callable[[Entry, str], tuple[StoredAudio, bool]]
) -> tuple[list[Item], list[dict[str, str]], dict[str, Any]]:
    """``(distinct recordings, skipped, metadata rows)`` of checked entries: the skip rules, the
    dedupe by content and ``metadata.csv``, shared by archives and folders. ``place(entry, name)``
    stores or finds one file: ``(its audio, whether it is ours to remove)``. On any error every
    file placed so far that is ours is removed."""
    items: dict[str, Item] = {}
    skipped: list[dict[str, str]] = []
    try:
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
            stored, owned = place(e, name)
            reason, duration = _probe(stored.path, settings)
            if reason:
                if owned:
                    remove_quietly(stored.path)
                skipped.append({"name": name, "reason": reason})
            elif stored.sha256 in items:
                if owned:
                    remove_quietly(stored.path)
                items[stored.sha256].names.append(name)
            else:
                items[stored.sha256] = Item(name, stored, duration, [name], owned)
    except BaseException:
        discard(list(items.values()))
        raise
    return list(items.values()), skipped, meta


def discard(items: list[Item]) -> None:
    for item in items:
        if item.owned:
            remove_quietly(item.stored.path)


def extract(archive: Path, settings: Settings) -> tuple[list[Item], list[dict[str, str]], dict[str, Any]]:
    """``(distinct recordings, skipped, metadata rows)``; on any refusal nothing stays on disk."""
    handle, entries = open_archive(archive, settings)
    try:
        check_entries(entries, archive.stat().st_size, settings)

        def place(e: Entry, name: str) -> tuple[StoredAudio, bool]:
            dest = audio_file_path(settings.audio_path, str(uuid.uuid4()), name)
            return save_stream(_limited(e.open(), e.size, name), dest, settings.max_upload_bytes), True

        return collect(entries, settings, place)
    finally:
        handle.close()


# -- a folder under TONE_BATCH_ROOT ------------------------------------------------------------------


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def resolve_directory(relative: str, settings: Settings) -> Path:
    """The folder ``relative`` names under ``settings.batch_root``, resolved; it must stay inside.

    403 ``directory_not_allowed`` when no root is configured (or it overlaps the audio directory:
    jobs' uploads are not a batch source); 400 ``unsafe_path`` for absolute or ``..`` paths and for
    links that lead out of the root; 404 ``directory_not_found``."""
    if settings.batch_root is None:
        raise ApiError(
            403,
            "directory_not_allowed",
            "batches from server folders are off: an administrator sets TONE_BATCH_ROOT to allow them",
        )
    root = settings.batch_root.resolve()
    audio = settings.audio_path.resolve()
    if _inside(root, audio):
        raise ApiError(403, "directory_not_allowed", "the batch root is inside the audio directory: refused")
    text = relative.strip()
    if not text or "\x00" in text or _unsafe(text):
        raise ApiError(
            400, "unsafe_path", "directory must be a relative path inside the batch root, without '..'"
        )
    try:
        folder = (root / clean_name(text)).resolve(strict=True)
    except (OSError, RuntimeError):
        raise ApiError(404, "directory_not_found", f"no folder {text!r} under the batch root") from None
    if not _inside(folder, root):
        raise ApiError(400, "unsafe_path", f"{text!r} leads out of the batch root (a link): refused")
    if not folder.is_dir():
        raise ApiError(404, "directory_not_found", f"{text!r} is not a folder under the batch root")
    if _inside(folder, audio) or _inside(audio, folder):
        raise ApiError(
            403, "directory_not_allowed", f"{text!r} holds the platform's audio directory: refused"
        )
    return folder


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "device"


def _opener(path: Path) -> Callable[[], IO[bytes]]:
    return lambda: path.open("rb")


def directory_entries(folder: Path, settings: Settings) -> list[Entry]:
    """Every entry under ``folder`` (links listed, never followed), by path; 413
    ``too_many_entries`` as soon as there are more than the limit (the walk stops there)."""
    out: list[Entry] = []
    for top, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            path = Path(top) / name
            try:
                st = path.lstat()
            except OSError:
                continue
            rel = path.relative_to(folder).as_posix()
            out.append(Entry(rel, st.st_size, None, _kind(st.st_mode), _opener(path), path))
            if len(out) > settings.batch_max_entries:
                return out  # enough to refuse
    return out


def _hash_in_place(entry: Entry, name: str) -> tuple[StoredAudio, bool]:
    """A folder's file as it is: hashed (for the dedupe), not copied, never ours to remove."""
    assert entry.path is not None
    digest = hashlib.sha256()
    size = 0
    for piece in _limited(entry.open(), entry.size, name):
        digest.update(piece)
        size += len(piece)
    return StoredAudio(entry.path, size, digest.hexdigest()), False


def scan_directory(
    folder: Path, settings: Settings
) -> tuple[list[Item], list[dict[str, str]], dict[str, Any]]:
    """A folder's recordings, read in place (hashed and probed, not copied)."""
    entries = directory_entries(folder, settings)
    check_entries(entries, None, settings)
    return collect(entries, settings, _hash_in_place)


# -- a JSON manifest of URLs ---------------------------------------------------------------------------

_NAME_CHARS = re.compile(r"[^\w.\-/ ]+")


def url_name(url: str) -> str:
    """A safe relative name for a URL item: ``host/path`` with odd characters replaced."""
    parts = urlsplit(url)
    raw = f"{parts.hostname or 'item'}/{unquote(parts.path)}"
    cleaned = [_NAME_CHARS.sub("_", p) for p in raw.split("/")]
    return "/".join(p for p in cleaned if p not in ("", ".", "..")) or "item"


def _unique(name: str, used: set[str]) -> str:
    if name not in used:
        return name
    path = PurePosixPath(name)
    n = 2
    while (candidate := str(path.with_name(f"{path.stem}~{n}{path.suffix}"))) in used:
        n += 1
    return candidate


def check_manifest(body: BatchRequest, settings: Settings) -> list[tuple[str, str, dict[str, Any] | None]]:
    """``(name, url, metadata)`` per item, every URL checked by the SSRF guard (each host once).

    413 ``too_many_entries``; 422 ``invalid_request`` (no items, not http(s), a duplicate or unsafe
    name, a host that does not resolve); 400 ``url_not_allowed`` for a non-public address unless
    TONE_ALLOW_PRIVATE_URLS. Nothing is created on any of them."""
    from shared.netguard import UrlError, check_url

    items = body.items or []
    if not items:
        raise ApiError(422, "invalid_request", "items must hold at least one {audio_url}")
    if len(items) > settings.batch_max_entries:
        raise ApiError(
            413,
            "too_many_entries",
            f"the manifest has {len(items)} items, over the limit of {settings.batch_max_entries}",
        )
    checked: dict[tuple[str, str, int | None], None] = {}
    explicit = {clean_name(i.name) for i in items if i.name}
    used: set[str] = set()
    out = []
    for n, item in enumerate(items):
        where = f"items[{n}]"
        try:
            url = svc.validate_audio_url(item.audio_url)
        except ApiError as exc:
            raise ApiError(exc.status, exc.code, f"{where}.audio_url: {exc.message}") from None
        parts = urlsplit(url)
        try:
            host = (parts.scheme, parts.hostname or "", parts.port)
        except ValueError:
            raise ApiError(422, "invalid_request", f"{where}.audio_url: the port is not valid") from None
        if host not in checked:
            try:
                check_url(url, allow_private=settings.allow_private_urls)
            except UrlError as exc:
                code, status = (
                    ("url_not_allowed", 400) if exc.code == "url_forbidden" else ("invalid_request", 422)
                )
                raise ApiError(status, code, f"{where}.audio_url: {exc.message}") from None
            checked[host] = None
        if item.name:
            if _unsafe(item.name) or not clean_name(item.name):
                raise ApiError(422, "invalid_request", f"{where}.name must be a relative path without '..'")
            name = clean_name(item.name)
            if name in used:
                raise ApiError(422, "invalid_request", f"{where}.name {name!r} is used by another item")
        else:
            name = _unique(url_name(url), used | explicit)
        used.add(name)
        out.append((name, url, item.metadata))
    return out


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


def _job_options(options: BatchOptions, **extra: Any) -> JobOptions:
    return JobOptions(
        channels=options.channels,
        decoder=options.decoder,
        priority=options.priority,
        webhook_url=options.webhook_url if options.item_webhooks else None,
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


def create_batch(
    db: Session,
    caller: Caller,
    sub: Submission,
    build: Callable[[uuid.UUID], tuple[list[Job], list[dict[str, str]], int, list[Item]]],
    settings: Settings,
) -> tuple[Batch, bool]:
    """Insert the batch and its jobs in one transaction, commit, enqueue; ``(batch, created)``.

    ``build(batch_id)`` makes the job rows (extracting, scanning or checking URLs):
    ``(jobs, skipped, items, files to remove if the batch is not created)``. With an
    Idempotency-Key already used for the same request, the earlier batch comes back instead."""
    existing = idempotent_match(db, caller, sub.idempotency_key, sub.digest, settings)
    if existing is not None:
        db.commit()
        return existing, False
    batch_id = uuid.uuid4()
    jobs, skipped, items, files = build(batch_id)
    batch = Batch(
        id=batch_id,
        tenant_id=caller.tenant_id,
        name=sub.options.name,
        source=sub.source,
        status="queued",
        options={
            "channels": sub.options.channels,
            "decoder": sub.options.decoder,
            "priority": sub.options.priority,
            "item_webhooks": sub.options.item_webhooks,
        },
        skipped=skipped,
        items=items,
        webhook_url=sub.options.webhook_url,
        idempotency_key=sub.idempotency_key,
        request_hash=sub.digest,
    )
    try:
        db.add(batch)
        db.flush()  # the batch row first: the jobs' foreign key points at it
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


def _error(code: str | None, message: str | None) -> dict[str, str] | None:
    return {"code": code, "message": message or ""} if code else None


def list_items(
    db: Session, batch: Batch, limit: int, cursor: str | None, status: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the batch's items (names), by name, in SQL: a job's names are unnested from
    ``options->'batch_names'``; only ``limit + 1`` rows are read. ``status``: only items whose job
    is in it (e.g. the failed ones of a 10 000-recording batch)."""
    names = func.jsonb_array_elements_text(Job.options["batch_names"]).table_valued("name").lateral("n")
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
            "error": _error(r.error_code, r.error_message),
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
    jobs = db.execute(select(Job.id, Job.audio_path).where(Job.batch_id == batch.id)).all()
    db.execute(delete(Job).where(Job.batch_id == batch.id))
    db.execute(delete(Batch).where(Batch.id == batch.id))
    db.commit()
    root = settings.audio_path.resolve()
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


# -- results, streamed ------------------------------------------------------------------------------

PAGE = 50
ZIP_FORMATS = ("json", "txt", "srt", "vtt")  # the default of ?formats= for format=zip


def parse_formats(value: str | None) -> tuple[str, ...]:
    """``json,srt`` -> ("json", "srt"); 422 ``invalid_request`` for an unknown one."""
    if value is None or not value.strip():
        return ZIP_FORMATS
    wanted = [f.strip().lower() for f in value.split(",") if f.strip()]
    unknown = [f for f in wanted if f not in FORMATS]
    if unknown:
        raise ApiError(
            422, "invalid_request", f"unknown format {unknown[0]!r} in formats: use {', '.join(FORMATS)}"
        )
    return tuple(dict.fromkeys(wanted))


def _pages(settings: Settings, batch_id: uuid.UUID) -> Iterator[list[Job]]:
    """The batch's jobs by name, ``PAGE`` at a time (keyset pages), each with its transcript, in
    a session of the stream's own (the request's is closed while the body streams)."""
    session = sessionmaker_for(settings.database_url)()
    name = Job.options["batch_name"].as_string()
    last: tuple[str, uuid.UUID] | None = None
    try:
        while True:
            query = select(Job, name).where(Job.batch_id == batch_id).options(selectinload(Job.transcript))
            if last is not None:
                query = query.where(tuple_(name, Job.id) > tuple_(*last))
            rows = session.execute(query.order_by(name, Job.id).limit(PAGE)).all()
            if not rows:
                return
            yield [r[0] for r in rows]
            last = (rows[-1][1], rows[-1][0].id)
            session.expunge_all()
            if len(rows) < PAGE:
                return
    finally:
        session.close()


def _names(job: Job) -> list[str]:
    return list(job.options.get("batch_names") or [job.options.get("batch_name", "")])


def _result_records(settings: Settings, batch_id: uuid.UUID) -> Iterator[tuple[Job, dict[str, Any]]]:
    """One record per item name, with its job."""
    for page in _pages(settings, batch_id):
        for job in page:
            phrases = job.transcript.phrases if job.status == "completed" and job.transcript else []
            for name in _names(job):
                yield (
                    job,
                    {
                        "name": name,
                        "job_id": str(job.id),
                        "status": job.status,
                        "error": _error(job.error_code, job.error_message),
                        "metadata": job.client_metadata,
                        "duration": job.duration,
                        "phrases": phrases,
                    },
                )


@dataclass(frozen=True)
class ResultsRequest:
    """What a results stream needs, copied out of the request's session (closed while it streams)."""

    batch_id: uuid.UUID
    skipped: list[dict[str, Any]]
    formats: tuple[str, ...] = ZIP_FORMATS


def stream_jsonl(settings: Settings, req: ResultsRequest) -> Iterator[bytes]:
    for _, rec in _result_records(settings, req.batch_id):
        yield (json.dumps(rec, ensure_ascii=False) + "\n").encode()


def stream_csv(settings: Settings, req: ResultsRequest) -> Iterator[bytes]:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["name", "job_id", "channel", "start", "end", "text"])
    for _, rec in _result_records(settings, req.batch_id):
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


def output_name(name: str, fmt: str, used: set[str]) -> str:
    """``calls/a.wav`` -> ``calls/a.srt``; ``calls/a.wav.srt`` when ``calls/a.mp3`` took that."""
    path = PurePosixPath(name)
    candidate = str(path.with_suffix(f".{fmt}")) if path.suffix else f"{name}.{fmt}"
    if candidate in used:
        candidate = f"{name}.{fmt}"
    n = 2
    base = candidate
    while candidate in used:
        candidate = f"{base[: -len(fmt) - 1]}~{n}.{fmt}"
        n += 1
    used.add(candidate)
    return candidate


ERRORS_CSV = "errors.csv"
RESULTS_JSONL = "results.jsonl"


def stream_zip(settings: Settings, req: ResultsRequest) -> Iterator[bytes]:
    """Per completed recording one file per format (as GET /v1/jobs/{id}/transcript renders it),
    named after its path; then ``results.jsonl`` (the jsonl results) and ``errors.csv`` (every
    item without a transcript, with its reason, and the skipped entries). Written as it is read."""
    sink = _Sink()
    used = {ERRORS_CSV, RESULTS_JSONL}
    errors = io.StringIO()
    writer = csv.writer(errors)
    writer.writerow(["name", "job_id", "status", "code", "message"])
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as zf:  # type: ignore[call-overload]
        for job, rec in _result_records(settings, req.batch_id):
            if rec["status"] != "completed" or job.transcript is None:
                error = rec["error"] or {}
                message = error.get("message") or (
                    "not finished yet" if rec["status"] in ("queued", "processing") else ""
                )
                writer.writerow([rec["name"], rec["job_id"], rec["status"], error.get("code", ""), message])
                continue
            for fmt in req.formats:
                body, _ = svc.render_transcript(job, fmt)
                zf.writestr(output_name(rec["name"], fmt, used), body)
            yield sink.take()
        with zf.open(RESULTS_JSONL, "w") as out:
            for piece in stream_jsonl(settings, req):
                out.write(piece)
                yield sink.take()
        for entry in req.skipped:
            writer.writerow([entry.get("name", ""), "", "skipped", entry.get("reason", ""), ""])
        zf.writestr(ERRORS_CSV, errors.getvalue())
    yield sink.take()
