"""Webhook delivery: signed events (Standard Webhooks), retried on the spec's schedule, every
attempt recorded as a ``WebhookDelivery`` row.

``tone.webhook(subject_id, event_type, attempt=1, event_id=None)`` sends one attempt of one event
to the ``webhook_url`` of its subject through the SSRF guard (``shared.platform.netguard``) and records it.
The subject is a job (``job.completed``, ``job.failed``, ``job.cancelled``) or, for ``batch.*``
events (``batch.completed``, ``batch.cancelled``), a batch; both are signed and retried alike. On failure
the next attempt is scheduled after the next delay of ``SCHEDULE`` (+-10 % jitter), or after the
receiver's ``Retry-After`` (429/503) when that is longer:

- delays up to ``COUNTDOWN_MAX_SECONDS`` are Celery countdowns of this same task (Redis redelivers
  unacked messages after its visibility timeout of an hour, so longer countdowns would run twice);
- longer ones are only stored as the row's ``next_attempt_at``; the beat task
  ``tone.webhook_due`` sends the attempts that are due (and those whose countdown message was
  lost). A Redis claim per scheduled (event, attempt) keeps beat from dispatching it again while
  its countdown message is pending (until it is due plus ``CLAIM_GRACE_SECONDS``): an attempt
  whose message died with its worker goes out at most that plus beat's sweep interval late.

Whoever sends an attempt (the worker's task, beat's resend, a redelivered message) first takes its
*send lock*: a Redis key of ``SEND_LOCK_SECONDS`` renewed every few seconds while the attempt runs,
so it expires with its holder; a killed holder's attempt is sent again by the next task within
seconds. Under the lock the task skips an attempt that is already recorded, so one is never sent
twice.

Only 2xx is success; a 3xx is not followed (a failure, retried); 410 Gone stops; a URL that the
guard refuses (url_forbidden, invalid_url) stops at once. All attempts of one event share its
``webhook-id`` (``evt_<uuid>``); ``redeliver(job_id)`` sends a fresh event (new id, attempt 1).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any

from sqlalchemy import String, and_, cast, exists, func, literal, or_, select
from sqlalchemy.orm import Session, aliased
from standardwebhooks import Webhook

from shared.db.models import FINAL_STATUSES, Batch, Job, JobFlag, Rule, Tenant, WebhookDelivery
from shared.db.session import session_scope
from shared.platform.batch_state import BATCH_EVENTS, load_view
from shared.platform.keys import signing_secrets
from shared.platform.netguard import UrlError, post_json
from shared.platform.rules import FLAGGED_EVENT, flagged_rule
from shared.platform.settings import Settings, get_settings
from shared.queue import (
    EVENTS_QUEUE,
    WEBHOOK_DUE_TASK,
    WEBHOOK_TASK,
    enqueue_webhook,
    enqueue_webhook_attempt,
    new_event_id,
)
from worker.celery_app import app

log = logging.getLogger(__name__)

USER_AGENT = "tone-platform-webhooks/1"

# Standard Webhooks' schedule: attempt n (1-based) is sent SCHEDULE[n-1] seconds after attempt n-1
_H = 3600
SCHEDULE: tuple[float, ...] = (0, 5, 5 * 60, 30 * 60, 2 * _H, 5 * _H, 10 * _H, 14 * _H, 20 * _H, 24 * _H)
MAX_ATTEMPTS = len(SCHEDULE)
JITTER = 0.10
COUNTDOWN_MAX_SECONDS = 45 * 60  # under Redis' visibility timeout (3600 s) with margin
RETRY_AFTER_MAX_SECONDS = 24 * 3600
CLAIM_GRACE_SECONDS = 30  # a dispatched attempt not started this long after it was due is sent again
SEND_LOCK_SECONDS = 20  # an attempt's send lock outlives its holder by at most this
SEND_LOCK_RENEW_SECONDS = 5
DUE_BATCH = 500
# a final event with no delivery row this long after the job or batch ended lost its first message
# (the broker restarted, or was down when the job ended): beat sends it, for a day
MISSING_GRACE_SECONDS = 120
MISSING_WINDOW = timedelta(hours=24)
_EVENT_NAMESPACE = uuid.UUID("8f6c2d0e-5b1a-4f3e-9d7c-2a4b6e8f0a1c")

EVENT_TYPES = {status: f"job.{status}" for status in FINAL_STATUSES}


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def first_event_id(subject_id: str, event_type: str) -> str:
    """The ``webhook-id`` of a job's or batch's final event: derived from both, so the task the worker
    sent and the one beat sends for a lost first message are the same event, delivered once."""
    return f"evt_{uuid.uuid5(_EVENT_NAMESPACE, f'{subject_id}:{event_type}').hex}"


def event_body(job: Job, event_type: str) -> dict[str, Any]:
    """The event's JSON object; built from the (final, so stable) job row on every attempt."""
    error = None
    if job.error_code or job.error_message:
        error = {"code": job.error_code, "message": job.error_message}
    return {
        "type": event_type,
        "timestamp": _iso(job.finished_at or _now()),
        "data": {
            "id": str(job.id),
            "status": job.status,
            "duration": job.duration,
            "error": error,
            "metadata": job.client_metadata,
            "request_id": (job.options or {}).get("request_id"),  # X-Request-ID of the job's request
            "links": {"self": f"/v1/jobs/{job.id}", "transcript": f"/v1/jobs/{job.id}/transcript"},
        },
    }


def batch_event_body(session: Session, batch: Batch, event_type: str) -> dict[str, Any]:
    """A batch event: ``data`` is the batch view (counts, audio seconds, links), as GET shows it."""
    return {
        "type": event_type,
        "timestamp": _iso(batch.finished_at or _now()),
        "data": load_view(session, batch),
    }


def is_batch_event(event_type: str) -> bool:
    return event_type.startswith("batch.")


def _subject(session: Session, subject_id: str, event_type: str) -> tuple[Job | Batch | None, str | None]:
    """``(job or batch or None, its webhook_url)``; a ``job.flagged`` event of a job without a URL
    goes to its batch's."""
    key = uuid.UUID(str(subject_id))
    subject: Job | Batch | None = (
        session.get(Batch, key) if is_batch_event(event_type) else session.get(Job, key)
    )
    if subject is None:
        return None, None
    url = subject.webhook_url
    if url is None and isinstance(subject, Job) and flagged_rule(event_type) and subject.batch_id is not None:
        batch = session.get(Batch, subject.batch_id)
        url = batch.webhook_url if batch else None
    return subject, url


def flag_event_body(session: Session, job: Job, rule_id: uuid.UUID) -> dict[str, Any] | None:
    """``job.flagged``: the job's event data plus the rule and what matched; None once the rule or
    its flag was deleted."""
    flag = session.get(JobFlag, (job.id, rule_id))
    rule = session.get(Rule, rule_id)
    if flag is None or rule is None:
        return None
    body = event_body(job, FLAGGED_EVENT)
    body["timestamp"] = _iso(flag.created_at)
    body["data"]["rule"] = {"id": str(rule.id), "name": rule.name, "kind": rule.kind, "params": rule.params}
    body["data"]["details"] = flag.details
    return body


def sign(secrets: Sequence[str], event_id: str, body: bytes, moment: datetime) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt (the signature covers id.timestamp.body): one
    ``v1,<sig>`` per secret, space-separated, as the spec allows during a secret's rotation."""
    text = body.decode("utf-8")
    signature = " ".join(Webhook(secret).sign(event_id, moment, text) for secret in secrets)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signature,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }


def retry_after_seconds(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delay-seconds or an HTTP date; None when absent/invalid."""
    value = (headers.get("Retry-After") or headers.get("retry-after") or "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or _now())).total_seconds())


def next_delay(attempt: int, status_code: int | None, headers: Mapping[str, str] | None) -> float | None:
    """Seconds until attempt ``attempt + 1`` after attempt ``attempt`` failed; None: give up."""
    if attempt >= MAX_ATTEMPTS:
        return None
    delay = SCHEDULE[attempt] * random.uniform(1 - JITTER, 1 + JITTER)
    if status_code in (429, 503) and headers is not None:
        wanted = retry_after_seconds(headers)
        if wanted is not None and wanted > delay:
            delay = min(wanted, RETRY_AFTER_MAX_SECONDS)
    return delay


def _redis() -> Any:
    import redis

    return redis.Redis.from_url(get_settings().redis_url)


def _claim(event_id: str, attempt: int, ttl_seconds: float) -> bool:
    """Mark attempt ``attempt`` of the event as dispatched; False when it already was."""
    key = f"tone:webhook:claim:{event_id}:{attempt}"
    try:
        return bool(_redis().set(key, "1", nx=True, ex=max(1, int(ttl_seconds))))
    except Exception:  # Redis trouble: sending twice is better than never (same webhook-id)
        log.warning("webhook claim for %s attempt %d failed", event_id, attempt, exc_info=True)
        return True


class SendLock:
    """The lock on sending one attempt of one event: ``SEND_LOCK_SECONDS`` in Redis, renewed by a
    thread every ``SEND_LOCK_RENEW_SECONDS`` until released, so it dies with its holder. Redis
    trouble: taken (sending twice under one webhook-id beats never sending)."""

    def __init__(self, event_id: str, attempt: int) -> None:
        self.key = f"tone:webhook:sending:{event_id}:{attempt}"
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        try:
            if not _redis().set(self.key, self.token, nx=True, ex=SEND_LOCK_SECONDS):
                return False
        except Exception:
            log.warning("webhook send lock %s: Redis failed, sending anyway", self.key, exc_info=True)
            return True
        self._thread = threading.Thread(target=self._renew, name="webhook-lock", daemon=True)
        self._thread.start()
        return True

    def _renew(self) -> None:
        while not self._stop.wait(SEND_LOCK_RENEW_SECONDS):
            try:
                _redis().set(self.key, self.token, xx=True, ex=SEND_LOCK_SECONDS)
            except Exception:
                log.warning("webhook send lock %s: renewal failed", self.key, exc_info=True)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(SEND_LOCK_RENEW_SECONDS + 1)
            try:
                client = _redis()
                if client.get(self.key) == self.token.encode():
                    client.delete(self.key)
            except Exception:
                log.warning("webhook send lock %s: release failed (it expires)", self.key, exc_info=True)


def _send_attempt(
    subject_id: str, event_type: str, attempt: int, event_id: str, queue: str, countdown: float
) -> None:
    enqueue_webhook_attempt(subject_id, event_type, attempt, event_id, queue=queue, countdown=countdown)


@dataclass
class Event:
    """One attempt of one event, ready to send: where, what, signed with which secret."""

    subject_id: str
    event_type: str
    event_id: str
    attempt: int
    url: str
    secrets: list[str]  # the tenant's current secret, and its previous one during a rotation's grace
    body: bytes

    @property
    def what(self) -> str:
        return "batch" if is_batch_event(self.event_type) else "job"


@dataclass
class Outcome:
    """What the receiver answered (or why nothing was answered)."""

    sent_at: datetime
    status_code: int | None = None
    headers: Mapping[str, str] | None = None
    latency_ms: float | None = None
    error: str | None = None
    final: bool = False  # no further attempts, whatever the schedule says

    @property
    def success(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _prepare(session: Session, subject_id: str, event_type: str, event_id: str, attempt: int) -> Event | str:
    """The attempt to send, or why there is none (``job_missing``, ``no_webhook_url``, ``duplicate``)."""
    subject, url = _subject(session, subject_id, event_type)
    what = "batch" if is_batch_event(event_type) else "job"
    if subject is None:
        log.info("webhook %s: %s %s no longer exists", event_id, what, subject_id)
        return f"{what}_missing"
    if not url:
        return "no_webhook_url"
    done = session.scalar(
        select(WebhookDelivery.id).where(
            WebhookDelivery.event_id == event_id, WebhookDelivery.attempt == attempt
        )
    )
    if done is not None:
        log.info("webhook %s attempt %d for %s %s is already recorded", event_id, attempt, what, subject_id)
        return "duplicate"
    tenant = session.get(Tenant, subject.tenant_id)
    assert tenant is not None
    rule_id = flagged_rule(event_type)
    if isinstance(subject, Batch):
        document: dict[str, Any] | None = batch_event_body(session, subject, event_type)
    elif rule_id is not None:
        document = flag_event_body(session, subject, rule_id)
        if document is None:
            return "flag_missing"
    else:
        document = event_body(subject, event_type)
    body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
    return Event(subject_id, event_type, event_id, attempt, url, signing_secrets(tenant), body)


def _post(event: Event, settings: Settings) -> Outcome:
    """Send the attempt; every failure becomes an :class:`Outcome` with its reason."""
    out = Outcome(sent_at=_now())
    headers = sign(event.secrets, event.event_id, event.body, out.sent_at)
    try:
        out.status_code, out.headers, out.latency_ms = post_json(
            event.url,
            event.body,
            headers,
            timeout=settings.webhook_timeout_seconds,
            allow_private=settings.allow_private_urls,
        )
    except UrlError as exc:
        out.error = f"{exc.code}: {exc.message}"
        out.final = exc.code in ("url_forbidden", "invalid_url")
    except Exception as exc:  # anything unexpected is a failed attempt, recorded and retried
        log.exception(
            "webhook %s attempt %d for %s %s failed unexpectedly",
            event.event_id, event.attempt, event.what, event.subject_id,
        )  # fmt: skip
        out.error = f"request_failed: {type(exc).__name__}: {exc}"
    if out.latency_ms is None:
        out.latency_ms = (_now() - out.sent_at).total_seconds() * 1000.0
    if out.status_code is not None and not out.success:
        out.error, out.final = _refusal(out.status_code, out.headers or {})
    return out


def _refusal(status_code: int, headers: Mapping[str, str]) -> tuple[str, bool]:
    """``(error, final)`` for a non-2xx answer: redirects are not followed, 410 stops deliveries."""
    if 300 <= status_code < 400:
        location = headers.get("Location") or headers.get("location")
        return f"HTTP {status_code}: redirects are not followed" + (
            f" (Location: {location})" if location else ""
        ), False
    if status_code == 410:
        return "HTTP 410 Gone: the receiver asked for no more deliveries", True
    return f"HTTP {status_code}", False


def _record(event: Event, out: Outcome, next_at: datetime | None, settings: Settings) -> bool:
    """Write the attempt's row; False when the subject was deleted meanwhile."""
    batch = is_batch_event(event.event_type)
    subject_key = uuid.UUID(str(event.subject_id))
    with session_scope(settings.database_url) as session:
        if session.get(Batch if batch else Job, subject_key) is None:
            return False
        session.add(
            WebhookDelivery(
                job_id=None if batch else subject_key,
                batch_id=subject_key if batch else None,
                event_id=event.event_id,
                event_type=event.event_type,
                url=event.url,
                attempt=event.attempt,
                created_at=out.sent_at,
                status_code=out.status_code,
                latency_ms=out.latency_ms,
                error=out.error,
                success=out.success,
                next_attempt_at=next_at,
            )
        )
    return True


@app.task(name=WEBHOOK_TASK, bind=True, ignore_result=True, soft_time_limit=120, time_limit=180)
def deliver(
    self: Any, subject_id: str, event_type: str, attempt: int = 1, event_id: str | None = None
) -> str:
    """Send one attempt of one event and record it; schedule the next attempt on failure."""
    settings = get_settings()
    if event_id is None:  # the final event's first attempt: one per subject, whoever sent the task
        event_id = first_event_id(subject_id, event_type)
    lock = SendLock(event_id, attempt)
    if not lock.acquire():
        log.info("webhook %s attempt %d is being sent by another task", event_id, attempt)
        return "duplicate"
    try:
        with session_scope(settings.database_url) as session:
            event = _prepare(session, subject_id, event_type, event_id, attempt)
        if isinstance(event, str):
            return event

        out = _post(event, settings)
        delay = None if out.success or out.final else next_delay(attempt, out.status_code, out.headers)
        if delay is None and not out.success and not out.final:
            out.error = f"{out.error}; gave up after {attempt} attempts"
        next_at = _now() + timedelta(seconds=delay) if delay is not None else None
        if not _record(event, out, next_at, settings):
            return f"{event.what}_missing"
    finally:
        lock.release()
    outcome = "delivered" if out.success else (out.error or "failed")
    log.info(
        "webhook %s attempt %d for %s %s to %s: %s",
        event_id,
        attempt,
        event.what,
        subject_id,
        event.url,
        outcome,
    )

    if delay is not None and delay <= COUNTDOWN_MAX_SECONDS:
        # back to the queue this attempt came from: its workers are known to deliver
        queue = (self.request.delivery_info or {}).get("routing_key") or EVENTS_QUEUE
        # the claim stops the beat from sending this attempt too, unless the message is lost
        _claim(event_id, attempt + 1, delay + CLAIM_GRACE_SECONDS)
        _send_attempt(str(subject_id), event_type, attempt + 1, event_id, queue, delay)
    return "delivered" if out.success else "failed"


@app.task(name=WEBHOOK_DUE_TASK, ignore_result=True, soft_time_limit=60, time_limit=90)
def send_due() -> int:
    """Beat: send every retry that is due (``next_attempt_at`` passed, not yet attempted)."""
    settings = get_settings()
    later = aliased(WebhookDelivery)
    with session_scope(settings.database_url) as session:
        rows = session.execute(
            select(
                func.coalesce(WebhookDelivery.job_id, WebhookDelivery.batch_id),
                WebhookDelivery.event_type,
                WebhookDelivery.attempt,
                WebhookDelivery.event_id,
            )
            .where(
                WebhookDelivery.success.is_(False),
                WebhookDelivery.next_attempt_at.is_not(None),
                WebhookDelivery.next_attempt_at <= _now(),
                WebhookDelivery.attempt < MAX_ATTEMPTS,
                ~exists().where(
                    and_(later.event_id == WebhookDelivery.event_id, later.attempt > WebhookDelivery.attempt)
                ),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(DUE_BATCH)
        ).all()
        missing = _missing_first_events(session)
    sent = 0
    for subject_id, event_type, attempt, event_id in rows:
        if _claim(event_id, attempt + 1, CLAIM_GRACE_SECONDS):
            _send_attempt(str(subject_id), event_type, attempt + 1, event_id, EVENTS_QUEUE, 0)
            sent += 1
    for missing_id, missing_type in missing:
        log.warning("webhook %s for %s was never attempted: sending it now", missing_type, missing_id)
        enqueue_webhook(str(missing_id), missing_type)
        sent += 1
    if sent:
        log.info("sent %d due webhook attempts", sent)
    return sent


def _missing_first_events(session: Session) -> list[tuple[str, str]]:
    """Final jobs and batches with a webhook_url that ended between a day and two minutes ago and
    have no delivery row of their final event, and rule matches (``job.flagged``) of that age whose
    job or batch has a webhook_url and that have no delivery row: their first message was lost."""
    since, until = _now() - MISSING_WINDOW, _now() - timedelta(seconds=MISSING_GRACE_SECONDS)
    found: list[tuple[str, str]] = []
    subjects: tuple[tuple[Any, Any, dict[str, str]], ...] = (
        (Job, WebhookDelivery.job_id, EVENT_TYPES),
        (Batch, WebhookDelivery.batch_id, BATCH_EVENTS),
    )
    for model, owner, events in subjects:
        rows = session.execute(
            select(model.id, model.status)
            .where(
                model.status.in_(list(events)),
                model.webhook_url.is_not(None),
                model.finished_at.between(since, until),
                ~exists().where(owner == model.id, WebhookDelivery.event_type.in_(list(events.values()))),
            )
            .limit(DUE_BATCH)
        ).all()
        found += [(str(subject_id), events[status]) for subject_id, status in rows]
    flag_type = literal(f"{FLAGGED_EVENT}:") + cast(JobFlag.rule_id, String)
    flags = session.execute(
        select(JobFlag.job_id, JobFlag.rule_id)
        .join(Job, Job.id == JobFlag.job_id)
        .outerjoin(Batch, Batch.id == Job.batch_id)
        .where(
            JobFlag.created_at.between(since, until),
            or_(Job.webhook_url.is_not(None), Batch.webhook_url.is_not(None)),
            ~exists().where(
                WebhookDelivery.job_id == JobFlag.job_id, WebhookDelivery.event_type == flag_type
            ),
        )
        .limit(DUE_BATCH)
    ).all()
    found += [(str(job_id), f"{FLAGGED_EVENT}:{rule_id}") for job_id, rule_id in flags]
    return found


def redeliver(job_id: str | uuid.UUID) -> str | None:
    """Send a fresh event (new ``webhook-id``, attempt 1) for the job's current final status.

    Returns the new event id, or None when there is nothing to send (no such job, the job is not
    final, or it has no ``webhook_url``)."""
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        job = session.get(Job, uuid.UUID(str(job_id)))
        if job is None or job.status not in EVENT_TYPES or not job.webhook_url:
            return None
        event_type = EVENT_TYPES[job.status]
    event_id = new_event_id()
    _send_attempt(str(job_id), event_type, 1, event_id, EVENTS_QUEUE, 0)
    return event_id
