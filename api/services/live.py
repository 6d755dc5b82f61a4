"""Live sessions from the API's side, shared by the HTTP calls (``api.routes.streaming``) and the
WebSocket protocols (``api.routes.websocket``): one decoding path for both.

The API checks a call against the session (``shared.platform.sessions``), stores the audio and
queues the work for ``tone.stream`` on a worker in one Lua call, and waits for the answer: the
workers push the answers for this process's pieces onto its inbox, which one task of the event
loop reads and hands to the waiting pieces (``Inbox``). Refusals are ``SessionError`` (status,
code, message); each protocol turns them into its own error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import socket
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
from shared.platform.sessions import (
    AsyncSessionStore,
    Options,
    SessionError,
    SessionStore,
    finished,
    inbox_key,
    journal_seconds,
    waiting_member,
)
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


@lru_cache
def async_redis(url: str) -> aioredis.Redis:
    """The event loop's client for the inbox's BLPOP and the metrics. No socket timeout: a BLPOP's
    own timeout bounds each read (redis-py's default of 5 s would cut a 5 s BLPOP short)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=64, timeout=None, socket_connect_timeout=2, socket_timeout=None
    )
    return aioredis.Redis(connection_pool=pool)


PIECE_CONNECTIONS = 1024  # per-piece calls at once; Redis takes 10 000 clients by default


@lru_cache
def async_store(url: str) -> AsyncSessionStore:
    """The per-piece calls (accept, submit) on the event loop, with a socket timeout of their own.
    A burst's calls go out together (``AsyncSessionStore``'s ``Coalescer``: one batch on the wire at
    a time), so few connections are in use; the pool is large anyway so that nothing ever queues
    on it (when each piece took a connection of its own, a pool of 64 had 200 live sessions queued
    on its condition, and every release woke waiters: a fifth of the API's CPU at N = 200)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=PIECE_CONNECTIONS, timeout=10, socket_connect_timeout=2, socket_timeout=5
    )
    return AsyncSessionStore(aioredis.Redis(connection_pool=pool))


log = logging.getLogger("tone.api.live")
INBOX_WAIT = 1.0  # seconds one BLPOP of the inbox waits (then the loop also flushes the metrics)
METRICS_EVERY = 1.0  # seconds between two writes of this process's piece latencies to Redis
PIECE_LATENCY = metrics.Tally()  # this process's live piece latencies, not yet in Redis


class Inbox:
    """This API process's answers from the live workers: every piece it queues names the inbox, the
    workers RPUSH the answers of a round together, and one task of the event loop BLPOPs them and
    resolves each waiting piece's future (``to``: its session and nonce). An answer nobody waits for
    any more (the piece gave up: 504, or its client went away) is dropped. While Redis is away the
    task retries every second; the pieces meanwhile wait and queue themselves again as always."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.key = inbox_key(self.name)
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.task: asyncio.Task[None] | None = None

    def expect(self, member: str) -> asyncio.Future[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done() or self.task.get_loop() is not loop:
            self.task = loop.create_task(self._run(), name="tone-live-inbox")
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.waiting[member] = future
        return future

    def forget(self, member: str) -> None:
        self.waiting.pop(member, None)

    async def _run(self) -> None:
        client = async_redis(self.url)
        while True:
            try:
                # the margin: a Redis that stops answering (no socket timeout here) is given up on
                got = await asyncio.wait_for(client.blpop([self.key], timeout=INBOX_WAIT), INBOX_WAIT + 2)
                if got is not None:
                    batch = [got[1], *(await client.lpop(self.key, 1000) or [])]
                    for raw in batch:
                        self._deliver(raw)
                if PIECE_LATENCY.due(METRICS_EVERY):
                    await PIECE_LATENCY.drain(metrics.Recorder(client)).flush_async()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away or silent: the pieces requeue themselves meanwhile
                log.warning("live inbox %s: %s", self.key, exc)
                await asyncio.sleep(1.0)

    def _deliver(self, raw: bytes) -> None:
        try:
            message = json.loads(raw)
            future = self.waiting.pop(str(message.pop("to")), None)
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("live inbox %s: an unreadable answer was dropped", self.key)
            return
        if future is not None and not future.done():
            future.set_result(message)


_inboxes: dict[tuple[int, str], Inbox] = {}


def inbox_for(url: str) -> Inbox:
    """This process's inbox (after a fork, a new one)."""
    key = (os.getpid(), url)
    if key not in _inboxes:
        _inboxes[key] = Inbox(url)
    return _inboxes[key]


def flush_piece_metrics(client: redis.Redis) -> None:
    """Write the piece latencies this process tallied (``/metrics`` does, before it reads them)."""
    PIECE_LATENCY.drain(metrics.Recorder(client)).flush()


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


async def through_worker(
    store: SessionStore,
    settings: Settings,
    sid: str,
    tenant: str,
    kind: str,
    audio: bytes | None,
    seq: int | None = None,
) -> dict[str, Any]:
    """Accept the call and queue its work item (and audio) in one Lua call, wake a worker if none
    is draining the queue, and wait for the answer's body; a retry of an answered piece gets the
    stored answer."""
    queue = settings.worker_queue
    inbox = inbox_for(settings.redis_url)
    nonce = secrets.token_hex(8)
    member = waiting_member(sid, nonce)
    answer = inbox.expect(member)  # before the item exists: its answer cannot come first
    arrived = time.monotonic()
    queued = False
    try:
        keep = journal_seconds(settings.stream_ttl_seconds, settings.stream_chunk_timeout_seconds)
        accepted, wake = await async_store(settings.redis_url).piece(
            queue, sid, tenant, kind, seq, audio, nonce, inbox.name, keep
        )
        if accepted.action == "done":  # a retry of an applied chunk: its stored answer
            stored = await run_in_threadpool(store.stored_answer, sid, accepted.seq)
            if stored is None:
                raise SessionError(409, "sequence_stale", f"chunk seq {accepted.seq} was applied long ago")
            return reply_body(stored)
        if accepted.action == "final":
            stored = await run_in_threadpool(store.stored_final, sid)
            if stored is not None:
                return reply_body(stored)
            raise finished(sid)
        queued, seq = True, accepted.seq
        if wake:  # no worker is draining the queue: wake one (else no Celery message per piece)
            await run_in_threadpool(enqueue_stream, queue)

        def requeue() -> dict[str, Any] | None:
            """No answer yet: the stored answer if the session advanced past the piece (its worker
            died before replying), else the same item queued again (its worker may have died
            holding it)."""
            next_seq = store.next_seq(sid)
            if next_seq is not None and next_seq > seq:
                stored = store.stored_final(sid) if kind == "finalize" else store.stored_answer(sid, seq)
                if stored is not None:
                    return stored
            store.enqueue(queue, sid, seq, kind, nonce, inbox.name)
            enqueue_stream(queue)
            return None

        return await _answer(settings, answer, requeue)
    except BaseException:  # 504, or the client went away: admission no longer counts it as waiting
        if queued:
            with contextlib.suppress(Exception):
                await async_store(settings.redis_url).given_up(queue, sid, nonce)
        raise
    finally:
        inbox.forget(member)
        if queued and kind == "chunk":
            PIECE_LATENCY.observe("tone_live_piece_latency_seconds", time.monotonic() - arrived)


async def _answer(
    settings: Settings, answer: asyncio.Future[dict[str, Any]], requeue: Callable[[], dict[str, Any] | None]
) -> dict[str, Any]:
    """Wait for the worker's answer, queueing the item again every requeue interval."""
    timeout = settings.stream_chunk_timeout_seconds
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        wait = min(left, settings.stream_requeue_seconds)
        try:
            return reply_body(await asyncio.wait_for(asyncio.shield(answer), max(wait, 0.01)))
        except asyncio.TimeoutError:
            pass
        if left <= wait:
            message = f"no worker answered within {timeout:g} s; send the chunk again (same seq)"
            raise SessionError(504, "timeout", message)
        stored = await run_in_threadpool(requeue)
        if stored is not None:
            return reply_body(stored)


async def send_chunk(
    store: SessionStore, settings: Settings, sid: str, tenant: str, audio: bytes, seq: int | None = None
) -> dict[str, Any]:
    """Apply a piece of audio to the session (a retried ``seq`` gets its first answer); the answer's
    body: ``phrases`` completed by it, ``seq``, ``partial`` (the open phrase's text)."""
    return await through_worker(store, settings, sid, tenant, "chunk", audio, seq)


async def finalize(store: SessionStore, settings: Settings, sid: str, tenant: str) -> dict[str, Any]:
    """End the session; the answer's body holds every phrase of it (the same when called again)."""
    return await through_worker(store, settings, sid, tenant, "finalize", None)


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
    names = [b"job", b"job_id", b"duration", b"options"]  # not the states: hundreds of KiB a channel
    raw = {
        n: v for n, v in zip(names, cast("list[bytes | None]", store.r.hmget(key, names))) if v is not None
    }
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
