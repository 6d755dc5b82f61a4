"""Lua scripts run many at a time: pipelined by EVALSHA, and, in an event loop, coalesced.

redis-py runs a pipeline that holds ``Script`` calls by asking Redis ``SCRIPT EXISTS`` first, one
more round trip for every pipeline (a live round's two pipelines, and each batch of the API's
piece calls, paid it). Here the calls go by EVALSHA alone (``Script.sha`` is the script's SHA-1,
known without Redis); a call that finds its script missing (Redis restarted or flushed: NOSCRIPT,
so it did not run) loads it, and only those calls run again.

``Coalescer``: an event loop's calls of scripts go to Redis together. A call made while none is on
the wire goes at once, alone; calls made while one batch is on the wire go out together, in one
pipeline, as soon as it is back. At 200 live sessions a burst of pieces reached the API within a
few ms, and every piece's own EVALSHA (a pooled connection, a write, a wake-up for its read) was a
third of the API's CPU.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript, Script
from redis.exceptions import NoScriptError

Call = tuple[Script | AsyncScript, Sequence[Any], Sequence[Any]]  # (script, keys, args)


def _queue(pipe: Any, calls: Sequence[Call]) -> None:
    for script, keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)


def _missing(results: list[Any]) -> list[int]:
    return [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]


def _raise_first(results: list[Any]) -> list[Any]:
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results


def run_scripts(client: redis.Redis, calls: Sequence[Call], *, raise_on_error: bool = True) -> list[Any]:
    """Each call's reply, in order, from one pipeline (plus one where a script had to be loaded).
    ``raise_on_error``: the first error is raised (else errors are returned in their places)."""
    if not calls:
        return []
    pipe = client.pipeline(transaction=False)
    _queue(pipe, calls)
    results = pipe.execute(raise_on_error=False)
    missing = _missing(results)
    if missing:
        for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
            client.script_load(script.script)
        pipe = client.pipeline(transaction=False)
        _queue(pipe, [calls[i] for i in missing])
        for i, r in zip(missing, pipe.execute(raise_on_error=False)):
            results[i] = r
    return _raise_first(results) if raise_on_error else results


async def run_scripts_async(client: aioredis.Redis, calls: Sequence[Call]) -> list[Any]:
    """``run_scripts`` on an asyncio client; errors are returned in their places."""
    if not calls:
        return []
    pipe = client.pipeline(transaction=False)
    _queue(pipe, calls)
    results = await pipe.execute(raise_on_error=False)
    missing = _missing(results)
    if missing:
        for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
            await client.script_load(script.script)
        pipe = client.pipeline(transaction=False)
        _queue(pipe, [calls[i] for i in missing])
        for i, r in zip(missing, await pipe.execute(raise_on_error=False)):
            results[i] = r
    return list(results)


class Coalescer:
    """Script calls of one event loop, sent together while an earlier batch is on the wire (one
    batch at a time). A caller that is cancelled (its client went away) leaves its call in the
    batch: it may run or not, as a call cancelled on the wire may."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.r = client
        self._calls: list[tuple[Call, asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def call(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        loop = asyncio.get_running_loop()
        if self._sender is not None and self._sender.get_loop() is not loop:  # another loop's (tests)
            self._calls, self._sender = [], None
        future: asyncio.Future[Any] = loop.create_future()
        self._calls.append(((script, keys, args), future))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send())
        return await future

    async def _send(self) -> None:
        while self._calls:
            batch, self._calls = self._calls, []
            try:
                results = await run_scripts_async(self.r, [call for call, _ in batch])
            except Exception as exc:  # the connection failed: every call of the batch fails so
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            except BaseException:  # cancelled (the loop is closing): so are the calls
                for _, future in batch:
                    future.cancel()
                raise
            for (_, future), result in zip(batch, results):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
