"""Dependencies shared by the routes: settings, a DB session, Redis, and the calling tenant.

The tenant comes from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; every authenticated
request is also counted against the key's per-minute limit. With ``TONE_AUTH_DISABLED=1`` (local
use only) every request acts as the tenant "local".
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Annotated

import redis
from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.requests import HTTPConnection

from api.errors import ApiError
from api.ratelimit import check_auth_failures, check_rate, count_auth_failure
from shared.db.session import sessionmaker_for
from shared.platform.keys import get_or_create_tenant, verify_key
from shared.platform.settings import Settings, get_settings

LOCAL_TENANT = "local"
_LAST_USED_EVERY = timedelta(minutes=1)

SettingsDep = Annotated[Settings, Depends(get_settings)]


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


def get_redis(settings: SettingsDep) -> redis.Redis:
    return redis_for(settings.redis_url)


RedisDep = Annotated[redis.Redis, Depends(get_redis)]


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


def authenticate(request: Request, settings: SettingsDep, client: RedisDep) -> Caller:
    """The caller, from a database session of its own that is closed at once: a call that waits
    long afterwards (a live piece waiting for its answer) holds no pooled connection meanwhile. An
    address that failed to authenticate too often this minute gets 429 first."""
    key = presented_key(request)
    address = client_address(request)
    if key is not None and not settings.auth_disabled:
        check_auth_failures(client, address, settings.auth_failures_per_minute)
    db = sessionmaker_for(settings.database_url)()
    try:
        return resolve_caller(db, settings, key)
    except ApiError as exc:
        if exc.status == 401 and key is not None:
            count_auth_failure(client, address)
        raise
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


def current_caller(
    caller: Annotated[Caller, Depends(authenticate)], settings: SettingsDep, client: RedisDep
) -> Caller:
    """The authenticated caller, after counting this request against its per-minute limit."""
    check_rate(client, caller.key_prefix, settings.rate_limit_per_minute)
    return caller


CallerDep = Annotated[Caller, Depends(current_caller)]
