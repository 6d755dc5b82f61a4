"""Requests per API key per minute, counted in Redis: a window of ``WINDOW_SECONDS`` opens at the
first request it counts (``SET NX EX``, then ``INCR``, which keeps the expiry), so a burst is never
split across a clock-minute boundary (a fixed clock window let 2x the limit through at the boundary
and made the count depend on where the minute fell).

Every API process shares the counters, so the limit holds across replicas. Over the limit a request
is answered 429 ``rate_limited`` with ``Retry-After`` (seconds until the window ends). Failed
authentications (a wrong or revoked key) are counted the same way per client address
(:func:`check_auth_failures`, :func:`count_auth_failure`): past the limit that address gets 429
before its key is even looked up, so keys cannot be guessed at full speed.
"""

from __future__ import annotations

import logging
import math

import redis
import redis.asyncio as aioredis

from api.errors import ApiError

WINDOW_SECONDS = 60
log = logging.getLogger("api.ratelimit")


async def _count(client: aioredis.Redis, counter: str) -> tuple[int, int]:
    """Count one event in ``counter``'s window (opened now if none is open): the window's count and
    the seconds until it ends."""
    pipe = client.pipeline()
    pipe.set(counter, 0, ex=WINDOW_SECONDS, nx=True)
    pipe.incr(counter)
    pipe.pttl(counter)
    _, count, ttl_ms = await pipe.execute()
    return int(count), _seconds_left(ttl_ms)


def _seconds_left(ttl_ms: int | None) -> int:
    """Whole seconds until the window ends (a missing or expiry-less counter: a whole window)."""
    return math.ceil(ttl_ms / 1000) if ttl_ms and ttl_ms > 0 else WINDOW_SECONDS


def _refused(message: str, retry_after: int) -> ApiError:
    return ApiError(
        429, "rate_limited", f"{message}; retry in {retry_after} s", headers={"Retry-After": str(retry_after)}
    )


def rate_counter(key: str) -> str:
    return f"tone:ratelimit:{key}"


def refuse_over_rate(count: int, retry_after: int, limit: int) -> None:
    """429 when a window's ``count`` passed ``limit``."""
    if count > limit:
        raise _refused(f"more than {limit} requests per minute for this key", retry_after)


async def check_rate(client: aioredis.Redis, key: str, limit: int) -> None:
    """Count one request for ``key``; raise 429 when the window's count passes ``limit`` (0: off)."""
    if limit <= 0:
        return
    try:
        count, retry_after = await _count(client, rate_counter(key))
    except redis.RedisError as exc:  # fail open: the limit must not take the API down with Redis
        log.warning("rate limit not counted (Redis: %s)", exc)
        return
    refuse_over_rate(count, retry_after, limit)


def _auth_counter(address: str) -> str:
    return f"tone:authfail:{address}"


async def check_auth_failures(
    client: aioredis.Redis, address: str, limit: int, also: str | None = None, count: str | None = None
) -> tuple[bytes | None, tuple[int, int] | None]:
    """429 ``rate_limited`` when ``address`` already failed to authenticate ``limit`` times in its
    current window (0: off); Redis trouble lets the request through. Returns the value of the key
    ``also``, read in the same round trip (b"0" when unset; None when Redis did not answer), and,
    when ``count`` names a rate counter, one request counted in it in the same round trip (as
    :func:`check_rate` counts: in a transaction, so the window's expiry is never lost): its window's
    count and seconds left (None when not counted). One round trip where a request had two."""
    try:
        pipe = client.pipeline(transaction=count is not None)
        pipe.get(_auth_counter(address))
        pipe.pttl(_auth_counter(address))
        if count is not None:
            pipe.set(count, 0, ex=WINDOW_SECONDS, nx=True)
            pipe.incr(count)
            pipe.pttl(count)
        if also is not None:
            pipe.get(also)
        failures, ttl_ms, *more = await pipe.execute()
    except redis.RedisError as exc:
        log.warning("failed authentications not checked (Redis: %s)", exc)
        return None, None
    if limit > 0 and int(failures or 0) >= limit:
        message = f"{limit} failed authentications within a minute from this address"
        raise _refused(message, _seconds_left(ttl_ms))
    rate = (int(more[1]), _seconds_left(more[2])) if count is not None else None
    return ((more[-1] or b"0") if also is not None else None), rate


async def count_auth_failure(client: aioredis.Redis, address: str) -> None:
    try:
        await _count(client, _auth_counter(address))
    except redis.RedisError as exc:
        log.warning("failed authentication not counted (Redis: %s)", exc)
