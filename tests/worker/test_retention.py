"""Retention (worker/retention.py) against the real database: what ended before the limits goes,
with its stored audio; what is recent, still running, or a customer's own file stays."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import select

from shared.db.models import Batch, Job, Transcript, TranscriptPhrase
from shared.db.session import session_scope
from shared.platform.keys import get_or_create_tenant
from shared.platform.search import after_transcript_stored
from shared.platform.settings import Settings
from worker.retention import expire


def test_retention_deletes_old_jobs_and_batches_and_old_audio_only(
    servers: dict[str, str], tmp_path: Path
) -> None:
    db = servers["DATABASE_URL"]
    settings = Settings(
        database_url=db, data_dir=tmp_path / "data", retention_days=30, audio_retention_days=7
    )  # type: ignore[call-arg]
    audio = settings.audio_path
    audio.mkdir(parents=True)
    customer = tmp_path / "customer-folder"
    customer.mkdir()
    now = datetime.now(timezone.utc)

    def stored(name: str, folder: Path = audio) -> Path:
        path = folder / f"{name}.wav"
        path.write_bytes(b"RIFF")
        return path

    files = {
        "old": stored("old"),
        "week_old": stored("week_old"),
        "recent": stored("recent"),
        "running": stored("running"),
        "folder": stored("folder", customer),
    }
    with session_scope(db) as s:
        tenant = get_or_create_tenant(s, f"retention-{uuid.uuid4().hex[:6]}")
        old_batch = Batch(tenant_id=tenant.id, source="archive", status="completed", items=1, skipped=[],
                          options={}, finished_at=now - timedelta(days=40))  # fmt: skip
        s.add(old_batch)
        s.flush()

        def job(name: str, status: str, days: float, **extra: object) -> uuid.UUID:
            row = Job(tenant_id=tenant.id, status=status, queue="cpu", audio_path=str(files[name]),
                      finished_at=now - timedelta(days=days) if status == "completed" else None,
                      created_at=now - timedelta(days=days), **extra)  # fmt: skip
            s.add(row)
            s.flush()
            if status == "completed":
                phrases = [{"text": "ваш договор", "start_time": 0.1, "end_time": 0.9, "channel": 0}]
                s.add(Transcript(job_id=row.id, phrases=phrases, full_text=name, duration=1.0))
                s.flush()
                after_transcript_stored(s, row.id, tenant.id, phrases, 1.0, 1)  # indexed, as the worker does
            return row.id

        ids = {
            "old": job("old", "completed", 40, batch_id=old_batch.id),
            "week_old": job("week_old", "completed", 10),
            "recent": job("recent", "completed", 1),
            "running": job("running", "processing", 40),
            "folder": job("folder", "completed", 10, source="directory"),
        }
        batch_id, tenant_id = old_batch.id, tenant.id

    done = expire(settings)
    assert done["jobs"] >= 1 and done["batches"] >= 1 and done["audio"] >= 2

    with session_scope(db) as s:
        left = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(list(ids.values()))))}
        assert ids["old"] not in left and s.get(Batch, batch_id) is None
        assert s.get(Transcript, ids["old"]) is None
        indexed = set(
            s.scalars(select(TranscriptPhrase.job_id).where(TranscriptPhrase.tenant_id == tenant_id))
        )
        assert ids["old"] not in indexed and ids["week_old"] in indexed  # the search index goes with the job
        assert left[ids["week_old"]].audio_path is None and s.get(Transcript, ids["week_old"]) is not None
        assert left[ids["recent"]].audio_path == str(files["recent"])
        assert left[ids["running"]].audio_path == str(files["running"])  # not ended: left alone
        assert left[ids["folder"]].audio_path is None
    assert not files["old"].exists() and not files["week_old"].exists()
    assert files["recent"].exists() and files["running"].exists()
    assert files["folder"].exists()  # the customer's own recording is never removed
    assert expire(settings)["audio"] == 0  # nothing left to do
