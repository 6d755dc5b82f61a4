"""What the routes do with jobs: accept audio, create and enqueue a job (idempotently), find it for
its tenant, cancel, delete, wait for a synchronous one, and render its transcript.

The job row is committed before its message is sent; if the send fails the beat task re-sends it.
Nothing here imports the engine's model code: only its pure formats/types/errors (and, when the
decoding libraries are installed, ``shared.asr.audio.probe`` to refuse unreadable audio up front).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, lazyload

from api.deps import Caller
from api.errors import ERROR_STATUS, ApiError, invalid_request, not_found
from api.multipart import receive_form
from api.schemas import AudioOut, ErrorInfo, FlagOut, JobLinks, JobOptions, JobOut
from api.uploads import StoredAudio, audio_file_path, remove_quietly
from shared.asr.errors import ToneError
from shared.asr.formats import MEDIA_TYPES, render
from shared.asr.types import Phrase, Word
from shared.db.models import (
    FINAL_STATUSES,
    Batch,
    Job,
    JobFlag,
    TenantVocabulary,
    Transcript,
    WebhookDelivery,
)
from shared.db.session import rowcount
from shared.platform import logs, metrics
from shared.platform.batch_state import BATCH_EVENTS, finish_batch
from shared.platform.settings import Settings, get_settings
from shared.queue import enqueue_transcription, enqueue_webhook
from shared.text.display import display_text, phrase_text, with_display
from shared.text.options import TextOptions

FormModel = TypeVar("FormModel", bound=BaseModel)

log = logging.getLogger("api.jobs")

SYNC_PRIORITY = 9
POLL_SECONDS = 0.15
_FINAL_EVENT = {"completed": "job.completed", "failed": "job.failed", "cancelled": "job.cancelled"}


POLL_AFTER_SECONDS = 1  # Retry-After on an open job's GET: a worker writes progress about once a second


def _now() -> datetime:
    return datetime.now(timezone.utc)


# -- views ------------------------------------------------------------------------------------------


def job_links(job_id: str) -> JobLinks:
    base = f"/v1/jobs/{job_id}"
    return JobLinks(
        self=base, transcript=f"{base}/transcript", cancel=f"{base}/cancel", webhooks=f"{base}/webhooks"
    )


def _audio_view(info: dict[str, Any] | None) -> AudioOut | None:
    """What the recording is (set once a worker opened it)."""
    if not info or "channels" not in info:
        return None
    return AudioOut(
        format=info.get("format"),
        codec=info.get("codec"),
        sample_rate=info.get("sample_rate"),
        channels=int(info["channels"]),
    )


def job_view(job: Job) -> JobOut:
    error = ErrorInfo(code=job.error_code, message=job.error_message or "") if job.error_code else None
    return JobOut(
        id=str(job.id),
        status=job.status,
        kind=job.kind,
        priority=job.priority,
        progress=job.progress or 0.0,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        duration=job.duration,
        processing_seconds=job.processing_seconds,
        options={k: v for k, v in (job.options or {}).items() if k != "request_id"},
        request_id=(job.options or {}).get("request_id"),
        audio=_audio_view(job.audio_info),
        metadata=job.client_metadata,
        source=job.source,
        filename=job.filename,
        size_bytes=job.size_bytes,
        audio_url=job.audio_url,
        webhook_url=job.webhook_url,
        error=error,
        links=job_links(str(job.id)),
        analytics=job.analytics,
        # rules flag a job when its transcript is stored: an open job (what pollers read) has none,
        # and not loading them saves a query per poll
        flags=[flag_view(f) for f in job.flags] if job.status in FINAL_STATUSES else [],
    )


def flag_view(f: JobFlag) -> FlagOut:
    return FlagOut(
        rule_id=str(f.rule_id), name=f.rule.name, kind=f.rule.kind, details=f.details, created_at=f.created_at
    )


# -- audio in ---------------------------------------------------------------------------------------


def _probe(path: Path, settings: Settings, filename: str | None) -> None:
    """Refuse audio the engine cannot read, cheaply (headers only), when the decoders are installed."""
    try:
        from shared.asr.audio import probe
    except ImportError:  # the API image may carry no decoding libraries: the worker decides then
        return
    try:
        info = probe(path)
    except ToneError as exc:
        raise exc.hiding(path, filename or "the upload") from None
    except Exception:  # anything unexpected: let the worker give the job its proper error
        log.warning("probe failed unexpectedly for %s", path, exc_info=True)
        return
    if info.duration > settings.max_audio_seconds:
        raise ApiError(
            413,
            "audio_too_long",
            f"the audio lasts {info.duration:.1f} s, over the limit of {settings.max_audio_seconds:.0f} s",
        )


def check_upload(stored: StoredAudio, filename: str | None, settings: Settings) -> None:
    """Refuse an empty, oversized or unreadable upload (the caller removes it)."""
    if stored.size == 0:
        raise ApiError(400, "empty_audio", "the uploaded file is empty")
    _probe(stored.path, settings, filename)


def validate_audio_url(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(422, "invalid_request", "audio_url must be an absolute http or https URL")
    return url.strip()


def check_audio_url_address(url: str, settings: Settings) -> None:
    """400 ``url_not_allowed`` for an ``audio_url`` whose host is a non-public address (unless
    TONE_ALLOW_PRIVATE_URLS), as manifests are checked; a host that does not resolve now is left to
    the worker (DNS may be back by then), which checks again on the address it connects to."""
    from shared.platform.netguard import UrlError, check_url

    try:
        check_url(url, allow_private=settings.allow_private_urls)
    except UrlError as exc:
        if exc.code == "url_forbidden":  # the manifests' code for it (400)
            raise UrlError("url_not_allowed", f"audio_url: {exc.message}") from None


# -- create -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewJob:
    """Everything a new job needs besides its tenant."""

    options: JobOptions
    stored: StoredAudio | None = None
    job_id: uuid.UUID | None = None
    filename: str | None = None
    content_type: str | None = None
    kind: str = "job"
    idempotency_key: str | None = None


def request_hash(new: NewJob) -> str:
    audio = {"sha256": new.stored.sha256} if new.stored else {"audio_url": new.options.audio_url}
    body = {**new.options.model_dump(exclude={"audio_url"}), **audio, "kind": new.kind}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _idempotent_match(
    db: Session, caller: Caller, new: NewJob, digest: str, settings: Settings
) -> Job | None:
    """The earlier job for this Idempotency-Key (same body), or None; 409 for a different body.

    A key older than ``idempotency_hours`` is released (cleared on the old job) for reuse.
    """
    if not new.idempotency_key:
        return None
    job = db.scalar(
        select(Job).where(Job.tenant_id == caller.tenant_id, Job.idempotency_key == new.idempotency_key)
    )
    if job is None:
        return None
    if job.created_at < _now() - timedelta(hours=settings.idempotency_hours):
        job.idempotency_key = None
        db.flush()
        return None
    if job.request_hash != digest:
        raise ApiError(
            409,
            "idempotency_conflict",
            "this Idempotency-Key was used with a different request; use a new key for a new request",
        )
    return job


def create_job(db: Session, caller: Caller, new: NewJob, settings: Settings) -> tuple[Job, bool]:
    """Insert, commit and enqueue a job; or return the earlier job of the same Idempotency-Key.

    Returns ``(job, created)``. When the earlier job is returned, or no job is created (an error,
    409), a newly stored upload is removed.
    """
    digest = request_hash(new)
    try:
        for _ in range(2):  # a concurrent request with the same key may win the insert: look again
            existing = _idempotent_match(db, caller, new, digest, settings)
            if existing is not None:
                remove_quietly(new.stored.path if new.stored else None)
                db.commit()
                return existing, False
            job = job_row(caller, new, digest, settings)
            with_tenant_vocabulary(db, caller, [job])
            db.add(job)
            try:
                db.commit()
            except IntegrityError:
                db.rollback()
                if not new.idempotency_key:
                    raise
                continue
            break
        else:
            raise ApiError(
                409, "idempotency_conflict", "a concurrent request with this Idempotency-Key is in progress"
            )
    except BaseException:  # no job holds the new upload: it goes (a 409 for another body included)
        remove_quietly(new.stored.path if new.stored else None)
        raise
    enqueue(job)  # committed: the job holds its audio, and the beat re-sends a message that failed
    return job, True


def with_request_id(options: dict[str, Any]) -> dict[str, Any]:
    """A job's options with the id of the request that made it (for its logs and its webhook)."""
    rid = logs.request_id.get()
    return {**options, "request_id": rid} if rid else options


def with_tenant_vocabulary(db: Session, caller: Caller, jobs: Sequence[Job]) -> None:
    """Add the tenant's default vocabulary and replacements (``/v1/vocabulary``) to new jobs: its
    words first, then the job's own; the job's replacements win."""
    row = db.get(TenantVocabulary, caller.tenant_id)
    if row is None or not (row.words or row.replacements):
        return
    for job in jobs:
        job.options = merged_with_tenant(job.options or {}, row)


def merged_with_tenant(options: dict[str, Any], row: TenantVocabulary) -> dict[str, Any]:
    """``options`` (a job's or live session's text options) with the tenant's words first and its
    replacements under the job's own."""
    out = dict(options)
    words = list(row.words) + [w for w in options.get("vocabulary") or [] if w not in row.words]
    if words:
        out["vocabulary"] = words
    replacements = {**row.replacements, **(options.get("replacements") or {})}
    if replacements:
        out["replacements"] = replacements
    return out


def job_row(caller: Caller, new: NewJob, digest: str, settings: Settings) -> Job:
    opts = new.options
    stored = new.stored
    return Job(
        id=new.job_id or uuid.uuid4(),
        tenant_id=caller.tenant_id,
        kind=new.kind,
        status="queued",
        priority=SYNC_PRIORITY if new.kind == "sync" else opts.priority,
        queue=settings.worker_queue,
        options=with_request_id(
            {"channels": opts.channels, "decoder": opts.decoder, **opts.text_options().to_dict()}
        ),
        source="upload" if stored else "url",
        filename=new.filename,
        content_type=new.content_type,
        size_bytes=stored.size if stored else None,
        sha256=stored.sha256 if stored else None,
        audio_url=None if stored else opts.audio_url,
        audio_path=str(stored.path) if stored else None,
        progress=0.0,
        enqueued_at=_now(),
        idempotency_key=new.idempotency_key,
        request_hash=digest,
        client_metadata=opts.metadata,
        webhook_url=opts.webhook_url,
    )


def enqueue(job: Job) -> None:
    try:
        enqueue_transcription(str(job.id), queue=job.queue, priority=job.priority)
    except Exception:  # the row is committed: the beat task re-sends queued jobs past their grace
        log.exception("job %s: could not send it to the queue now; it will be re-sent", job.id)


def send_final_event(subject: Job | Batch, *, again: bool = False) -> str | None:
    """Queue the final webhook event of a job or a batch that ended (``again``: as a new event, with
    a new ``webhook-id``, for a user's redelivery). Returns its type; None when it has not ended."""
    if isinstance(subject, Batch):
        event = BATCH_EVENTS.get(subject.status) if subject.finished_at else None
    else:
        event = _FINAL_EVENT.get(subject.status)
    if event is not None:
        enqueue_webhook(str(subject.id), event, again=again)
    return event


# -- find, cancel, delete ---------------------------------------------------------------------------


def parse_job_id(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise not_found() from None


def load_job(db: Session, caller: Caller, job_id: str) -> Job:
    """The tenant's job, or 404 (unknown, malformed or another tenant's id look the same)."""
    job = db.get(Job, parse_job_id(job_id), populate_existing=True, options=[lazyload(Job.flags)])
    if job is None or job.tenant_id != caller.tenant_id:
        raise not_found()
    return job


def request_cancel(db: Session, job: Job) -> bool:
    """Cancel a queued job at once, or ask the worker to stop a processing one; False if final."""
    cancelled_now = rowcount(
        db.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == "queued")
            .values(status="cancelled", cancel_requested=True, finished_at=_now())
        )
    )
    if not cancelled_now:
        asked = rowcount(
            db.execute(
                update(Job)
                .where(Job.id == job.id, Job.status.not_in(FINAL_STATUSES))
                .values(cancel_requested=True)
            )
        )
        db.commit()
        db.refresh(job)
        return bool(asked)
    db.commit()
    db.refresh(job)
    latency = (
        (job.finished_at - job.created_at).total_seconds() if job.finished_at and job.created_at else None
    )
    metrics.job_finished(metrics.client_for(get_settings().redis_url), "cancelled", latency)
    if job.webhook_url:
        try:
            send_final_event(job)
        except Exception:
            log.exception("job %s: could not queue the job.cancelled webhook", job.id)
    end_batch_if_done(db, job.batch_id)
    return True


def end_batch_if_done(db: Session, batch_id: uuid.UUID | None) -> None:
    """After a job of a batch became final or was deleted (committed): finish the batch if no job
    of it is open, and queue its one batch event (``shared.platform.batch_state.finish_batch``)."""
    if batch_id is None:
        return
    finished = finish_batch(db, batch_id)
    db.commit()
    if finished is not None and finished.webhook_url:
        try:
            enqueue_webhook(finished.id, finished.event)
        except Exception:  # beat's webhook sweep sends it once the batch has been over for 2 minutes
            log.exception("batch %s: could not queue the %s webhook", finished.id, finished.event)


def delete_job(db: Session, job: Job, settings: Settings) -> None:
    """Remove the job, its transcript, its deliveries and its audio (a running job is asked to stop)."""
    if job.status == "processing":
        request_cancel(db, job)
    path, batch_id = job.audio_path, job.batch_id
    db.execute(delete(Job).where(Job.id == job.id))
    db.commit()
    end_batch_if_done(db, batch_id)
    if path and Path(path).resolve().is_relative_to(settings.audio_path.resolve()):
        remove_quietly(path)


def deliveries(db: Session, subject: Job | Batch) -> Sequence[WebhookDelivery]:
    """Every delivery attempt of a job's (or a batch's) events, oldest first."""
    owner = WebhookDelivery.batch_id if isinstance(subject, Batch) else WebhookDelivery.job_id
    query = select(WebhookDelivery).where(owner == subject.id)
    return db.scalars(query.order_by(WebhookDelivery.created_at, WebhookDelivery.attempt)).all()


# -- list -------------------------------------------------------------------------------------------


def encode_cursor(row: Job | Batch) -> str:
    """A page's cursor: the last row's (created_at, id), for jobs and batches alike."""
    raw = json.dumps([row.created_at.isoformat(), str(row.id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, job_id = json.loads(raw)
        return datetime.fromisoformat(created), uuid.UUID(job_id)
    except (ValueError, TypeError, binascii.Error):
        raise ApiError(400, "invalid_cursor", "the cursor is not one this API returned") from None


@dataclass(frozen=True)
class JobFilter:
    status: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    limit: int = 20
    cursor: str | None = None
    ids: tuple[str, ...] = ()  # only these jobs (the console follows its uploads in one request)


def list_jobs(db: Session, caller: Caller, f: JobFilter) -> tuple[list[Job], str | None]:
    """One page, newest first, keyed on (created_at, id); the cursor names the last row shown."""
    query = select(Job).where(Job.tenant_id == caller.tenant_id)
    if f.ids:
        try:
            wanted = [uuid.UUID(i) for i in f.ids]
        except ValueError:
            raise ApiError(422, "invalid_request", "id: each must be a job id") from None
        query = query.where(Job.id.in_(wanted))
    if f.status:
        query = query.where(Job.status == f.status)
    if f.created_after:
        query = query.where(Job.created_at >= f.created_after)
    if f.created_before:
        query = query.where(Job.created_at < f.created_before)
    if f.cursor:
        query = query.where(tuple_(Job.created_at, Job.id) < tuple_(*decode_cursor(f.cursor)))
    rows = list(db.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(f.limit + 1)))
    page = rows[: f.limit]
    return page, encode_cursor(page[-1]) if len(rows) > f.limit else None


# -- synchronous calls ------------------------------------------------------------------------------


def _reload(db: Session, job_id: uuid.UUID) -> Job:
    db.rollback()  # end the snapshot: see the worker's commits
    job = db.get(Job, job_id, populate_existing=True)
    if job is None:
        raise ApiError(410, "deleted", "the job was deleted while waiting for it")
    return job


async def wait_for_job(db: Session, job: Job, timeout: float) -> Job:
    """Poll until the job is final; on timeout ask it to stop and answer 504 ``timeout``.

    The wait sleeps on the event loop, holding a worker thread only for each short read.
    """
    deadline = time.monotonic() + timeout
    while job.status not in FINAL_STATUSES:
        if time.monotonic() >= deadline:
            await run_in_threadpool(request_cancel, db, job)
            raise ApiError(504, "timeout", f"the transcription did not finish within {timeout:g} s")
        await asyncio.sleep(POLL_SECONDS)
        job = await run_in_threadpool(_reload, db, job.id)
    return job


def finished_transcript(job: Job) -> Transcript:
    """The transcript of a completed sync job; a failed or cancelled one becomes an HTTP error."""
    if job.status == "completed" and job.transcript is not None:
        return job.transcript
    if job.status == "cancelled":
        raise ApiError(409, "cancelled", "the job was cancelled")
    code = job.error_code or "transcription_failed"
    raise ApiError(ERROR_STATUS.get(code, 500), code, job.error_message or "the transcription failed")


# -- transcripts ------------------------------------------------------------------------------------


def phrase_of(d: dict[str, Any], text: str = "raw") -> Phrase:
    """A stored phrase as the engine's Phrase: its spoken words, or (``text="display"``) its
    written form and spans (the spoken ones where the phrase has none)."""
    key = "display_words" if text == "display" and "display_words" in d else "words"
    words = tuple(Word(w["text"], w["start"], w["end"]) for w in d.get(key) or ())
    return Phrase(phrase_text(d, text), d["start_time"], d["end_time"], d.get("channel", 0), words)


def shown_phrases(job: Job, transcript: Transcript) -> list[dict[str, Any]]:
    """The stored phrases with their written form (computed with the job's options when absent)."""
    return with_display(transcript.phrases, TextOptions.from_stored(job.options))


def transcript_document(job: Job, transcript: Transcript) -> dict[str, Any]:
    phrases = shown_phrases(job, transcript)
    return {
        "job_id": str(job.id),
        "phrases": phrases,
        "full_text": transcript.full_text,
        "display_text": display_text(phrases),
        "duration": transcript.duration,
        "processing_time": job.processing_seconds,
        "channels": transcript.channels,
        "analytics": job.analytics,
    }


def render_transcript(job: Job, fmt: str, text: str = "display") -> tuple[str, str]:
    """``(body, media type)`` of a completed job's transcript; 409 ``not_ready`` before that.
    txt/srt/vtt/tsv show the written form (``display``) unless ``text="raw"``."""
    transcript = job.transcript
    if job.status != "completed" or transcript is None:
        raise ApiError(
            409, "not_ready", f"the job is {job.status}; its transcript exists once it is completed"
        )
    document = transcript_document(job, transcript) if fmt == "json" else None
    phrases = [phrase_of(p, text) for p in shown_phrases(job, transcript)] if fmt != "json" else []
    return render(fmt, phrases, document=document, channels=transcript.channels), MEDIA_TYPES[fmt]


@dataclass(frozen=True)
class SyncUpload:
    """A synchronous call's recording, already where it is kept."""

    job_id: uuid.UUID
    stored: StoredAudio
    filename: str | None


async def receive_sync_upload(
    request: Request,
    settings: Settings,
    fields: type[FormModel],
    check: Callable[[FormModel], None] | None = None,
) -> tuple[SyncUpload, FormModel]:
    """The multipart form of a synchronous call (legacy /transcribe, OpenAI's): its ``file`` part
    written straight to where a job keeps its recording, as it arrives (``api.multipart``; it was
    spooled by Starlette's form reader, then copied), its other fields as ``fields``
    (:func:`form_values`) and refused by ``check`` if it raises, then the recording checked (empty,
    oversized, unreadable: its 4xx). On any refusal the file is removed. Called once the key was
    checked: an unauthenticated body is never read."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", "send the recording as multipart/form-data (file)")
    job_id = uuid.uuid4()
    dest = lambda name: audio_file_path(settings.audio_path, str(job_id), name)  # noqa: E731
    form = await receive_form(request, dest, settings.max_upload_bytes, max_fields=20)
    try:
        values = form_values(fields, form.fields)
        if check is not None:
            check(values)
        if form.stored is None:
            raise RequestValidationError(
                [{"type": "missing", "loc": ("body", "file"), "msg": "Field required"}]
            )
        await run_in_threadpool(check_upload, form.stored, form.filename, settings)
    except BaseException:
        remove_quietly(form.stored.path if form.stored else None)
        raise
    return SyncUpload(job_id, form.stored, form.filename), values


def _is_list(annotation: Any) -> bool:
    """A list, or an optional one (``list[X] | None``)."""
    return get_origin(annotation) is list or any(_is_list(a) for a in get_args(annotation))


def form_values(model: type[FormModel], fields: list[tuple[str, str]]) -> FormModel:
    """A form's text fields as ``model`` (a field declared as a list takes every value sent under
    its name or alias, as FastAPI's ``Form`` does; others the last); 422 as FastAPI answers."""
    values: dict[str, Any] = {}
    lists = {f.alias or name for name, f in model.model_fields.items() if _is_list(f.annotation)}
    for name, value in fields:
        if name in lists:
            values.setdefault(name, []).append(value)
        else:
            values[name] = value
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise invalid_request(exc) from None


async def transcribe_sync(
    db: Session, caller: Caller, settings: Settings, upload: SyncUpload, options: JobOptions
) -> tuple[Job, Transcript]:
    """The synchronous calls (legacy /transcribe, OpenAI): a priority-9 "sync" job, waited for."""
    new = NewJob(options, upload.stored, upload.job_id, upload.filename, kind="sync")
    # create_job removes the upload itself wherever no job is made
    job, _ = await run_in_threadpool(create_job, db, caller, new, settings)
    job = await wait_for_job(db, job, settings.sync_timeout_seconds)
    return job, await run_in_threadpool(finished_transcript, job)
