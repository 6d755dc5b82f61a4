"""Retention: beat's ``tone.retention`` deletes what a call center may not keep forever.

``TONE_RETENTION_DAYS``: jobs (with their transcripts, deliveries and stored audio) and batches that
ended longer ago are deleted. ``TONE_AUDIO_RETENTION_DAYS``: the stored audio of jobs that ended
longer ago is deleted and the job keeps its transcript (``GET /v1/jobs/{id}/audio`` then answers
404 ``audio_not_available``). Unset: kept. Only files under the platform's audio directory are ever
removed (a server folder's recordings are the customer's). Work goes in chunks, so a first run
over a large backlog does not hold long locks.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import delete, exists, select, update

from shared.db.models import FINAL_STATUSES, Batch, Job
from shared.db.session import rowcount, session_scope
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


@app.task(name=RETENTION_TASK, ignore_result=True, soft_time_limit=600, time_limit=660)
def retention() -> dict[str, int]:
    return expire()
