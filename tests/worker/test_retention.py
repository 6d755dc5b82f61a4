"""Retention (worker/retention.py) against the real database: what ended before the limits goes,
with its stored audio; what is recent, still running, or a customer's own file stays."""

from __future__ import annotations

import os
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import select

from shared.db.models import Batch, Job, Transcript, TranscriptPhrase
from shared.db.session import session_scope
from shared.platform.keys import get_or_create_tenant
from shared.platform.search import after_transcript_stored
from shared.platform.settings import Settings
from worker.retention import expire, sweep_strays


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


def test_the_stray_files_a_dead_process_left_are_removed_and_nothing_else(
    servers: dict[str, str], tmp_path: Path
) -> None:
    """What an API killed mid-request leaves (a ``.part``, a tar.gz's sidecar, a recording whose job
    was never committed, a received archive never handed on, a kept archive no batch reads, a
    playback copy of a removed recording) goes once untouched for ``TONE_STRAY_FILE_HOURS``; a
    recording a job names (whatever folder its path spells), a batch's kept archive, recent files,
    files not named as the platform names them and another folder's files stay."""
    db = servers["DATABASE_URL"]
    settings = Settings(database_url=db, data_dir=tmp_path / "data", stray_file_hours=2)  # type: ignore[call-arg]
    audio = settings.audio_path
    (audio / "batches").mkdir(parents=True)
    (audio / ".playback").mkdir()
    (tmp_path / "elsewhere").mkdir()
    day_ago = time.time() - 86400

    def made(relative: str, old: bool = True, root: Path = audio) -> Path:
        path = root / relative
        path.write_bytes(b"x")
        if old:
            os.utime(path, (day_ago, day_ago))
        return path

    with session_scope(db) as s:
        tenant = get_or_create_tenant(s, f"strays-{uuid.uuid4().hex[:6]}")
        batch = Batch(
            tenant_id=tenant.id, source="archive", status="preparing", items=0, skipped=[], options={}
        )
        s.add(batch)
        s.flush()
        read = made(f"batches/{batch.id}.archive")
        batch.options = {"archive": str(read)}
        named = made(f"{uuid.uuid4()}.wav")  # a job's recording, its path spelt from another folder
        s.add(Job(tenant_id=tenant.id, status="completed", audio_path=f"/mnt/other/audio/{named.name}"))
        named_here = made(f"{uuid.uuid4()}.audio")  # a URL job's download
        s.add(Job(tenant_id=tenant.id, status="queued", audio_path=str(named_here)))
    orphan = made(f"{uuid.uuid4()}.mp3")
    gone = [
        made(f"{uuid.uuid4()}.wav.part"),  # a job's upload
        made(f"batches/{uuid.uuid4()}.upload.part"),  # an archive's upload
        made(f"batches/{uuid.uuid4()}.upload.part.tar"),  # its sidecar
        made(f"batches/{uuid.uuid4()}.upload"),  # received, never handed on
        made(f"batches/{uuid.uuid4()}.archive"),  # kept, its batch gone
        made(".playback/removed.wav.mp3"),  # a copy whose recording is gone
        made(".playback/.tmp-abc.mp3"),  # a copy being made when its process died
        orphan,  # stored or extracted, its job never committed
        made(f".playback/{orphan.name}.mp3"),  # and its copy, in the same run
        made(f"{uuid.uuid4()}.redacted.wav"),  # a redacted copy its worker never stored
        made(str(uuid.uuid4())),  # an upload with no usable suffix
    ]
    stay = [
        read,
        named,
        named_here,
        made(f"{uuid.uuid4()}.wav", old=False),  # stored just now, its job not committed yet
        made("recording.wav"),  # not a name the platform gives (old, no job): never touched
        made(f"{uuid.uuid4()}-notes.txt"),
        made(f"{uuid.uuid4()}.wav", root=tmp_path / "elsewhere"),
        made(".playback/recording.wav.mp3"),  # its copy
        made(f".playback/{named.name}.mp3"),
        made(f"{uuid.uuid4()}.wav.part", old=False),  # an upload going on now
        made(f"batches/{uuid.uuid4()}.upload.part.tar", old=False),
        made("x.part", root=tmp_path / "elsewhere"),  # not the audio directory
    ]
    removed = sweep_strays(settings)
    assert [p.name for p in gone if p.exists()] == []
    assert [p.name for p in stay if not p.exists()] == []
    assert removed == len(gone)
    assert sweep_strays(settings) == 0  # nothing more: a second run finds none
