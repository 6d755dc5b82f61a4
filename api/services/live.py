"""Live sessions from the API's side, shared by the HTTP calls (``api.routes.streaming``) and the
WebSocket protocols (``api.routes.websocket``): one decoding path for both.

The API checks a call against the session (``shared.platform.sessions``), stores the audio, queues the work
for ``tone.stream`` on a worker and waits for the answer with BLPOP on the event loop. Refusals are
``SessionError`` (status, code, message); each protocol turns them into its own error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from starlette.concurrency import run_in_threadpool

from shared.platform import metrics
from shared.platform.sessions import Accepted, AsyncSessionStore, Options, SessionError, SessionStore
from shared.platform.settings import Settings
from shared.queue import enqueue_stream
from shared.text.options import TextOptionError, TextOptions, parse_text_options


def live_text_options(raw: dict[str, Any]) -> TextOptions:
    """A live session's written-form options from its config; TextOptionError (422
    ``invalid_<option>``) on a bad one. ``redact_audio`` has no stored recording to act on."""
    options = parse_text_options(raw)
    if options.vocabulary and raw.get("decoder") == "greedy":
        raise TextOptionError("vocabulary", "vocabulary needs beam search: decoder beam or auto, not greedy")
    if options.redact_audio:
        raise TextOptionError("redact_audio", "a live session keeps no recording: redact_audio is for jobs")
    return options


def _tenant_text(settings: Settings, tenant_id: uuid.UUID, options: Options) -> Options:
    from shared.db.models import TenantVocabulary
    from shared.db.session import session_scope

    with session_scope(settings.database_url) as db:
        row = db.get(TenantVocabulary, tenant_id)
        if row is None or not (row.words or row.replacements):
            return options
        from api.services.jobs import merged_with_tenant

        text = merged_with_tenant(options.text_options(), row)
    return dataclasses.replace(options, text=json.dumps(text, ensure_ascii=False))


async def with_tenant_vocabulary(settings: Settings, tenant_id: uuid.UUID, options: Options) -> Options:
    """A live session's options with the tenant's default vocabulary and replacements added."""
    return await run_in_threadpool(_tenant_text, settings, tenant_id, options)


@lru_cache
def session_store(client: redis.Redis) -> SessionStore:
    return SessionStore(client)


WAITING_CONNECTIONS = 4096  # pieces waiting for their answers at once (one connection each)


@lru_cache
def async_redis(url: str) -> aioredis.Redis:
    """The event loop's client for the answers' BLPOP. No socket timeout: a BLPOP's own timeout
    bounds each read (redis-py's default of 5 s would cut a 5 s BLPOP short and answer 500); the
    wait below adds its own margin in case Redis itself stops answering."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=WAITING_CONNECTIONS, timeout=None, socket_connect_timeout=2, socket_timeout=None
    )
    return aioredis.Redis(connection_pool=pool)


PIECE_CONNECTIONS = 1024  # per-piece calls at once; Redis takes 10 000 clients by default


@lru_cache
def async_store(url: str) -> AsyncSessionStore:
    """The per-piece calls (accept, submit) on the event loop, with a socket timeout of their own.
    The pool is large: with 64 connections, 200 live sessions queued on its condition and every
    release woke waiters (a fifth of the API's CPU at N = 200, measured with py-spy)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=PIECE_CONNECTIONS, timeout=10, socket_connect_timeout=2, socket_timeout=5
    )
    return AsyncSessionStore(aioredis.Redis(connection_pool=pool))


BLPOP_MARGIN = 2.0  # seconds past a BLPOP's timeout before its read is given up


def reply_body(reply: dict[str, Any]) -> dict[str, Any]:
    """A worker's reply: its body, or the SessionError it carries."""
    if reply.get("status") != 200:
        error = reply.get("error") or {}
        status = int(reply.get("status") or 500)
        raise SessionError(status, error.get("code", "error"), error.get("message", ""))
    return cast("dict[str, Any]", reply["body"])


async def create(
    store: SessionStore,
    settings: Settings,
    tenant: str,
    options: Options,
    ttl: int,
    job: dict[str, Any] | None = None,
) -> str:
    """A new session, once admission counted it in (503 ``over_capacity`` when the live workers
    are behind or the deployment's cap is reached: ``shared.platform.sessions``, Admission)."""
    sid = uuid.uuid4().hex
    await async_store(settings.redis_url).admit(
        settings.worker_queue,
        sid,
        settings.stream_max_sessions,
        settings.stream_admit_lag_seconds,
        settings.stream_chunk_timeout_seconds + 10,
    )
    return await run_in_threadpool(store.create, tenant, options, ttl, job, sid)


async def accept(settings: Settings, sid: str, tenant: str, kind: str, seq: int | None) -> Accepted:
    return await async_store(settings.redis_url).accept(sid, tenant, kind, seq)


async def through_worker(
    store: SessionStore, settings: Settings, sid: str, seq: int, kind: str, audio: bytes | None
) -> dict[str, Any]:
    """Queue the work item (and its audio), wake a worker, and wait for the answer's body."""

    async def enqueue() -> str:
        # the journal outlives any session (whose TTL is at most stream_ttl_seconds) and any wait
        keep = max(settings.stream_ttl_seconds, int(settings.stream_chunk_timeout_seconds) + 60)
        key, awake = await async_store(settings.redis_url).submit(
            settings.worker_queue, sid, seq, kind, audio, keep
        )
        if not awake:  # no worker is draining the queue: wake one (else no Celery message per piece)
            await run_in_threadpool(enqueue_stream, settings.worker_queue)
        return key

    def requeue() -> dict[str, Any] | None:
        """No answer yet: the stored answer if the session advanced past ``seq`` (its worker died
        before replying), else the same item queued again (its worker may have died holding it)."""
        next_seq = store.next_seq(sid)
        if next_seq is not None and next_seq > seq:
            stored = store.stored_final(sid) if kind == "finalize" else store.stored_answer(sid, seq)
            if stored is not None:
                return stored
        store.enqueue(settings.worker_queue, sid, seq, kind, nonce=key.rsplit(":", 1)[1])
        enqueue_stream(settings.worker_queue)
        return None

    arrived = time.monotonic()
    key = await enqueue()
    try:
        return await _answer(settings, key, requeue)
    except BaseException:  # 504, or the client went away: admission no longer counts it as waiting
        with contextlib.suppress(Exception):
            await async_store(settings.redis_url).given_up(settings.worker_queue, sid, key.rsplit(":", 1)[1])
        raise
    finally:
        if kind == "chunk":  # on the event loop's pooled client: no thread hop, no new connection
            piece = metrics.Recorder(async_redis(settings.redis_url))
            await piece.observe("tone_live_piece_latency_seconds", time.monotonic() - arrived).flush_async()


async def _answer(
    settings: Settings, key: str, requeue: Callable[[], dict[str, Any] | None]
) -> dict[str, Any]:
    """Wait for the worker's reply on ``key``, queueing the item again every requeue interval."""
    timeout = settings.stream_chunk_timeout_seconds
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        wait = min(left, settings.stream_requeue_seconds)
        got = await _blpop(settings.redis_url, key, max(wait, 0.01))
        if got is not None:
            return reply_body(json.loads(got))
        if left <= wait:
            message = f"no worker answered within {timeout:g} s; send the chunk again (same seq)"
            raise SessionError(504, "timeout", message)
        stored = await run_in_threadpool(requeue)
        if stored is not None:
            return reply_body(stored)


async def _blpop(url: str, key: str, timeout: float) -> bytes | None:
    """The answer from the reply list, or None when none came within ``timeout`` (or Redis did
    not answer the read in time: the caller then queues the piece again, as for a silent worker)."""
    try:
        got = await asyncio.wait_for(async_redis(url).blpop([key], timeout=timeout), timeout + BLPOP_MARGIN)
    except (asyncio.TimeoutError, redis.TimeoutError):
        return None
    return None if got is None else cast("bytes", got[1])


async def send_chunk(
    store: SessionStore, settings: Settings, sid: str, tenant: str, audio: bytes, seq: int | None = None
) -> dict[str, Any]:
    """Apply a piece of audio to the session (a retried ``seq`` gets its first answer); the answer's
    body: ``phrases`` completed by it, ``seq``, ``partial`` (the open phrase's text)."""
    accepted = await accept(settings, sid, tenant, "chunk", seq)
    if accepted.action == "done":
        stored = await run_in_threadpool(store.stored_answer, sid, accepted.seq)
        if stored is None:
            raise SessionError(409, "sequence_stale", f"chunk seq {accepted.seq} was applied long ago")
        return reply_body(stored)
    return await through_worker(store, settings, sid, accepted.seq, "chunk", audio)


async def finalize(store: SessionStore, settings: Settings, sid: str, tenant: str) -> dict[str, Any]:
    """End the session; the answer's body holds every phrase of it (the same when called again)."""
    accepted = await accept(settings, sid, tenant, "finalize", None)
    if accepted.action == "final":
        stored = await run_in_threadpool(store.stored_final, sid)
        if stored is not None:
            return reply_body(stored)
    return await through_worker(store, settings, sid, accepted.seq, "finalize", None)


def store_job(settings: Settings, tenant_id: uuid.UUID, options: Options, duration: float,
              phrases: list[dict[str, Any]], webhook_url: str | None, started: datetime,
              metadata: dict[str, Any] | None = None) -> str:  # fmt: skip
    """Keep a finished session as a completed job of kind "stream" with its transcript, so that it
    is listed, exported and webhooked like any other job (``store`` of /v1/stream and of
    ``POST /transcribe/streaming``)."""
    from shared.db.models import Job, Transcript
    from shared.db.session import session_scope
    from shared.platform.rules import FLAGGED_EVENT
    from shared.platform.search import after_transcript_stored

    duration = round(duration, 3)
    split = options.channels == 2
    opts = {"channels": "split" if split else "mix", "decoder": options.decoder,
            "sample_rate": options.sample_rate, "encoding": options.encoding}  # fmt: skip
    opts.update(options.text_options())
    with session_scope(settings.database_url) as db:
        job = Job(tenant_id=tenant_id, kind="stream", status="completed", progress=1.0,
                  queue=settings.worker_queue, options=opts, source="stream", duration=duration,
                  started_at=started, finished_at=datetime.now(timezone.utc), webhook_url=webhook_url,
                  client_metadata=metadata,
                  processing_seconds=(datetime.now(timezone.utc) - started).total_seconds())  # fmt: skip
        db.add(job)
        db.flush()
        db.add(Transcript(job_id=job.id, phrases=phrases, full_text=" ".join(p["text"] for p in phrases),
                          duration=duration, channels=2 if split else 1))  # fmt: skip
        db.flush()
        flagged = after_transcript_stored(db, job.id, tenant_id, phrases, duration, 2 if split else 1)
        job_id = str(job.id)
    if webhook_url:
        from shared.queue import enqueue_webhook

        enqueue_webhook(job_id, "job.completed")
        for rule_id in flagged:
            enqueue_webhook(job_id, f"{FLAGGED_EVENT}:{rule_id}")
    return job_id


def _keep_as_job(
    store: SessionStore, settings: Settings, sid: str, tenant_id: uuid.UUID, phrases: list[dict[str, Any]]
) -> str | None:
    from shared.platform.sessions import session_key

    key = session_key(sid)
    raw = cast("dict[bytes, bytes]", store.r.hgetall(key))
    if b"job" not in raw:
        return None
    if b"job_id" in raw:
        return raw[b"job_id"].decode()
    if not store.r.hsetnx(key, "job_claim", "1"):  # another finalize call is storing it
        for _ in range(100):
            value = store.r.hget(key, "job_id")
            if value:
                return cast("bytes", value).decode()
            time.sleep(0.05)
        return None
    job = json.loads(raw[b"job"])
    started = datetime.fromtimestamp(float(job["started"]), timezone.utc)
    duration = float(raw.get(b"duration", b"0"))
    options = Options.from_json(raw[b"options"])
    job_id = store_job(
        settings, tenant_id, options, duration, phrases, job.get("webhook_url"), started, job.get("metadata")
    )
    store.r.hset(key, "job_id", job_id)
    return job_id


async def keep_as_job(
    store: SessionStore, settings: Settings, sid: str, tenant_id: uuid.UUID, phrases: list[dict[str, Any]]
) -> str | None:
    """After finalize: a session created with ``store`` becomes a completed job (once; a repeated
    finalize gets the same job id). None for a session without ``store``."""
    return await run_in_threadpool(_keep_as_job, store, settings, sid, tenant_id, phrases)
