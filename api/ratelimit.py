"""Requests per API key per minute: a fixed-window counter in Redis (``INCR`` + ``EXPIRE``).

Every API process shares the counters, so the limit holds across replicas. Over the limit a request
is answered 429 ``rate_limited`` with ``Retry-After`` (seconds until the window ends). Failed
authentications (a wrong or revoked key) are counted the same way per client address
(:func:`check_auth_failures`, :func:`count_auth_failure`): past the limit that address gets 429
before its key is even looked up, so keys cannot be guessed at full speed.
"""

from __future__ import annotations

import logging
import time

import redis

from api.errors import ApiError

WINDOW_SECONDS = 60
log = logging.getLogger("api.ratelimit")


def check_rate(client: redis.Redis, key: str, limit: int, now: float | None = None) -> None:
    """Count one request for ``key``; raise 429 when the window's count passes ``limit`` (0: off)."""
    if limit <= 0:
        return
    now = time.time() if now is None else now
    window = int(now // WINDOW_SECONDS)
    counter = f"tone:ratelimit:{key}:{window}"
    pipe = client.pipeline()
    pipe.incr(counter)
    pipe.expire(counter, WINDOW_SECONDS * 2)
    try:
        count = int(pipe.execute()[0])
    except redis.RedisError as exc:  # fail open: the limit must not take the API down with Redis
        log.warning("rate limit not counted (Redis: %s)", exc)
        return
    if count > limit:
        retry_after = max(1, int((window + 1) * WINDOW_SECONDS - now + 0.999))
        raise ApiError(
            429,
            "rate_limited",
            f"more than {limit} requests per minute for this key; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )


def _retry_after(now: float) -> int:
    return max(1, int((int(now // WINDOW_SECONDS) + 1) * WINDOW_SECONDS - now + 0.999))


def _auth_counter(address: str, now: float) -> str:
    return f"tone:authfail:{address}:{int(now // WINDOW_SECONDS)}"


def check_auth_failures(client: redis.Redis, address: str, limit: int, now: float | None = None) -> None:
    """429 ``rate_limited`` when ``address`` already failed to authenticate ``limit`` times this
    minute (0: off); Redis trouble lets the request through."""
    if limit <= 0:
        return
    now = time.time() if now is None else now
    try:
        failures = int(client.get(_auth_counter(address, now)) or 0)
    except redis.RedisError as exc:
        log.warning("failed authentications not checked (Redis: %s)", exc)
        return
    if failures >= limit:
        retry_after = _retry_after(now)
        raise ApiError(
            429,
            "rate_limited",
            f"{limit} failed authentications this minute from this address; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )


def count_auth_failure(client: redis.Redis, address: str, now: float | None = None) -> None:
    now = time.time() if now is None else now
    counter = _auth_counter(address, now)
    pipe = client.pipeline()
    pipe.incr(counter)
    pipe.expire(counter, WINDOW_SECONDS * 2)
    try:
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("failed authentication not counted (Redis: %s)", exc)
