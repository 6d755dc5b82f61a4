"""Retention: beat's ``tone.retention`` deletes what a call center may not keep forever.

``TONE_RETENTION_DAYS``: jobs (with their transcripts, deliveries and stored audio) and batches that
ended longer ago are deleted. ``TONE_AUDIO_RETENTION_DAYS``: the stored audio of jobs that ended
longer ago is deleted and the job keeps its transcript (``GET /v1/jobs/{id}/audio`` then answers
404 ``audio_not_available``). Unset: kept. Only files under the platform's audio directory are ever
removed (a server folder's recordings are the customer's). Work goes in chunks, so a first run
over a large backlog does not hold long locks.

Every run also removes what a process that died mid-request left in the audio directory
(:func:`sweep_strays`): files no request, job or batch will ever finish or read, once untouched
for ``TONE_STRAY_FILE_HOURS``.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import Text, delete, exists, literal_column, select, update

from shared.db.models import AUDIO_NAME_SQL, FINAL_STATUSES, Batch, Job
from shared.db.session import rowcount, session_scope
from shared.platform import received_files
from shared.platform.playback_cache import FOLDER as PLAYBACK_FOLDER
from shared.platform.playback_cache import remove_copies
from shared.platform.settings import Settings, get_settings
from shared.queue import RETENTION_TASK
from worker.celery_app import app

log = logging.getLogger(__name__)

CHUNK = 1000
_NO_SYNC = {"synchronize_session": False}


def _remove(paths: list[str | None], settings: Settings) -> None:
    root = settings.audio_path.resolve()
    for path in paths:
        if path and Path(path).resolve().is_relative_to(root):
            Path(path).unlink(missing_ok=True)
            remove_copies(path)


def _before(days: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(days=days)


def expire(settings: Settings | None = None) -> dict[str, int]:
    """One pass: delete what is past its retention. Returns how many jobs, batches and audio files."""
    s = settings or get_settings()
    done = {"jobs": 0, "batches": 0, "audio": 0}
    final = Job.status.in_(list(FINAL_STATUSES))
    if s.retention_days is not None:
        cutoff = _before(s.retention_days)
        while True:
            with session_scope(s.database_url) as db:
                rows = db.execute(
                    select(Job.id, Job.audio_path).where(final, Job.finished_at < cutoff).limit(CHUNK)
                ).all()
                db.execute(delete(Job).where(Job.id.in_([r.id for r in rows])), execution_options=_NO_SYNC)
            _remove([r.audio_path for r in rows], s)
            done["jobs"] += len(rows)
            if len(rows) < CHUNK:
                break
        with session_scope(s.database_url) as db:  # batches that ended and have no job left
            done["batches"] = rowcount(
                db.execute(
                    delete(Batch).where(Batch.finished_at < cutoff, ~exists().where(Job.batch_id == Batch.id))
                )
            )
    if s.audio_retention_days is not None:
        cutoff = _before(s.audio_retention_days)
        while True:
            with session_scope(s.database_url) as db:
                rows = db.execute(
                    select(Job.id, Job.audio_path)
                    .where(final, Job.finished_at < cutoff, Job.audio_path.is_not(None))
                    .limit(CHUNK)
                    .with_for_update(skip_locked=True)
                ).all()
                ids = [r.id for r in rows]
                db.execute(
                    update(Job).where(Job.id.in_(ids)).values(audio_path=None), execution_options=_NO_SYNC
                )
            _remove([r.audio_path for r in rows], s)
            done["audio"] += len(rows)
            if len(rows) < CHUNK:
                break
    if any(done.values()):
        log.info("retention: deleted %(jobs)d jobs, %(batches)d batches, the audio of %(audio)d jobs", done)
    return done


# an upload being written, a compressed tar's sidecar beside it (shared.platform.received_files)
PARTIAL_SUFFIXES = (received_files.PARTIAL, received_files.PARTIAL + received_files.SIDECAR)


def _old_files(folder: Path, before: float) -> list[os.DirEntry[str]]:
    """The regular files directly in ``folder`` last written before ``before`` (none: no folder)."""
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError:
        return []
    out = []
    for e in entries:
        try:
            if e.is_file(follow_symlinks=False) and e.stat(follow_symlinks=False).st_mtime < before:
                out.append(e)
        except OSError:  # gone meanwhile
            continue
    return out


def _kept_archives(settings: Settings) -> set[str]:
    """The names of the archives batches still read (``options.archive``)."""
    with session_scope(settings.database_url) as db:
        archive = Batch.options["archive"].as_string()
        return {Path(a).name for a in db.scalars(select(archive).where(archive.is_not(None))) if a}


def _is_recording(name: str) -> bool:
    """A name the platform gives a stored recording: ``<uuid>`` and a suffix (``.wav``, ``.audio``,
    ``.redacted.wav``, …; ``api.uploads.audio_file_path``, ``worker.jobs``)."""
    try:
        uuid.UUID(name[:36])
    except ValueError:
        return False
    return len(name) == 36 or name[36] == "."


def _unnamed(names: list[str], settings: Settings) -> set[str]:
    """Those of ``names`` (recordings' file names) that no job names as its recording, in any folder
    (by the index ``ix_jobs_audio_name``, so another process's spelling of the folder does not count)."""
    audio_name = literal_column(AUDIO_NAME_SQL, Text)
    named: set[str] = set()
    with session_scope(settings.database_url) as db:
        for i in range(0, len(names), CHUNK):
            chunk = names[i : i + CHUNK]
            named.update(db.scalars(select(audio_name).select_from(Job).where(audio_name.in_(chunk))))
    return set(names) - named


def _unlink(files: list[os.DirEntry[str]]) -> int:
    removed = 0
    for e in files:
        try:
            os.unlink(e.path)
            removed += 1
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("a stray file could not be removed: %s: %s", e.path, exc.strerror)
    return removed


def sweep_strays(settings: Settings | None = None, now: float | None = None) -> int:
    """Remove what a process that died mid-request left in the audio directory, untouched for
    ``TONE_STRAY_FILE_HOURS`` (a live upload writes its file as its bytes arrive): an upload's
    ``.part`` and a compressed tar's sidecar (an API killed mid-upload); a recording no job names (an
    API killed after it stored an upload or extracted an archive's entry and before its job was
    committed, a worker killed after it downloaded a URL or wrote a redacted copy and before it
    stored the new path); a received archive never handed on (``batches/*.upload``) or kept with no
    batch left to read it (``batches/*.archive``); a playback copy, or its temporary file, whose
    recording is gone. Only those names, and only in the audio directory and its ``batches`` folder
    (a recording's name is a UUID and a suffix: no other file there is touched). Returns how many
    files were removed."""
    s = settings or get_settings()
    before = (time.time() if now is None else now) - s.stray_file_hours * 3600
    root = s.audio_path
    stray: list[os.DirEntry[str]] = []
    recordings: list[os.DirEntry[str]] = []
    for e in _old_files(root, before):
        if e.name.endswith(PARTIAL_SUFFIXES):
            stray.append(e)
        elif _is_recording(e.name):
            recordings.append(e)
    if recordings:
        unnamed = _unnamed([e.name for e in recordings], s)
        stray += [e for e in recordings if e.name in unnamed]
    received = _old_files(root / received_files.ARCHIVES, before)
    stray += [e for e in received if e.name.endswith((*PARTIAL_SUFFIXES, received_files.UPLOAD))]
    archives = [e for e in received if e.name.endswith(received_files.KEPT)]
    if archives:
        kept = _kept_archives(s)
        stray += [e for e in archives if e.name not in kept]
    removed = _unlink(stray)
    # last, so a recording removed above loses its copies in the same run: <recording name>.<ext>;
    # a copy being made (.tmp-*.<ext>) has no recording of that name either
    copies = [
        e
        for e in _old_files(root / PLAYBACK_FOLDER, before)
        if not (root / e.name.rsplit(".", 1)[0]).exists()
    ]
    removed += _unlink(copies)
    stray += copies
    if removed:
        log.info("retention: removed %d stray files a stopped process left: %s", removed,
                 ", ".join(e.name for e in stray[:5]) + (" …" if len(stray) > 5 else ""))  # fmt: skip
    return removed


@app.task(name=RETENTION_TASK, ignore_result=True, soft_time_limit=600, time_limit=660)
def retention() -> dict[str, int]:
    done = expire()
    done["stray_files"] = sweep_strays()
    return done
