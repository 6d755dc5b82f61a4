"""A large server folder read in the background (``api.services.batch_intake``), against the real
stack: the answer comes at once in status ``preparing``, the result is the folder read in the
request's, a reader that died is taken over without a file read twice, a cancel or a DELETE while
preparing stops it, and a reader whose batch was taken over writes nothing."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from api.services import batch_intake
from shared.db.models import ApiKey, Batch, Job
from shared.db.session import session_scope
from shared.platform.keys import key_prefix
from shared.platform.settings import Settings
from tests.api.test_api import auth
from tests.api.test_batch_sources import (  # noqa: F401
    audio,
    batch_root,
    offline,
    post_archive,
    post_json,
    wait_batch,
    zip_bytes,
)
from tests.conftest import Proc, make_key, start_api

STALE = 2.0  # the test API takes a silent reader's batch over after this (its sweep: every 1 s)
OPTIONS = {
    "channels": "split",
    "decoder": "auto",
    "priority": 2,
    "item_webhooks": False,
    "directory": "calls",
}


@pytest.fixture(scope="module")
def reading_api(platform_env: dict[str, str], logs: Path, batch_root: Path) -> Iterator[Proc]:  # noqa: F811
    """An API that reads any folder of more than one recording in the background, one file per
    transaction (so a copy is found in a later chunk than its original)."""
    env = {
        **platform_env,
        "TONE_BATCH_ROOT": str(batch_root),
        "TONE_BATCH_INLINE_FILES": "1",
        "TONE_BATCH_INTAKE_CHUNK": "1",
        "TONE_BATCH_INTAKE_STALE_SECONDS": str(STALE),
    }
    proc = start_api(env, logs, "api-batch-reading")
    yield proc
    proc.stop()


def _tenant(servers: dict[str, str], key: str) -> uuid.UUID:
    with session_scope(servers["DATABASE_URL"]) as s:
        tenant = s.scalar(select(ApiKey.tenant_id).where(ApiKey.prefix == key_prefix(key)))
        assert tenant is not None
        return tenant


def _preparing(
    servers: dict[str, str], key: str, beat: datetime | None, archive: Path | None = None, **values: Any
) -> uuid.UUID:
    """A preparing batch of ``calls/`` (or of a kept ``archive``) as a request would have left it,
    its reader's beat ``beat``."""
    batch_id = uuid.uuid4()
    options = dict(OPTIONS) if archive is None else {**OPTIONS, "directory": None, "archive": str(archive)}
    options = {k: v for k, v in options.items() if v is not None}
    with session_scope(servers["DATABASE_URL"]) as s:
        s.add(
            Batch(
                id=batch_id,
                tenant_id=_tenant(servers, key),
                source="directory" if archive is None else "archive",
                status="preparing",
                options=options,
                skipped=[],
                items=values.pop("items", 0),
                prepared_beat_at=beat,
                **values,
            )
        )
    return batch_id


def _add_job(servers: dict[str, str], key: str, batch_id: uuid.UUID, path: Path, **values: Any) -> None:
    """A job of the batch named a.wav, as a reader would have left it."""
    with session_scope(servers["DATABASE_URL"]) as s:
        s.add(
            Job(
                tenant_id=_tenant(servers, key),
                batch_id=batch_id,
                options={"channels": "split", "batch_name": "a.wav", "batch_names": ["a.wav"]},
                audio_path=str(path),
                **values,
            )
        )


def _stale(servers: dict[str, str], batch_id: uuid.UUID) -> None:
    """The batch's reader gone an hour ago (its beat stale): the sweep takes it from here. Set once
    the test's rows are all written, so that no sweep sees the batch half made."""
    with session_scope(servers["DATABASE_URL"]) as s:
        batch = s.get(Batch, batch_id)
        assert batch is not None
        batch.prepared_beat_at = datetime.now(timezone.utc) - timedelta(hours=1)


def _jobs(servers: dict[str, str], batch_id: uuid.UUID | str) -> dict[str, list[str]]:
    """The batch's jobs: their first name -> every name they hold."""
    with session_scope(servers["DATABASE_URL"]) as s:
        rows = s.scalars(select(Job).where(Job.batch_id == uuid.UUID(str(batch_id)))).all()
        return {r.options["batch_name"]: r.options["batch_names"] for r in rows}


def test_a_large_folder_answers_at_once_and_reads_as_the_request_would(
    reading_api: Proc,
    worker: Proc,
    servers: dict[str, str],
    offline: dict[str, Any],  # noqa: F811
) -> None:
    key = make_key(servers, f"reading-{uuid.uuid4().hex[:6]}")
    got = post_json(reading_api.url, key, {"directory": "calls", "name": "all of May"})
    assert got.status_code == 202, got.text
    body = got.json()
    assert (body["status"], body["jobs"], body["items"], body["progress"]) == ("preparing", 0, 0, 0.0)
    assert body["finished_at"] is None
    view = wait_batch(reading_api.url, key, body["id"])
    assert (view["status"], view["items"], view["jobs"]) == ("completed", 3, 2), view
    assert view["counts"]["completed"] == 2
    assert sorted(s["name"] for s in view["skipped"]) == ["link.wav", "notes.txt"]
    # copy.wav was read in a later transaction than a.wav: one more name of a.wav's job
    assert _jobs(servers, body["id"]) == {"a.wav": ["a.wav", "copy.wav"], "sub/b.wav": ["sub/b.wav"]}
    lines = httpx.get(f"{reading_api.url}/v1/batches/{body['id']}/results", headers=auth(key)).text
    by_name = {r["name"]: r for r in map(json.loads, lines.splitlines())}
    assert sorted(by_name) == ["a.wav", "copy.wav", "sub/b.wav"]
    assert by_name["a.wav"]["phrases"] == offline["a.wav"] == by_name["copy.wav"]["phrases"]
    assert by_name["sub/b.wav"]["phrases"] == offline["b.wav"]
    assert by_name["sub/b.wav"]["metadata"] == {"path": "sub/b.wav", "agent": "olga"}
    assert by_name["a.wav"]["metadata"] == {"path": "a.wav", "agent": "ivan"}


def test_a_batch_whose_reader_died_is_taken_over_and_no_file_is_read_twice(
    reading_api: Proc,
    worker: Proc,
    servers: dict[str, str],
    batch_root: Path,  # noqa: F811
) -> None:
    """The reader stopped (its API process died) after a.wav: the sweep takes the batch over, adds
    copy.wav to a.wav's job, reads sub/b.wav, and the batch ends."""
    key = make_key(servers, f"takeover-{uuid.uuid4().hex[:6]}")
    batch_id = _preparing(servers, key, datetime.now(timezone.utc), items=1)
    a = batch_root / "calls" / "a.wav"
    _add_job(
        servers,
        key,
        batch_id,
        a,
        status="completed",
        source="directory",
        sha256=hashlib.sha256(a.read_bytes()).hexdigest(),
        finished_at=datetime.now(timezone.utc),
    )
    _stale(servers, batch_id)  # only now: a sweep between the two rows would take over half a state
    view = wait_batch(reading_api.url, key, str(batch_id), timeout=60)
    assert (view["status"], view["items"], view["jobs"]) == ("completed", 3, 2), view
    assert _jobs(servers, batch_id) == {"a.wav": ["a.wav", "copy.wav"], "sub/b.wav": ["sub/b.wav"]}
    assert sorted(s["name"] for s in view["skipped"]) == ["link.wav", "notes.txt"]
    assert f"batch {batch_id}: its folder's reader stopped" in reading_api.log.read_text()


def test_an_archive_whose_upload_stopped_midway_is_removed_with_its_jobs(
    reading_api: Proc, servers: dict[str, str], tmp_path: Path
) -> None:
    """An API process died while a ZIP it was reading early was uploading (``receiving``, the
    beat stale): its client never got an answer, so the sweep removes the batch, its job and the
    job's extracted file."""
    key = make_key(servers, f"receiving-{uuid.uuid4().hex[:6]}")
    batch_id = _preparing(servers, key, datetime.now(timezone.utc))
    extracted = Path(servers["root"]) / "data" / "audio" / f"{uuid.uuid4()}.wav"
    extracted.parent.mkdir(parents=True, exist_ok=True)
    extracted.write_bytes(b"RIFF")
    with session_scope(servers["DATABASE_URL"]) as s:
        batch = s.get(Batch, batch_id)
        assert batch is not None
        batch.options = {**OPTIONS, "directory": None, "receiving": True}
    _add_job(servers, key, batch_id, extracted, status="processing", source="upload")
    _stale(servers, batch_id)
    deadline = datetime.now(timezone.utc) + timedelta(seconds=30)
    while _jobs(servers, batch_id) and datetime.now(timezone.utc) < deadline:
        time.sleep(0.2)
    with session_scope(servers["DATABASE_URL"]) as s:
        assert s.get(Batch, batch_id) is None
    assert _jobs(servers, batch_id) == {} and not extracted.exists()
    assert f"batch {batch_id}: its upload stopped before it ended: removed" in reading_api.log.read_text()


def test_a_cancel_while_preparing_ends_the_batch_with_no_job(
    reading_api: Proc, servers: dict[str, str]
) -> None:
    """A reader is alive elsewhere (a fresh beat) when the cancel comes; it never returns, so the
    sweep takes the batch over once the beat is stale, sees the cancel and ends it."""
    key = make_key(servers, f"cancel-{uuid.uuid4().hex[:6]}")
    batch_id = _preparing(servers, key, datetime.now(timezone.utc))
    answer = httpx.post(f"{reading_api.url}/v1/batches/{batch_id}/cancel", headers=auth(key), timeout=10)
    assert answer.status_code == 200, answer.text
    view = httpx.get(f"{reading_api.url}/v1/batches/{batch_id}", headers=auth(key), timeout=10).json()
    assert view["status"] == "cancelled" and view["finished_at"] is None  # ends when reading stops
    view = wait_batch(reading_api.url, key, str(batch_id), timeout=30)
    assert view["finished_at"] is not None and view["status"] == "cancelled", view
    assert view["jobs"] == 0 and _jobs(servers, batch_id) == {}


def test_a_reader_whose_batch_was_taken_over_or_deleted_writes_nothing(
    reading_api: Proc,
    servers: dict[str, str],
    batch_root: Path,  # noqa: F811
) -> None:
    settings = Settings(database_url=servers["DATABASE_URL"], batch_root=batch_root, batch_intake_chunk=1)
    key = make_key(servers, f"stale-{uuid.uuid4().hex[:6]}")
    now = datetime.now(timezone.utc)
    batch_id = _preparing(servers, key, now)
    batch_intake.prepare(batch_id, now - timedelta(seconds=5), settings)  # not its beat: taken over
    with session_scope(servers["DATABASE_URL"]) as s:
        row = s.get(Batch, batch_id)
        assert row is not None and (row.status, row.prepared_beat_at, row.items) == ("preparing", now, 0)
    assert _jobs(servers, batch_id) == {}

    assert (
        httpx.delete(f"{reading_api.url}/v1/batches/{batch_id}", headers=auth(key), timeout=10).status_code
        == 204
    )
    with session_scope(servers["DATABASE_URL"]) as s:
        before = s.scalar(select(func.count()).select_from(Job))
    batch_intake.prepare(batch_id, now, settings)  # its own beat, but the batch is gone
    with session_scope(servers["DATABASE_URL"]) as s:
        assert s.get(Batch, batch_id) is None
        assert s.scalar(select(func.count()).select_from(Job)) == before


# -- archives ----------------------------------------------------------------------------------------


def _kept(platform_env: dict[str, str], name: str) -> Path:
    return Path(platform_env["TONE_DATA_DIR"]) / "audio" / "batches" / name


def test_a_large_archive_answers_at_once_and_reads_as_the_request_would(
    reading_api: Proc,
    worker: Proc,
    servers: dict[str, str],
    platform_env: dict[str, str],
    audio: dict[str, Path],  # noqa: F811
    offline: dict[str, Any],  # noqa: F811
) -> None:
    key = make_key(servers, f"archive-{uuid.uuid4().hex[:6]}")
    a, b = audio["a.wav"].read_bytes(), audio["b.wav"].read_bytes()
    data = zip_bytes(
        {
            "calls/a.wav": a,
            "calls/copy.wav": a,
            "calls/notes.txt": b"not audio",
            "calls/sub/b.wav": b,
            "metadata.csv": b"path,agent\ncalls/sub/b.wav,olga\n",
        }
    )
    audio_dir = _kept(platform_env, "x").parent.parent
    before = set(audio_dir.glob("*.wav"))
    got = post_archive(reading_api.url, key, data)
    assert got.status_code == 202, got.text
    body = got.json()
    assert (body["status"], body["jobs"], body["source"]) == ("preparing", 0, "archive")
    view = wait_batch(reading_api.url, key, body["id"])
    assert (view["status"], view["items"], view["jobs"]) == ("completed", 3, 2), view
    assert [s["name"] for s in view["skipped"]] == ["calls/notes.txt"]
    assert _jobs(servers, body["id"]) == {
        "calls/a.wav": ["calls/a.wav", "calls/copy.wav"],
        "calls/sub/b.wav": ["calls/sub/b.wav"],
    }
    lines = httpx.get(f"{reading_api.url}/v1/batches/{body['id']}/results", headers=auth(key)).text
    by_name = {r["name"]: r for r in map(json.loads, lines.splitlines())}
    assert by_name["calls/copy.wav"]["phrases"] == offline["a.wav"] == by_name["calls/a.wav"]["phrases"]
    assert by_name["calls/sub/b.wav"]["phrases"] == offline["b.wav"]
    assert by_name["calls/sub/b.wav"]["metadata"] == {"path": "calls/sub/b.wav", "agent": "olga"}
    assert not _kept(platform_env, f"{body['id']}.archive").exists()  # removed once read
    with session_scope(servers["DATABASE_URL"]) as s:
        paths = set(s.scalars(select(Job.audio_path).where(Job.batch_id == uuid.UUID(body["id"]))))
    # the copy's extracted file was removed: the only new recordings are the two jobs'
    assert {str(f) for f in set(audio_dir.glob("*.wav")) - before} == paths


def test_a_metadata_csv_that_is_no_csv_table_costs_the_metadata_not_the_batch(
    reading_api: Proc,
    worker: Proc,
    servers: dict[str, str],
    audio: dict[str, Path],  # noqa: F811
) -> None:
    """Read in the background: binary bytes named metadata.csv (Python's CSV reader refuses them;
    the reading stopped at a 500-style failure and was taken over again and again before): the
    recordings are read, metadata.csv is one skip with its reason, said once."""
    key = make_key(servers, f"meta-{uuid.uuid4().hex[:6]}")
    a, b = audio["a.wav"].read_bytes(), audio["b.wav"].read_bytes()
    junk = b"path,agent\n" + b"a\rb" * 10 + bytes(range(256)) * 4
    got = post_archive(reading_api.url, key, zip_bytes({"a.wav": a, "b.wav": b, "metadata.csv": junk}))
    assert got.status_code == 202, got.text
    view = wait_batch(reading_api.url, key, got.json()["id"])
    assert (view["status"], view["jobs"]) == ("completed", 2), view
    assert [(s["name"], s["reason"].split(":")[0]) for s in view["skipped"]] == [
        ("metadata.csv", "invalid_metadata")
    ]
    assert "cannot be read as a CSV table" in view["skipped"][0]["reason"]


@pytest.mark.parametrize("how", ["cancel", "delete"])
def test_a_kept_archive_is_removed_when_its_batch_is_cancelled_or_deleted(
    reading_api: Proc,
    servers: dict[str, str],
    platform_env: dict[str, str],
    audio: dict[str, Path],  # noqa: F811
    how: str,
) -> None:
    key = make_key(servers, f"kept-{how}-{uuid.uuid4().hex[:6]}")
    kept = _kept(platform_env, f"test-{uuid.uuid4()}.archive")
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_bytes(zip_bytes({"a.wav": audio["a.wav"].read_bytes(), "b.wav": audio["b.wav"].read_bytes()}))
    batch_id = _preparing(servers, key, datetime.now(timezone.utc), archive=kept)  # its reader: elsewhere
    if how == "delete":
        answer = httpx.delete(f"{reading_api.url}/v1/batches/{batch_id}", headers=auth(key), timeout=10)
        assert answer.status_code == 204
        assert not kept.exists()
        return
    answer = httpx.post(f"{reading_api.url}/v1/batches/{batch_id}/cancel", headers=auth(key), timeout=10)
    assert answer.status_code == 200, answer.text
    assert kept.exists()  # until the reading stops: here when the sweep takes the silent reader over
    view = wait_batch(reading_api.url, key, str(batch_id), timeout=30)
    assert (view["status"], view["jobs"]) == ("cancelled", 0) and view["finished_at"], view
    assert not kept.exists()


def test_a_failure_that_would_repeat_ends_the_reading_with_its_reason(
    servers: dict[str, str],
    platform_env: dict[str, str],
    audio: dict[str, Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """In-process, the reader alone: the disk fills while the second entry of a kept archive is
    written out. The batch is not left preparing (a later reader would fail the same way): it is
    queued with the job it has and the entry where reading stopped, and the archive is removed."""
    from api.services import batch_sources as sources

    settings = Settings(
        database_url=servers["DATABASE_URL"], data_dir=tmp_path, batch_intake_chunk=1, batch_inline_files=0
    )
    kept = settings.audio_path / "batches" / f"{uuid.uuid4()}.archive"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(zip_bytes({"a.wav": audio["a.wav"].read_bytes(), "b.wav": audio["b.wav"].read_bytes()}))
    real = sources.extracted

    def full_disk(settings: Settings) -> Any:
        place = real(settings)

        def once(entry: sources.Entry, name: str) -> Any:
            if name == "b.wav":
                raise OSError(28, "No space left on device")
            return place(entry, name)

        return once

    monkeypatch.setattr(sources, "extracted", full_disk)
    queued: list[str] = []
    monkeypatch.setattr(batch_intake.svc, "enqueue", lambda job: queued.append(str(job.id)))
    key = make_key(servers, f"full-{uuid.uuid4().hex[:6]}")
    now = datetime.now(timezone.utc)
    batch_id = _preparing(servers, key, now, archive=kept)
    batch_intake.prepare(batch_id, now, settings)
    with session_scope(servers["DATABASE_URL"]) as s:
        row = s.get(Batch, batch_id)
        assert row is not None and (row.status, row.prepared_beat_at, row.items) == ("queued", None, 1)
        assert [(x["name"], x["reason"].split(":")[0]) for x in row.skipped] == [("b.wav", "internal_error")]
        assert "No space left" in row.skipped[0]["reason"]
    assert list(_jobs(servers, batch_id)) == ["a.wav"] and len(queued) == 1
    assert not kept.exists()


def test_a_chunk_ends_at_its_count_or_a_gibibyte() -> None:
    def entry(name: str, size: int) -> Any:
        from api.services.batch_sources import Entry

        return Entry(name, size, None, "file", lambda: None)  # type: ignore[arg-type,return-value]

    gib = batch_intake.CHUNK_BYTES
    sizes = [10, 10, 10, 10, 10, gib - 5, gib + 7, 1, 1]
    chunks = list(batch_intake._chunks([entry(str(i), n) for i, n in enumerate(sizes)], 3))
    assert [[e.name for e in c] for c in chunks] == [["0", "1", "2"], ["3", "4"], ["5"], ["6"], ["7", "8"]]


def test_a_reader_stopping_with_its_api_hands_the_batch_on(
    servers: dict[str, str],
    batch_root: Path,  # noqa: F811
) -> None:
    """In-process: the API's shutdown (``stop_readers``) makes a reader release its batch at its next
    chunk (no job made, the beat cleared), so that the next sweep takes it over at once."""
    settings = Settings(database_url=servers["DATABASE_URL"], batch_root=batch_root, batch_intake_chunk=1)
    key = make_key(servers, f"stopping-{uuid.uuid4().hex[:6]}")
    now = datetime.now(timezone.utc)
    # finished_at set: the sweep of this module's API (which takes released batches) leaves it be
    batch_id = _preparing(servers, key, now, finished_at=now)
    batch_intake.stop_readers()
    try:
        batch_intake.prepare(batch_id, now, settings)
    finally:
        batch_intake._stopping.clear()
    with session_scope(servers["DATABASE_URL"]) as s:
        row = s.get(Batch, batch_id)
        assert row is not None and (row.status, row.prepared_beat_at, row.items) == ("preparing", None, 0)
    assert _jobs(servers, batch_id) == {}
