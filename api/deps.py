"""Dependencies shared by the routes: settings, a DB session, Redis, and the calling tenant.

The tenant comes from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; every authenticated
request is also counted against the key's per-minute limit. With ``TONE_AUTH_DISABLED=1`` (local
use only) every request acts as the tenant "local".

A verified key is kept in the process's memory (its SHA-256, never the key) for KEY_CACHE_SECONDS,
along with Redis's revocation counter (``shared.platform.keys.REVOCATIONS_KEY``) as it was then;
each request reads that counter in the round trip that checks the address's failed
authentications, and any revocation since sends the key back to the database. A request with a
known key thus needs no database connection (a live HTTP piece: the key's query, the pool's
ping, the rollback and a new connection whenever 64 pieces overran the pool were a third of the
API's samples at 64 streams). Without Redis's answer the database decides, as before.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Annotated

import redis
import redis.asyncio as aioredis
from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from api.errors import ApiError
from api.ratelimit import check_auth_failures, check_rate, count_auth_failure, rate_counter, refuse_over_rate
from shared.db.session import sessionmaker_for
from shared.platform.keys import REVOCATIONS_KEY, get_or_create_tenant, verify_key
from shared.platform.settings import Settings, get_settings

LOCAL_TENANT = "local"
_LAST_USED_EVERY = timedelta(minutes=1)


async def settings_dependency() -> Settings:
    """The settings (async: FastAPI runs a plain function dependency in its threadpool, a hop per
    request for a cached value)."""
    return get_settings()


SettingsDep = Annotated[Settings, Depends(settings_dependency)]


def get_db(settings: SettingsDep) -> Iterator[Session]:
    session = sessionmaker_for(settings.database_url)()
    try:
        yield session
    finally:
        session.close()


DbDep = Annotated[Session, Depends(get_db)]


@lru_cache
def redis_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


async def get_redis(settings: SettingsDep) -> redis.Redis:
    return redis_for(settings.redis_url)


RedisDep = Annotated[redis.Redis, Depends(get_redis)]


@lru_cache
def async_redis_for(url: str) -> aioredis.Redis:
    """The event loop's client for the per-request checks (keys, rate limits): no threadpool hop per
    request. Short timeouts (the checks fail open); a blocking pool, as large as Redis allows."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=1024, timeout=5, socket_connect_timeout=2, socket_timeout=2
    )
    return aioredis.Redis(connection_pool=pool)


@dataclass(frozen=True)
class Caller:
    """Who is calling: the tenant, and the key prefix the rate limit counts against."""

    tenant_id: uuid.UUID
    tenant_name: str
    key_prefix: str


def presented_key(connection: HTTPConnection) -> str | None:
    """The key in ``Authorization: Bearer`` or ``X-API-Key`` (of a request or a WebSocket)."""
    auth = connection.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else None
    return connection.headers.get("x-api-key") or None


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def client_address(connection: HTTPConnection) -> str:
    """The caller's address (uvicorn's, or the proxy's X-Forwarded-For with --proxy-headers)."""
    return connection.client.host if connection.client else "unknown"


KEY_CACHE_SECONDS = 30.0  # a verified key is asked of the database again after this
KEY_CACHE_SIZE = 10_000


class VerifiedKeys:
    """Callers of recently verified keys, by the key's SHA-256 (see the module's docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[Caller, float, bytes]] = OrderedDict()

    @staticmethod
    def name(key: str | None) -> str:
        """What the keys are kept under (hashed once per request, then given to the methods)."""
        return hashlib.sha256((key or "").encode()).hexdigest()

    def get(self, name: str, revocations: bytes | None) -> Caller | None:
        if revocations is None:
            return None
        with self._lock:
            entry = self._entries.get(name)
        if entry is None or entry[1] < time.monotonic() or entry[2] != revocations:
            return None
        return entry[0]

    def peek(self, name: str) -> Caller | None:
        """The caller kept under ``name``, unchecked against revocations (``get`` checks)."""
        with self._lock:
            entry = self._entries.get(name)
        return entry[0] if entry is not None and entry[1] >= time.monotonic() else None

    def put(self, name: str, caller: Caller, revocations: bytes | None) -> None:
        if revocations is None:
            return
        with self._lock:
            self._entries[name] = (caller, time.monotonic() + KEY_CACHE_SECONDS, revocations)
            self._entries.move_to_end(name)
            while len(self._entries) > KEY_CACHE_SIZE:
                self._entries.popitem(last=False)


VERIFIED = VerifiedKeys()


async def caller_of(settings: Settings, key: str | None, address: str, *, rate_limit: int = 0) -> Caller:
    """The caller of ``key`` (a recently verified one from memory, else from a database session of
    its own that is closed at once: a call that waits long afterwards, a live piece waiting for its
    answer, holds no pooled connection meanwhile). An address that failed to authenticate too often
    this minute gets 429 first. With ``rate_limit``, the request is also counted against the key's
    per-minute limit (429 past it): for a key kept in memory, in the same Redis round trip."""
    client = async_redis_for(settings.redis_url)
    checked = key is not None and not settings.auth_disabled
    limit = settings.auth_failures_per_minute if checked else 0
    name = VERIFIED.name(key)
    known = VERIFIED.peek(name) if rate_limit > 0 else None
    counter = rate_counter(known.key_prefix) if known is not None else None
    revocations, rate = await check_auth_failures(client, address, limit, REVOCATIONS_KEY, count=counter)
    caller = VERIFIED.get(name, revocations)
    if caller is None:
        try:
            caller = await _verified(
                name, revocations, lambda: run_in_threadpool(_from_database, settings, key)
            )
        except ApiError as exc:
            if exc.status == 401 and checked:
                await count_auth_failure(client, address)
            raise
    if rate_limit > 0:
        if rate is not None and known is not None and known.key_prefix == caller.key_prefix:
            refuse_over_rate(*rate, rate_limit)
        else:
            await check_rate(client, caller.key_prefix, rate_limit)
    return caller


# the database lookups in flight, by the key's name and the revocation counter they were begun under
_VERIFYING: dict[tuple[str, bytes | None], asyncio.Task[Caller]] = {}


async def _verified(name: str, revocations: bytes | None, lookup: Callable[[], Awaitable[Caller]]) -> Caller:
    """The caller of a key not in memory, from one database lookup however many requests with the
    key arrive while it runs (calls starting together, or a key's entry expiring under load: each
    was a lookup, a pooled connection, and past the pool's size a new connection, of its own).
    Requests that arrive meanwhile under the same revocation counter share its result, or its
    error; the lookup is a task of its own, so a client that goes away cancels only its own wait."""
    entry = (name, revocations)
    task = _VERIFYING.get(entry)
    if task is None:

        async def look_up() -> Caller:
            caller = await lookup()
            VERIFIED.put(name, caller, revocations)
            return caller

        def done(t: asyncio.Task[Caller]) -> None:
            _VERIFYING.pop(entry, None)
            if not t.cancelled():
                t.exception()  # (retrieved, even when every waiter went away)

        task = _VERIFYING[entry] = asyncio.ensure_future(look_up())
        task.add_done_callback(done)
    return await asyncio.shield(task)


def _from_database(settings: Settings, key: str | None) -> Caller:
    db = sessionmaker_for(settings.database_url)()
    try:
        return resolve_caller(db, settings, key)
    finally:
        db.close()


def resolve_caller(db: Session, settings: Settings, key: str | None) -> Caller:
    """The tenant of ``key`` (the tenant "local" when auth is disabled); 401 ``unauthorized``."""
    if settings.auth_disabled:
        tenant = get_or_create_tenant(db, LOCAL_TENANT)
        db.commit()
        return Caller(tenant.id, tenant.name, LOCAL_TENANT)
    if key is None:
        raise _unauthorized("an API key is required: Authorization: Bearer <key> or X-API-Key: <key>")
    row = verify_key(db, key)
    if row is None:
        raise _unauthorized("the API key is unknown or revoked")
    now = datetime.now(timezone.utc)
    if row.last_used_at is None or now - row.last_used_at > _LAST_USED_EVERY:
        row.last_used_at = now
        db.commit()
    return Caller(row.tenant_id, row.tenant.name, row.prefix)


async def current_caller(request: Request, settings: SettingsDep) -> Caller:
    """The authenticated caller, after counting this request against its per-minute limit."""
    limit = settings.rate_limit_per_minute
    return await caller_of(settings, presented_key(request), client_address(request), rate_limit=limit)


CallerDep = Annotated[Caller, Depends(current_caller)]
