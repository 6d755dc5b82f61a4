"""The Celery worker against real Postgres, Redis and worker processes: claims, batching, progress,
cancel, bad audio, duplicates, and recovery from a worker killed mid-job (beat + leases).

Jobs are inserted with SQLAlchemy as the API would (row committed, then ``enqueue_transcription``)
on queues of this module's own, so that the session's other workers never take them.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from sqlalchemy import func, select, update

from shared.asr.engine import Recognizer
from shared.db.models import Job, Transcript
from shared.db.session import session_scope
from shared.dev.models.tones import synthesize
from shared.platform.keys import get_or_create_tenant
from shared.queue import EVENTS_QUEUE
from tests.conftest import KIT_AUDIO, Proc, start_beat, start_worker, wait_for, written

QUEUE = "worker-tests"  # the module's worker
KILL_QUEUE = "worker-kill-tests"  # the workers that get killed, and the beat's recoveries
LONG_MINUTES = 180  # ~7 s of work for the tone model on one thread: long enough to act mid-job
BAD_CODES = {
    "empty.wav": "empty_audio",
    "zero_samples.wav": "empty_audio",
    "truncated.wav": "corrupt_audio",
    "lying_header.wav": "corrupt_audio",
    "noise_bytes.wav": "unsupported_format",
    "text.mp3": "unsupported_format",
}


# -- helpers --------------------------------------------------------------------------------------


def new_job(
    db_url: str, audio: Path | str, *, queue: str = QUEUE, channels: str = "mix", **fields: Any
) -> str:
    """Insert a queued job as the API does and commit it; returns its id."""
    with session_scope(db_url) as session:
        tenant = get_or_create_tenant(session, "worker-tests")
        job = Job(
            tenant_id=tenant.id, queue=queue, options={"channels": channels}, source="upload",
            filename=Path(audio).name, audio_path=str(audio), enqueued_at=datetime.now(timezone.utc),
            **fields,
        )  # fmt: skip
        session.add(job)
        session.flush()
        return str(job.id)


def send(job_id: str, queue: str = QUEUE, priority: int = 5) -> None:
    from shared.queue import enqueue_transcription

    enqueue_transcription(job_id, queue=queue, priority=priority)


def submit(db_url: str, audio: Path | str, **kw: Any) -> str:
    job_id = new_job(db_url, audio, **kw)
    send(job_id, kw.get("queue", QUEUE))
    return job_id


def job_row(db_url: str, job_id: str) -> Job:
    with session_scope(db_url) as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        return job


def transcripts(db_url: str, job_id: str) -> list[Transcript]:
    with session_scope(db_url) as session:
        return list(session.scalars(select(Transcript).where(Transcript.job_id == uuid.UUID(job_id))))


def wait_status(db_url: str, job_id: str, statuses: set[str], proc: Proc | None, timeout: float = 30) -> Job:
    wait_for(lambda: job_row(db_url, job_id).status in statuses, f"job {job_id} {statuses}", proc, timeout)
    return job_row(db_url, job_id)


def log_lines(proc: Proc, needle: str) -> list[str]:
    return [line for line in proc.log.read_text(errors="replace").splitlines() if needle in line]


def write_long(path: Path, minutes: int) -> Path:
    """A long recording that costs little to write: two phrases at the top of every minute."""
    speech, _ = synthesize(["привет мир", "как дела"])
    gap = np.zeros(8000 * 60 - len(speech), np.int16)
    with sf.SoundFile(path, "w", samplerate=8000, channels=1, subtype="PCM_16") as f:
        for _ in range(minutes):
            f.write(speech)
            f.write(gap)
    return path


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def broker(servers: dict[str, str]) -> None:
    """This process sends tasks through the test Redis (the app was configured at import)."""
    from worker.celery_app import app

    app.conf.broker_url = servers["REDIS_URL"]


@pytest.fixture(scope="module")
def db(servers: dict[str, str]) -> str:
    return servers["DATABASE_URL"]


@pytest.fixture(scope="module")
def wworker(platform_env: dict[str, str], logs: Path) -> Iterator[Proc]:
    proc = start_worker(platform_env, logs, name="wtest", queues=f"{QUEUE},{EVENTS_QUEUE}")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker-audio")


@pytest.fixture(scope="module")
def stereo(audio_dir: Path) -> Path:
    """A call: different phrases on the left and right channels, at different times."""
    left, _ = synthesize(["здравствуйте", "чем я могу помочь"], lead=0.6)
    right, _ = synthesize(["у меня вопрос", "спасибо"], lead=2.1)
    n = max(len(left), len(right))
    audio = np.zeros((n, 2), np.int16)
    audio[: len(left), 0] = left
    audio[: len(right), 1] = right
    path = audio_dir / "call.wav"
    sf.write(path, audio, 8000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def short(audio_dir: Path) -> Path:
    audio, _ = synthesize(["короткая запись"])
    path = audio_dir / "short.flac"
    sf.write(path, audio, 8000)
    return path


@pytest.fixture(scope="module")
def long_flac(audio_dir: Path) -> Path:
    return write_long(audio_dir / "long.flac", LONG_MINUTES)


# -- a job's life ---------------------------------------------------------------------------------


def test_a_job_completes_with_the_engines_transcript_in_mix_and_split(
    db: str, wworker: Proc, stereo: Path, recognizer: Recognizer
) -> None:
    ids = {mode: submit(db, stereo, channels=mode) for mode in ("mix", "split")}
    for mode, job_id in ids.items():
        job = wait_status(db, job_id, {"completed", "failed"}, wworker)
        assert job.status == "completed", (job.error_code, job.error_message)
        expected = recognizer.transcribe_file(stereo, channels=mode).to_dict()  # type: ignore[arg-type]
        (row,) = transcripts(db, job_id)
        assert row.phrases == written(expected["phrases"])
        assert row.full_text == expected["full_text"]
        assert row.channels == (2 if mode == "split" else 1)
        assert job.progress == 1.0 and job.duration == pytest.approx(expected["duration"], abs=1e-3)
        assert job.attempts == 1 and job.error_code is None
        assert (
            job.started_at is not None and job.finished_at is not None and job.finished_at >= job.started_at
        )
        assert job.processing_seconds is not None and job.processing_seconds > 0
        assert job.audio_info is not None and job.audio_info["channels"] == 2
    split_channels = {p["channel"] for p in transcripts(db, ids["split"])[0].phrases}
    assert split_channels == {0, 1}  # the split transcript really holds both sides


def test_jobs_waiting_while_the_worker_is_busy_join_its_batch_and_finish_before_it(
    db: str, wworker: Proc, long_flac: Path, short: Path
) -> None:
    """One worker process with one slot: the short jobs can only finish before the long one if the
    long job's run took them into its batch (their own messages wait behind it)."""
    long_id = submit(db, long_flac)
    wait_for(lambda: job_row(db, long_id).status == "processing", "long job processing", wworker, 20)
    short_ids = [submit(db, short) for _ in range(3)]
    for job_id in short_ids:
        assert wait_status(db, job_id, {"completed", "failed"}, wworker).status == "completed"
    assert job_row(db, long_id).status == "processing"  # still running: the shorts rode along
    joined = log_lines(wworker, "jobs joined the batch")
    assert joined and f"job={long_id}" in joined[-1]
    assert wait_status(db, long_id, {"completed", "failed"}, wworker).status == "completed"

    def stale_messages_seen() -> bool:  # their own messages came later and found nothing to do
        return all(log_lines(wworker, f"job={j} nothing to do") for j in short_ids)

    wait_for(stale_messages_seen, "the short jobs' own messages", wworker, 10)
    for job_id in short_ids:
        assert len(transcripts(db, job_id)) == 1 and job_row(db, job_id).attempts == 1


def test_jobs_submitted_together_run_as_one_batch(db: str, wworker: Proc, short: Path, stereo: Path) -> None:
    ids = [new_job(db, short), new_job(db, stereo, channels="split"), new_job(db, short)]
    for job_id in ids:  # every row is committed before the first message is sent
        send(job_id)
    for job_id in ids:
        assert wait_status(db, job_id, {"completed", "failed"}, wworker).status == "completed"
    (line,) = log_lines(wworker, f"job={ids[0]} batch of")
    assert "batch of 3 jobs" in line and all(j in line for j in ids)


def test_progress_rises_during_a_long_recording(db: str, wworker: Proc, long_flac: Path) -> None:
    job_id = submit(db, long_flac)
    seen: list[float] = []

    def record() -> bool:
        job = job_row(db, job_id)
        if job.status == "processing":
            seen.append(job.progress)
        return job.status in ("completed", "failed")

    wait_for(record, "long job done", wworker, 60)
    job = job_row(db, job_id)
    assert job.status == "completed" and job.progress == 1.0
    middle = [p for p in seen if 0 < p < 1]
    assert len(set(middle)) >= 2, seen  # written more than once while it ran
    assert middle == sorted(middle)
    assert job.duration == pytest.approx(LONG_MINUTES * 60, abs=0.01)


def test_a_cancel_request_stops_a_processing_job_within_seconds(
    db: str, wworker: Proc, long_flac: Path
) -> None:
    job_id = submit(db, long_flac)
    wait_for(lambda: job_row(db, job_id).progress > 0, "progress", wworker, 20)
    with session_scope(db) as session:
        session.execute(update(Job).where(Job.id == uuid.UUID(job_id)).values(cancel_requested=True))
    job = wait_status(db, job_id, {"cancelled", "completed", "failed"}, wworker, timeout=10)
    assert job.status == "cancelled"  # a worker ignoring the request would complete the recording
    assert job.error_code is None and job.finished_at is not None and job.progress < 1
    assert transcripts(db, job_id) == []


def test_every_bad_file_fails_with_its_code_while_a_good_job_in_the_same_batch_completes(
    db: str, wworker: Proc, short: Path, audio_dir: Path, recognizer: Recognizer
) -> None:
    good = new_job(db, short)
    bad = {name: new_job(db, KIT_AUDIO / "bad" / name) for name in BAD_CODES}
    missing = new_job(db, audio_dir / "no-such-file.wav")
    for job_id in [good, *bad.values(), missing]:
        send(job_id)
    job = wait_status(db, good, {"completed", "failed"}, wworker)
    assert job.status == "completed"
    assert transcripts(db, good)[0].phrases == written(recognizer.transcribe_file(short).to_dict()["phrases"])
    for name, job_id in bad.items():
        job = wait_status(db, job_id, {"completed", "failed"}, wworker)
        assert (job.status, job.error_code) == ("failed", BAD_CODES[name]), name
        assert job.error_message and job.finished_at is not None
        assert transcripts(db, job_id) == []
    job = wait_status(db, missing, {"completed", "failed"}, wworker)
    assert (job.status, job.error_code) == ("failed", "file_not_found")
    # they really shared one batch with the good job (whichever job's task claimed them together)
    (line,) = [line for line in log_lines(wworker, " batch of ") if good in line]
    assert all(j in line for j in bad.values()), line
    assert wworker.popen.poll() is None  # the worker survived them all


def test_a_duplicate_transcribe_message_for_a_completed_job_changes_nothing(
    db: str, wworker: Proc, short: Path
) -> None:
    job_id = submit(db, short)
    before = wait_status(db, job_id, {"completed"}, wworker)
    (first,) = transcripts(db, job_id)
    send(job_id)
    send(job_id)
    wait_for(
        lambda: len(log_lines(wworker, f"job={job_id} nothing to do")) >= 2, "duplicates seen", wworker, 15
    )
    after = job_row(db, job_id)
    (again,) = transcripts(db, job_id)
    keys = ("status", "attempts", "finished_at", "started_at", "lease_owner", "progress", "duration")
    assert {k: getattr(after, k) for k in keys} == {k: getattr(before, k) for k in keys}
    assert (again.phrases, again.created_at) == (first.phrases, first.created_at)


def test_a_worker_without_its_model_fails_jobs_with_model_not_found_and_keeps_running(
    db: str, platform_env: dict[str, str], logs: Path, short: Path, audio_dir: Path
) -> None:
    env = {**platform_env, "TONE_MODEL_PATH": str(audio_dir / "no-model-here")}
    proc = start_worker(env, logs, name="no-model", queues="worker-no-model")
    try:
        for _ in range(2):  # the second job proves the worker survived the first
            job_id = submit(db, short, queue="worker-no-model")
            job = wait_status(db, job_id, {"completed", "failed"}, proc)
            assert (job.status, job.error_code) == ("failed", "model_not_found")
            assert job.error_message and "no-model-here" in job.error_message
        assert proc.popen.poll() is None
    finally:
        proc.stop()


# -- recovery: leases, beat ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def stale_jobs(db: str, short: Path) -> dict[str, str]:
    """Rows the beat must repair: a queued job whose message was lost (never sent), and a job whose
    worker died on it three times (lease expired, attempts 3)."""
    long_ago = datetime.now(timezone.utc) - timedelta(minutes=5)
    lost = new_job(db, short, queue=KILL_QUEUE)
    dying = new_job(db, short, queue=KILL_QUEUE)
    with session_scope(db) as session:
        session.execute(update(Job).where(Job.id == uuid.UUID(lost)).values(enqueued_at=long_ago))
        session.execute(
            update(Job)
            .where(Job.id == uuid.UUID(dying))
            .values(status="processing", attempts=3, lease_owner="gone:1:x", enqueued_at=long_ago,
                    started_at=long_ago, lease_expires_at=func.now() - timedelta(minutes=1))
        )  # fmt: skip
    return {"lost_message": lost, "worker_lost": dying}


@pytest.fixture(scope="module")
def beat(platform_env: dict[str, str], logs: Path, servers: dict[str, str]) -> Iterator[Proc]:
    """A beat and a worker for its sweeps (sent to the default queue, "cpu") and the kill queue."""
    worker = start_worker(platform_env, logs, name="recovery", queues=f"{KILL_QUEUE},cpu,{EVENTS_QUEUE}")
    proc = start_beat(platform_env, logs, Path(servers["root"]))
    yield proc
    proc.stop()
    worker.stop()


def test_a_worker_killed_mid_job_is_replaced_and_the_job_completes_once_with_one_transcript(
    db: str,
    platform_env: dict[str, str],
    logs: Path,
    long_flac: Path,
    recognizer: Recognizer,
    servers: dict[str, str],
    request: pytest.FixtureRequest,
) -> None:
    first = start_worker(platform_env, logs, name="doomed", queues=KILL_QUEUE)
    second: Proc | None = None
    beat_proc: Proc | None = None
    try:
        job_id = submit(db, long_flac, queue=KILL_QUEUE)
        wait_for(lambda: job_row(db, job_id).progress > 0, "mid-job", first, 30)
        os.killpg(first.popen.pid, signal.SIGKILL)
        first.popen.wait(10)
        killed = job_row(db, job_id)
        assert killed.status == "processing" and killed.progress < 1  # really killed mid-job
        stale_jobs: dict[str, str] = request.getfixturevalue("stale_jobs")  # created now: no worker took them
        # the beat's tone.requeue_stuck goes to the "events" queue
        second = start_worker(
            platform_env, logs, name="replacement", queues=f"{KILL_QUEUE},cpu,{EVENTS_QUEUE}"
        )
        beat_proc = start_beat(platform_env, logs, Path(servers["root"]))
        with ThreadPoolExecutor(1) as pool:  # the engine's own result, computed while we wait
            expected = pool.submit(
                lambda: written(recognizer.transcribe_file(long_flac).to_dict()["phrases"])
            )
            job = wait_status(db, job_id, {"completed", "failed"}, second, timeout=75)
        assert job.status == "completed", (job.error_code, job.error_message)
        assert job.attempts == 2 and job.lease_owner != killed.lease_owner
        (row,) = transcripts(db, job_id)
        assert row.phrases == expected.result()
        time.sleep(2)  # nothing writes a second result afterwards
        assert len(transcripts(db, job_id)) == 1 and job_row(db, job_id).status == "completed"
        # the beat's other repairs, done in the same minutes (asserted in the tests below)
        wait_for(
            lambda: job_row(db, stale_jobs["lost_message"]).status == "completed", "lost msg", second, 30
        )
    finally:
        for proc in (beat_proc, second, first):
            if proc is not None:
                proc.stop()


def test_a_queued_job_whose_message_was_lost_is_resent_by_beat_and_completes(
    db: str, stale_jobs: dict[str, str], beat: Proc
) -> None:
    job_id = stale_jobs["lost_message"]
    job = wait_status(db, job_id, {"completed", "failed"}, beat, timeout=40)
    assert job.status == "completed" and len(transcripts(db, job_id)) == 1
    # re-sent by beat, or claimed first by a running worker's batch (which takes waiting jobs too)
    assert job.attempts >= 1 and job.lease_owner is not None


def test_a_job_whose_worker_died_three_times_fails_worker_lost(
    db: str, stale_jobs: dict[str, str], beat: Proc
) -> None:
    job_id = stale_jobs["worker_lost"]
    job = wait_status(db, job_id, {"failed", "completed"}, beat, timeout=40)
    assert (job.status, job.error_code, job.attempts) == ("failed", "worker_lost", 3)
    assert job.finished_at is not None and transcripts(db, job_id) == []
