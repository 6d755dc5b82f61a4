"""Webhooks end to end: a real receiver on 127.0.0.1, a real Celery worker, real Postgres and Redis.

Jobs are written straight into the database as finished; ``enqueue_webhook`` sends the task the
way the worker and the API do, and the test checks what the receiver got and what was recorded.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from functools import partial
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.conftest import ROOT, make_key, serving, start_worker, wait_for

Response = tuple[int, dict[str, str]]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, headers = self.server.record(self.path, dict(self.headers), body)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST  # noqa: N815  (a followed redirect would show up as a GET)


class Receiver(http.server.ThreadingHTTPServer):
    """Records every request by path; answers each path from its script (the last answer repeats)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.scripts: dict[str, list[Response]] = {}
        self.got: dict[str, list[dict[str, Any]]] = {}

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def script(self, *answers: Response) -> str:
        """A fresh path answering ``answers`` in turn; returns its URL."""
        path = f"/hook/{uuid.uuid4().hex[:12]}"
        with self.lock:
            self.scripts[path] = list(answers)
        return self.base + path

    def record(self, path: str, headers: dict[str, str], body: bytes) -> Response:
        with self.lock:
            self.got.setdefault(path, []).append({"headers": headers, "body": body, "t": time.monotonic()})
            answers = self.scripts.get(path) or [(404, {})]
            return answers.pop(0) if len(answers) > 1 else answers[0]

    def requests(self, url: str) -> list[dict[str, Any]]:
        path = url.removeprefix(self.base)
        with self.lock:
            return list(self.got.get(path, []))


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with serving(Receiver()) as srv:
        yield srv


@pytest.fixture(scope="module")
def platform(servers: dict[str, str]) -> Iterator[str]:
    """This process talks to the tests' Postgres and Redis (enqueue_webhook, redeliver, the beat
    task); restored afterwards. Yields the database URL."""
    from shared.platform.settings import get_settings
    from worker.celery_app import app

    mp = pytest.MonkeyPatch()
    for name in ("DATABASE_URL", "REDIS_URL"):
        mp.setenv(name, servers[name])
    mp.setenv("TONE_WORKER_QUEUE", "cpu")
    mp.setenv("TONE_ALLOW_PRIVATE_URLS", "1")
    get_settings.cache_clear()
    old_broker = app.conf.broker_url
    app.close()  # drop any pool made for another broker
    app.conf.broker_url = servers["REDIS_URL"]
    try:
        yield servers["DATABASE_URL"]
    finally:
        app.close()
        app.conf.broker_url = old_broker
        mp.undo()
        get_settings.cache_clear()


def make_job(
    db: str, webhook_url: str, status: str = "completed", tenant_name: str = "webhook-tests", **fields: Any
) -> tuple[str, str]:
    """A finished job of tenant ``tenant_name`` written straight into the DB: (job id, secret)."""
    from shared.db.models import Job
    from shared.db.session import session_scope
    from shared.platform.keys import get_or_create_tenant

    with session_scope(db) as session:
        tenant = get_or_create_tenant(session, tenant_name)
        job = Job(
            tenant_id=tenant.id,
            status=status,
            queue="cpu",
            webhook_url=webhook_url,
            duration=12.5,
            client_metadata={"order": 7, "name": "звонок"},
            **{"finished_at": datetime.now(timezone.utc), **fields},
        )
        session.add(job)
        session.flush()
        return str(job.id), tenant.webhook_secret


def deliveries(db: str, job_id: str | None = None, *, batch_id: str | None = None) -> list[Any]:
    """The delivery rows of a job (or, with ``batch_id``, of a batch), by event then attempt."""
    from sqlalchemy import select

    from shared.db.models import WebhookDelivery
    from shared.db.session import session_scope

    owner = (
        WebhookDelivery.batch_id == uuid.UUID(batch_id)
        if batch_id
        else WebhookDelivery.job_id == uuid.UUID(str(job_id))
    )
    with session_scope(db) as session:
        query = select(WebhookDelivery).where(owner)
        return list(session.scalars(query.order_by(WebhookDelivery.event_id, WebhookDelivery.attempt)))


def wait_rows(db: str, job_id: str, n: int, timeout: float = 30) -> list[Any]:
    wait_for(lambda: len(deliveries(db, job_id)) >= n, f"{n} delivery rows of job {job_id}", timeout=timeout)
    return deliveries(db, job_id)


def wait_requests(receiver: Receiver, url: str, n: int, timeout: float = 30) -> list[dict[str, Any]]:
    wait_for(lambda: len(receiver.requests(url)) >= n, f"{n} requests to {url}", timeout=timeout)
    return receiver.requests(url)


def make_due(db: str, delivery_id: Any) -> None:
    """Time passes: the delivery's next attempt is due now."""
    from sqlalchemy import update

    from shared.db.models import WebhookDelivery
    from shared.db.session import session_scope

    with session_scope(db) as session:
        moment = datetime.now(timezone.utc) - timedelta(seconds=1)
        session.execute(
            update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(next_attempt_at=moment)
        )


def _delay(row: Any) -> float:
    return float((row.next_attempt_at - row.created_at).total_seconds())


def test_event_is_signed_and_recorded(platform: str, worker: Any, receiver: Receiver) -> None:
    from shared.queue import enqueue_webhook

    url = receiver.script((200, {}))
    job_id, secret = make_job(platform, url)
    enqueue_webhook(job_id, "job.completed")
    [request] = wait_requests(receiver, url, 1)

    headers = request["headers"]
    event = Webhook(secret).verify(request["body"], headers)  # raises unless the signature matches
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("tone-platform")
    assert headers["webhook-id"].startswith("evt_")
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert headers["webhook-signature"].startswith("v1,")
    assert event["type"] == "job.completed"
    datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    assert event["data"] == {
        "id": job_id,
        "status": "completed",
        "duration": 12.5,
        "error": None,
        "metadata": {"order": 7, "name": "звонок"},
        "request_id": None,  # written straight into the DB: no request made it
        "links": {"self": f"/v1/jobs/{job_id}", "transcript": f"/v1/jobs/{job_id}/transcript"},
    }
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(request["body"].replace(b"12.5", b"13.5"), headers)

    [row] = wait_rows(platform, job_id, 1)
    assert (row.attempt, row.status_code, row.success, row.error) == (1, 200, True, None)
    assert row.event_id == headers["webhook-id"]
    assert row.event_type == "job.completed"
    assert row.url == url
    assert row.latency_ms is not None and row.latency_ms >= 0
    assert row.next_attempt_at is None


def test_failed_job_event_and_redeliver(platform: str, worker: Any, receiver: Receiver) -> None:
    from shared.queue import enqueue_webhook
    from worker.webhooks import redeliver

    url = receiver.script((200, {}))
    job_id, secret = make_job(
        platform, url, status="failed", error_code="unsupported_format", error_message="not audio"
    )
    enqueue_webhook(job_id, "job.failed")
    [first] = wait_requests(receiver, url, 1)
    event = Webhook(secret).verify(first["body"], first["headers"])
    assert event["type"] == "job.failed"
    assert event["data"]["status"] == "failed"
    assert event["data"]["error"] == {"code": "unsupported_format", "message": "not audio"}

    event_id = redeliver(job_id)
    assert event_id is not None and event_id != first["headers"]["webhook-id"]
    second = wait_requests(receiver, url, 2)[1]
    assert second["headers"]["webhook-id"] == event_id
    assert Webhook(secret).verify(second["body"], second["headers"]) == event
    rows = wait_rows(platform, job_id, 2)
    assert sorted((r.event_id, r.attempt, r.success) for r in rows) == sorted(
        [(first["headers"]["webhook-id"], 1, True), (event_id, 1, True)]
    )
    assert redeliver(str(uuid.uuid4())) is None  # no such job


def test_retried_after_a_500_with_the_same_id(platform: str, worker: Any, receiver: Receiver) -> None:
    from shared.queue import enqueue_webhook

    url = receiver.script((500, {}), (200, {}))
    job_id, secret = make_job(platform, url)
    enqueue_webhook(job_id, "job.completed")
    first, second = wait_requests(receiver, url, 2, timeout=40)

    assert 4.4 <= second["t"] - first["t"] <= 15  # 5 s +- 10 % jitter, plus the worker's latency
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    for request in (first, second):
        Webhook(secret).verify(request["body"], request["headers"])
    assert first["body"] == second["body"]

    rows = wait_rows(platform, job_id, 2)
    assert [(r.attempt, r.status_code, r.success) for r in rows] == [(1, 500, False), (2, 200, True)]
    assert rows[0].error == "HTTP 500"
    assert 4.4 <= _delay(rows[0]) <= 7.5  # 5 s +- 10 %, counted from the row's transaction start
    assert rows[1].next_attempt_at is None
    assert {r.event_id for r in rows} == {first["headers"]["webhook-id"]}


def test_gone_redirect_and_retry_after(platform: str, worker: Any, receiver: Receiver) -> None:
    """410 stops; a 302 is a failure that is not followed (and is retried); Retry-After (seconds
    on a 503, an HTTP date on a 429) sets the next attempt when it is longer than the schedule."""
    from shared.queue import enqueue_webhook

    gone = receiver.script((410, {}))
    elsewhere = receiver.script((200, {}))
    moved = receiver.script((302, {"Location": elsewhere}), (200, {}))
    busy = receiver.script((503, {"Retry-After": "120"}))
    later = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=3)
    throttled = receiver.script((429, {"Retry-After": format_datetime(later, usegmt=True)}))
    jobs = {}
    for url in (gone, moved, busy, throttled):
        jobs[url], _ = make_job(platform, url)
        enqueue_webhook(jobs[url], "job.completed")

    [gone_row] = wait_rows(platform, jobs[gone], 1)
    assert (gone_row.status_code, gone_row.success, gone_row.next_attempt_at) == (410, False, None)
    assert "410" in gone_row.error

    [busy_row] = wait_rows(platform, jobs[busy], 1)
    assert (busy_row.status_code, busy_row.success) == (503, False)
    assert 119 <= _delay(busy_row) <= 121  # not the schedule's 5 s

    [throttled_row] = wait_rows(platform, jobs[throttled], 1)
    assert throttled_row.status_code == 429
    assert abs((throttled_row.next_attempt_at - later).total_seconds()) <= 2

    moved_rows = wait_rows(platform, jobs[moved], 2, timeout=40)  # the 302 was a failure: retried
    assert [(r.attempt, r.status_code, r.success) for r in moved_rows] == [(1, 302, False), (2, 200, True)]
    assert "not followed" in moved_rows[0].error
    assert 4.4 <= _delay(moved_rows[0]) <= 7.5
    assert receiver.requests(elsewhere) == []  # never followed

    # by now (5 s on) the schedule would have retried each of these: they must not have been
    assert len(receiver.requests(gone)) == 1
    assert len(receiver.requests(busy)) == 1
    assert len(receiver.requests(throttled)) == 1
    assert len(deliveries(platform, jobs[gone])) == 1


def test_due_retries_are_sent_by_the_beat_task(platform: str, worker: Any, receiver: Receiver) -> None:
    """A retry hours away is only stored; ``tone.webhook_due`` sends it once it is due, once."""

    from shared.queue import enqueue_webhook
    from worker.webhooks import send_due

    later = datetime.now(timezone.utc) + timedelta(hours=5)
    url = receiver.script((503, {"Retry-After": format_datetime(later, usegmt=True)}), (200, {}))
    job_id, secret = make_job(platform, url)
    enqueue_webhook(job_id, "job.completed")
    [row] = wait_rows(platform, job_id, 1)
    assert row.next_attempt_at > datetime.now(timezone.utc) + timedelta(hours=4)
    send_due()  # not due yet: nothing sent for this job
    time.sleep(1)
    assert len(receiver.requests(url)) == 1

    make_due(platform, row.id)  # time passes
    assert send_due() >= 1
    assert send_due() == 0  # already dispatched: claimed
    rows = wait_rows(platform, job_id, 2)
    assert [(r.attempt, r.status_code, r.success) for r in rows] == [(1, 503, False), (2, 200, True)]
    requests = receiver.requests(url)
    assert len(requests) == 2
    assert requests[0]["headers"]["webhook-id"] == requests[1]["headers"]["webhook-id"]
    Webhook(secret).verify(requests[1]["body"], requests[1]["headers"])


def test_loopback_refused_without_the_setting(
    platform: str, platform_env: dict[str, str], logs: Any, receiver: Receiver
) -> None:
    from shared.queue import enqueue_webhook

    env = {k: v for k, v in platform_env.items() if k != "TONE_ALLOW_PRIVATE_URLS"}
    proc = start_worker(env, logs, name="hooks2", queues="hooks2")
    try:
        url = receiver.script((200, {}))
        job_id, _ = make_job(platform, url)
        enqueue_webhook(job_id, "job.completed", queue="hooks2")
        [row] = wait_rows(platform, job_id, 1)
    finally:
        proc.stop()
    assert row.success is False
    assert row.status_code is None
    assert row.error.startswith("url_forbidden")
    assert "127.0.0.1" in row.error
    assert row.next_attempt_at is None  # refused URLs are not retried
    assert receiver.requests(url) == []


def make_batch(db: str, webhook_url: str) -> tuple[str, str]:
    """A finished batch of tenant "webhook-tests" (one completed job) written straight into the DB."""
    from shared.db.models import Batch, Job
    from shared.db.session import session_scope
    from shared.platform.keys import get_or_create_tenant

    with session_scope(db) as session:
        tenant = get_or_create_tenant(session, "webhook-tests")
        now = datetime.now(timezone.utc)
        batch = Batch(tenant_id=tenant.id, source="manifest", status="completed", items=1, skipped=[],
                      options={}, webhook_url=webhook_url, finished_at=now)  # fmt: skip
        session.add(batch)
        session.flush()
        session.add(Job(tenant_id=tenant.id, batch_id=batch.id, status="completed", queue="cpu", duration=3.5,
                        finished_at=datetime.now(timezone.utc)))  # fmt: skip
        return str(batch.id), tenant.webhook_secret


def batch_deliveries(db: str, batch_id: str) -> list[Any]:
    return deliveries(db, batch_id=batch_id)


def test_a_batch_event_is_signed_recorded_on_the_batch_and_retried_by_the_beat(
    platform: str, worker: Any, receiver: Receiver
) -> None:
    """batch.* events go through the same signing, recording and retries as job events; a retry
    stored for later is sent by ``tone.webhook_due`` (whose query joins jobs only optionally)."""

    from shared.queue import enqueue_webhook
    from worker.webhooks import send_due

    later = datetime.now(timezone.utc) + timedelta(hours=5)
    url = receiver.script((503, {"Retry-After": format_datetime(later, usegmt=True)}), (200, {}))
    batch_id, secret = make_batch(platform, url)
    enqueue_webhook(batch_id, "batch.completed")
    [first] = wait_requests(receiver, url, 1)
    event = Webhook(secret).verify(first["body"], first["headers"])
    assert event["type"] == "batch.completed"
    data = event["data"]
    assert (data["id"], data["status"], data["jobs"], data["items"]) == (batch_id, "completed", 1, 1)
    assert data["counts"]["completed"] == 1 and data["audio_seconds_done"] == 3.5 and data["progress"] == 1.0
    assert data["links"]["self"] == f"/v1/batches/{batch_id}"
    wait_for(lambda: len(batch_deliveries(platform, batch_id)) >= 1, "the batch's first delivery row")
    [row] = batch_deliveries(platform, batch_id)
    assert (row.job_id, row.event_type, row.status_code, row.success) == (None, "batch.completed", 503, False)

    make_due(platform, row.id)  # time passes
    assert send_due() >= 1
    second = wait_requests(receiver, url, 2)[1]
    assert second["headers"]["webhook-id"] == first["headers"]["webhook-id"]
    assert Webhook(secret).verify(second["body"], second["headers"])["data"]["id"] == batch_id
    wait_for(lambda: len(batch_deliveries(platform, batch_id)) >= 2, "the batch's second delivery row")
    rows = batch_deliveries(platform, batch_id)
    assert [(r.attempt, r.status_code, r.success) for r in rows] == [(1, 503, False), (2, 200, True)]


# -- units ---------------------------------------------------------------------------------------------


def test_retry_after_parsing() -> None:
    from worker.webhooks import retry_after_seconds

    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert retry_after_seconds({"Retry-After": "30"}, now) == 30
    date = format_datetime(now + timedelta(minutes=10), usegmt=True)
    assert retry_after_seconds({"Retry-After": date}, now) == 600
    assert (
        retry_after_seconds({"Retry-After": format_datetime(now - timedelta(hours=1), usegmt=True)}, now) == 0
    )
    assert retry_after_seconds({"Retry-After": "soon"}, now) is None
    assert retry_after_seconds({}, now) is None


def test_schedule_and_jitter() -> None:
    from worker.webhooks import MAX_ATTEMPTS, SCHEDULE, next_delay

    assert SCHEDULE == (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    for attempt in range(1, MAX_ATTEMPTS):
        delays = [next_delay(attempt, 500, {}) for _ in range(200)]
        assert all(d is not None and 0.9 * SCHEDULE[attempt] <= d <= 1.1 * SCHEDULE[attempt] for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert next_delay(MAX_ATTEMPTS, 500, {}) is None  # gave up after the 10th attempt
    assert next_delay(1, 503, {"Retry-After": "60"}) == 60  # longer than 5 s: honoured
    assert 270 <= (next_delay(2, 429, {"Retry-After": "60"}) or 0) <= 330  # shorter: the schedule
    assert 4.5 <= (next_delay(1, 500, {"Retry-After": "60"}) or 0) <= 5.5  # only on 429/503


def test_event_body_shape() -> None:
    from shared.db.models import Job
    from worker.webhooks import event_body

    job_id = uuid.uuid4()
    job = Job(id=job_id, status="cancelled", duration=None, client_metadata=None,
              finished_at=datetime(2025, 5, 1, 10, 0, tzinfo=timezone.utc))  # fmt: skip
    body = event_body(job, "job.cancelled")
    assert body["timestamp"] == "2025-05-01T10:00:00Z"
    assert body["data"]["error"] is None
    assert body["data"]["links"]["self"] == f"/v1/jobs/{job_id}"
    json.dumps(body)


def test_a_final_event_asked_twice_is_sent_once_and_a_redelivery_is_a_new_event(
    platform: str, worker: Any, api: Any, servers: dict[str, str], receiver: Receiver
) -> None:
    from shared.queue import enqueue_webhook
    from worker.webhooks import first_event_id

    url = receiver.script((200, {}), (200, {}))
    job_id, secret = make_job(platform, url)
    enqueue_webhook(job_id, "job.completed")
    enqueue_webhook(job_id, "job.completed")  # a duplicate message: the same event, not a second one
    [first] = wait_requests(receiver, url, 1)
    assert first["headers"]["webhook-id"] == first_event_id(job_id, "job.completed")
    wait_rows(platform, job_id, 1)

    key = make_key(servers, "webhook-tests")  # the tenant of make_job's jobs
    asked = httpx.post(
        f"{api.url}/v1/jobs/{job_id}/webhooks/redeliver", headers={"Authorization": f"Bearer {key}"}
    )
    assert asked.status_code == 202, asked.text
    second = wait_requests(receiver, url, 2)[1]
    assert second["headers"]["webhook-id"] != first["headers"]["webhook-id"]
    assert Webhook(secret).verify(second["body"], second["headers"])["type"] == "job.completed"
    time.sleep(1.5)
    assert len(receiver.requests(url)) == 2
    assert [r.attempt for r in deliveries(platform, job_id)] == [1, 1]


def test_a_lost_first_message_is_sent_by_beat_once(platform: str, worker: Any, receiver: Receiver) -> None:
    from worker.webhooks import send_due

    url = receiver.script((200, {}), (200, {}))
    five_minutes_ago = datetime.now(timezone.utc) - timedelta(minutes=5)
    job_id, secret = make_job(platform, url, finished_at=five_minutes_ago)  # no task was ever sent
    just_now, _ = make_job(platform, url)  # its task may still be on its way: left alone
    assert send_due() >= 1
    assert send_due() >= 0  # the same event asked again before the first is recorded: still one
    [request] = wait_requests(receiver, url, 1)
    event = Webhook(secret).verify(request["body"], request["headers"])
    assert event["data"]["id"] == job_id and event["type"] == "job.completed"
    [row] = wait_rows(platform, job_id, 1)
    assert row.success
    send_due()  # recorded now: not sent again
    time.sleep(1.5)
    assert len(receiver.requests(url)) == 1
    assert deliveries(platform, just_now) == []


def test_a_lost_job_flagged_message_is_sent_by_beat_once(
    platform: str, worker: Any, receiver: Receiver
) -> None:
    """A rule match whose job.flagged task never reached a worker is sent by beat's sweep, once, with
    the rule and what matched; the job's own job.completed (also never sent) goes too."""
    from shared.db.models import Job, JobFlag, Rule
    from shared.db.session import session_scope
    from worker.webhooks import send_due

    url = receiver.script((200, {}))
    five_minutes_ago = datetime.now(timezone.utc) - timedelta(minutes=5)
    job_id, secret = make_job(platform, url, finished_at=five_minutes_ago)
    with session_scope(platform) as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        rule = Rule(tenant_id=job.tenant_id, name="threat to leave", kind="phrase_contains",
                    params={"words": ["расторгнуть"], "channel": 1})  # fmt: skip
        session.add(rule)
        session.flush()
        details = {"phrases": [{"idx": 0, "channel": 1, "start": 1.0, "end": 2.0, "text": "расторгнуть"}]}
        session.add(JobFlag(job_id=job.id, rule_id=rule.id, details=details, created_at=five_minutes_ago))
        rule_id = str(rule.id)
    assert send_due() >= 2
    requests = wait_requests(receiver, url, 2)
    events = {e["type"]: e for e in (Webhook(secret).verify(r["body"], r["headers"]) for r in requests)}
    assert set(events) == {"job.completed", "job.flagged"}
    flagged = events["job.flagged"]["data"]
    assert flagged["id"] == job_id and flagged["rule"]["id"] == rule_id and flagged["details"] == details
    wait_rows(platform, job_id, 2)
    assert {r.event_type for r in deliveries(platform, job_id)} == {"job.completed", f"job.flagged:{rule_id}"}
    send_due()  # both recorded now: not sent again
    time.sleep(1.5)
    assert len(receiver.requests(url)) == 2


def test_a_batch_lists_its_deliveries_and_sends_its_event_again_on_request(
    platform: str, worker: Any, api: Any, servers: dict[str, str], receiver: Receiver
) -> None:
    from shared.queue import enqueue_webhook

    url = receiver.script((200, {}), (200, {}))
    batch_id, secret = make_batch(platform, url)
    enqueue_webhook(batch_id, "batch.completed")
    [first] = wait_requests(receiver, url, 1)
    headers = {"Authorization": f"Bearer {make_key(servers, 'webhook-tests')}"}
    base = f"{api.url}/v1/batches/{batch_id}/webhooks"
    wait_for(lambda: len(httpx.get(base, headers=headers).json()["data"]) == 1, "the delivery listed")
    [row] = httpx.get(base, headers=headers).json()["data"]
    assert (row["event_type"], row["status_code"], row["success"]) == ("batch.completed", 200, True)
    assert row["event_id"] == first["headers"]["webhook-id"]

    asked = httpx.post(f"{base}/redeliver", headers=headers)
    assert asked.status_code == 202 and asked.json()["event_type"] == "batch.completed", asked.text
    second = wait_requests(receiver, url, 2)[1]
    assert second["headers"]["webhook-id"] != first["headers"]["webhook-id"]
    assert Webhook(secret).verify(second["body"], second["headers"])["data"]["id"] == batch_id
    other = httpx.post(
        f"{base}/redeliver", headers={"Authorization": f"Bearer {make_key(servers, 'hooks-other')}"}
    )
    assert other.status_code == 404


def test_the_secret_over_the_api_and_the_cli_and_its_rotation_signs_with_both_during_the_grace(
    platform: str, servers: dict[str, str], api: Any, worker: Any, receiver: Receiver
) -> None:
    """GET /v1/webhooks/secret is the secret deliveries are signed with; after a rotation deliveries
    carry both signatures (each verifies with the standardwebhooks library) until the grace ends;
    ``tone-platform keys secret`` prints and rotates the same secret."""
    import subprocess
    import sys

    from shared.queue import enqueue_webhook

    tenant = f"rotation-{uuid.uuid4().hex[:6]}"
    headers = {"Authorization": f"Bearer {make_key(servers, tenant)}"}
    assert httpx.get(f"{api.url}/v1/webhooks/secret", timeout=10).status_code == 401

    def deliver() -> dict[str, Any]:
        url = receiver.script((200, {}))
        job_id, _ = make_job(platform, url, tenant_name=tenant)
        enqueue_webhook(job_id, "job.completed")
        return wait_requests(receiver, url, 1)[0]

    first = httpx.get(f"{api.url}/v1/webhooks/secret", headers=headers, timeout=10).json()
    s0 = first["secret"]
    assert s0.startswith("whsec_") and first["previous_secret_expires_at"] is None
    got = deliver()
    assert Webhook(s0).verify(got["body"], got["headers"])["type"] == "job.completed"
    assert len(got["headers"]["webhook-signature"].split()) == 1

    rotated = httpx.post(f"{api.url}/v1/webhooks/secret/rotate", headers=headers, timeout=10).json()
    s1 = rotated["secret"]
    assert s1.startswith("whsec_") and s1 != s0
    until = datetime.fromisoformat(rotated["previous_secret_expires_at"].replace("Z", "+00:00"))
    assert abs((until - datetime.now(timezone.utc)).total_seconds() - 24 * 3600) < 120
    assert httpx.get(f"{api.url}/v1/webhooks/secret", headers=headers, timeout=10).json()["secret"] == s1
    got = deliver()
    assert len(got["headers"]["webhook-signature"].split()) == 2
    for secret in (s0, s1):  # a receiver still on the old secret and one on the new both verify
        assert Webhook(secret).verify(got["body"], got["headers"])["data"]["status"] == "completed"

    again = httpx.post(
        f"{api.url}/v1/webhooks/secret/rotate", params={"grace_hours": 0}, headers=headers, timeout=10
    ).json()
    s2 = again["secret"]
    assert again["previous_secret_expires_at"] is None
    got = deliver()
    assert Webhook(s2).verify(got["body"], got["headers"])
    for old in (s0, s1):
        with pytest.raises(Exception, match="signature"):
            Webhook(old).verify(got["body"], got["headers"])
    bad = httpx.post(
        f"{api.url}/v1/webhooks/secret/rotate", params={"grace_hours": -1}, headers=headers, timeout=10
    )
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"

    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("TONE_") and k != "DATABASE_URL"}
    env.update(DATABASE_URL=servers["DATABASE_URL"], TONE_DATA_DIR=servers["root"])
    cli = [sys.executable, "-m", "shared.cli.main", "keys", "secret", "--tenant"]
    run = partial(subprocess.run, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    out = run([*cli, tenant])
    assert (out.returncode, out.stdout.strip()) == (0, s2), out.stderr
    out = run([*cli, tenant, "--rotate"])
    assert out.returncode == 0 and out.stdout.strip().startswith("whsec_"), out.stderr
    assert out.stdout.strip() != s2 and "previous secret also signs" in out.stderr
    assert httpx.get(f"{api.url}/v1/webhooks/secret", headers=headers, timeout=10).json()["secret"] == (
        out.stdout.strip()
    )
    out = run([*cli, "no-such-tenant"])
    assert out.returncode == 1 and "no tenant" in out.stderr


def test_a_request_id_goes_from_the_api_into_the_workers_lines_and_the_webhook(
    platform: str, servers: dict[str, str], api: Any, worker: Any, receiver: Receiver, tmp_path: Any
) -> None:
    import soundfile as sf

    from shared.dev.models.tones import synthesize

    wav = tmp_path / "hello.wav"
    sf.write(wav, synthesize(["привет мир"])[0], 8000, subtype="PCM_16")
    headers = {"Authorization": f"Bearer {make_key(servers, 'request-ids')}", "X-Request-ID": "call-4711.a"}
    url = receiver.script((200, {}))
    with wav.open("rb") as f:
        got = httpx.post(
            f"{api.url}/v1/jobs", headers=headers, files={"file": f}, data={"webhook_url": url}, timeout=30
        )
    assert got.status_code == 202 and got.headers["X-Request-ID"] == "call-4711.a"
    job = got.json()
    assert job["request_id"] == "call-4711.a" and "request_id" not in job["options"]
    [request] = wait_requests(receiver, url, 1, timeout=60)
    assert json.loads(request["body"])["data"]["request_id"] == "call-4711.a"
    lines = [line for line in worker.log.read_text().splitlines() if f"job={job['id']}" in line]
    assert lines and all("request_id=call-4711.a" in line for line in lines), lines

    made = httpx.get(f"{api.url}/livez", headers={"X-Request-ID": "bad id with spaces"})
    assert made.headers["X-Request-ID"].startswith("req_")  # refused as given: a new one is made
