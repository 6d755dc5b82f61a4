"""Live sessions from the API's side, shared by the HTTP calls (``api.routes.streaming``) and the
WebSocket protocols (``api.routes.websocket``): one decoding path for both.

The API checks a call against the session (``shared.sessions``), stores the audio, queues the work
for ``tone.stream`` on a worker and waits for the answer with BLPOP on the event loop. Refusals are
``SessionError`` (status, code, message); each protocol turns them into its own error shape.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from starlette.concurrency import run_in_threadpool

from shared.sessions import Accepted, Options, SessionError, SessionStore
from shared.settings import Settings


@lru_cache
def session_store(client: redis.Redis) -> SessionStore:
    return SessionStore(client)


@lru_cache
def async_redis(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, socket_connect_timeout=2)


def send_task(queue: str) -> None:
    from worker.celery_app import STREAM_TASK, app

    app.send_task(STREAM_TASK, args=[queue], queue=queue, priority=0)


def reply_body(reply: dict[str, Any]) -> dict[str, Any]:
    """A worker's reply: its body, or the SessionError it carries."""
    if reply.get("status") != 200:
        error = reply.get("error") or {}
        status = int(reply.get("status") or 500)
        raise SessionError(status, error.get("code", "error"), error.get("message", ""))
    return cast("dict[str, Any]", reply["body"])


async def create(store: SessionStore, tenant: str, options: Options, ttl: int) -> str:
    return await run_in_threadpool(store.create, tenant, options, ttl)


async def accept(store: SessionStore, sid: str, tenant: str, kind: str, seq: int | None) -> Accepted:
    return await run_in_threadpool(store.accept, sid, tenant, kind, seq)


async def through_worker(
    store: SessionStore, settings: Settings, sid: str, seq: int, kind: str, audio: bytes | None
) -> dict[str, Any]:
    """Queue the work item (and its audio), wake a worker, and wait for the answer's body."""

    def enqueue() -> str:
        if audio is not None:
            keep = max(store.ttl_of(sid), int(settings.stream_chunk_timeout_seconds) + 60)
            store.store_chunk(sid, seq, audio, keep)
        key = store.enqueue(settings.worker_queue, sid, seq, kind)
        send_task(settings.worker_queue)
        return key

    key = await run_in_threadpool(enqueue)
    timeout = settings.stream_chunk_timeout_seconds
    got = await async_redis(settings.redis_url).blpop([key], timeout=timeout)
    if got is None:
        message = f"no worker answered within {timeout:g} s; send the chunk again (same seq)"
        raise SessionError(504, "timeout", message)
    return reply_body(json.loads(got[1]))


async def send_chunk(
    store: SessionStore, settings: Settings, sid: str, tenant: str, audio: bytes, seq: int | None = None
) -> dict[str, Any]:
    """Apply a piece of audio to the session (a retried ``seq`` gets its first answer); the answer's
    body: ``phrases`` completed by it, ``seq``, ``partial`` (the open phrase's text)."""
    accepted = await accept(store, sid, tenant, "chunk", seq)
    if accepted.action == "done":
        stored = await run_in_threadpool(store.stored_answer, sid, accepted.seq)
        if stored is None:
            raise SessionError(409, "sequence_stale", f"chunk seq {accepted.seq} was applied long ago")
        return reply_body(stored)
    return await through_worker(store, settings, sid, accepted.seq, "chunk", audio)


async def finalize(store: SessionStore, settings: Settings, sid: str, tenant: str) -> dict[str, Any]:
    """End the session; the answer's body holds every phrase of it (the same when called again)."""
    accepted = await accept(store, sid, tenant, "finalize", None)
    if accepted.action == "final":
        stored = await run_in_threadpool(store.stored_final, sid)
        if stored is not None:
            return reply_body(stored)
    return await through_worker(store, settings, sid, accepted.seq, "finalize", None)
