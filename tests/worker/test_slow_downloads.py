"""A slow ``audio_url`` holds nothing (issue 16, item 1), with a real worker and real slow HTTP
servers: recordings that are ready run while a URL downloads beside them, a cancel stops a download
within seconds, and a download ends at its whole deadline or under the minimum rate (each read
arriving in time is not enough)."""

from __future__ import annotations

import http.server
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
from sqlalchemy import update

from shared.db.models import Job
from shared.db.session import session_scope
from shared.dev.models.tones import synthesize
from shared.platform.keys import get_or_create_tenant
from tests.conftest import Proc, serving, start_worker, wait_for
from tests.worker.test_webhooks import platform  # noqa: F401 (fixture: this process's broker)
from tests.worker.test_worker import job_row, new_job, send

QUEUE = "slow-url-tests"
DEADLINE = 20
MIN_RATE = 1000


class _Slow(http.server.BaseHTTPRequestHandler):
    server: SlowServer

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        # /steady: 2 000 bytes a second; /trickle: one byte every 2 s; both "100 MB" long
        piece, every = (b"\0" * 2000, 1.0) if self.path.startswith("/steady") else (b"\0", 2.0)
        self.send_response(200)
        self.send_header("Content-Type", "audio/wav")
        self.send_header("Content-Length", "100000000")
        self.end_headers()
        try:
            while not self.server.closing.wait(every):
                self.wfile.write(piece)
                self.wfile.flush()
        except OSError:  # the worker gave up: it closed the connection
            pass


class SlowServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Slow)
        self.closing = threading.Event()

    def url(self, kind: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{kind}/{uuid.uuid4().hex[:8]}.wav"


@pytest.fixture
def slow() -> Iterator[SlowServer]:
    srv = SlowServer()
    with serving(srv):
        yield srv
        srv.closing.set()


def url_job(db: str, url: str) -> str:
    with session_scope(db) as session:
        tenant = get_or_create_tenant(session, "worker-tests")
        job = Job(
            tenant_id=tenant.id, queue=QUEUE, options={"channels": "mix"}, source="url", audio_url=url,
            enqueued_at=datetime.now(timezone.utc),
        )  # fmt: skip
        session.add(job)
        session.flush()
        job_id = str(job.id)
    send(job_id, QUEUE)
    return job_id


def test_a_slow_audio_url_holds_no_slot_stops_on_cancel_and_ends_at_its_bounds(
    platform: str,  # noqa: F811
    platform_env: dict[str, str],
    logs: Path,
    slow: SlowServer,
    tmp_path: Path,
) -> None:
    db = platform
    env = {
        **platform_env,
        "TONE_URL_DOWNLOAD_DEADLINE_SECONDS": str(DEADLINE),
        "TONE_URL_DOWNLOAD_MIN_BYTES_PER_SECOND": str(MIN_RATE),
    }
    audio, _ = synthesize(["короткая запись"])
    short = tmp_path / "short.wav"
    sf.write(short, audio, 8000, subtype="PCM_16")
    worker: Proc = start_worker(env, logs, name="slow-urls", queues=QUEUE)  # one process, one slot
    try:
        held = url_job(db, slow.url("steady"))
        wait_for(lambda: job_row(db, held).status == "processing", "the URL job taken", worker, 30)
        ready = [new_job(db, short, queue=QUEUE) for _ in range(3)]
        for job_id in ready:
            send(job_id, QUEUE)
        # the recordings that are ready run while the URL downloads (before: they waited for it)
        wait_for(
            lambda: all(job_row(db, j).status == "completed" for j in ready), "ready jobs done", worker, 20
        )
        assert job_row(db, held).status == "processing"

        with session_scope(db) as session:
            session.execute(update(Job).where(Job.id == uuid.UUID(held)).values(cancel_requested=True))
        asked = time.monotonic()
        wait_for(lambda: job_row(db, held).status == "cancelled", "the download cancelled", worker, 10)
        assert time.monotonic() - asked < 5

        started = time.monotonic()
        too_long = url_job(db, slow.url("steady"))  # fast enough, but never ends
        too_slow = url_job(db, slow.url("trickle"))  # every read in time, 0.5 byte/s in all
        wait_for(
            lambda: {job_row(db, too_long).status, job_row(db, too_slow).status} == {"failed"},
            "both downloads ended",
            worker,
            DEADLINE + 30,
        )
        assert time.monotonic() - started < DEADLINE + 25
        long_row, slow_row = job_row(db, too_long), job_row(db, too_slow)
        assert long_row.error_code == "download_failed" and "longer than 20 s" in long_row.error_message
        assert (
            slow_row.error_code == "download_failed" and "slower than the minimum" in slow_row.error_message
        )
    finally:
        worker.stop()
