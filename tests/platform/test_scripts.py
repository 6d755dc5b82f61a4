"""Lua scripts run many at a time (``shared.platform.scripts``): pipelined by EVALSHA with no
SCRIPT EXISTS before each pipeline, a script Redis lost loaded again with only its calls rerun, and
an event loop's concurrent calls coalesced into batches. Real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from shared.platform import scripts
from shared.platform.scripts import Coalescer, run_scripts, run_scripts_async

INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
FAIL = "return redis.error_reply('no ' .. ARGV[1])"


@pytest.fixture
def client(servers: dict[str, str]) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(servers["REDIS_URL"])
    yield c
    c.close()


def test_run_scripts_answers_in_order_and_reloads_a_lost_script_running_its_calls_once(
    client: redis.Redis,
) -> None:
    key = f"test:scripts:{uuid.uuid4().hex}"
    incr, fail = client.register_script(INCR), client.register_script(FAIL)
    client.script_flush()  # as after a Redis restart: neither script is known
    calls: list[scripts.Call] = [(incr, [key], [1]), (fail, [], ["a"]), (incr, [key], [10])]
    got = run_scripts(client, calls, raise_on_error=False)
    assert got[0] == 1 and got[2] == 11
    assert isinstance(got[1], ResponseError) and "no a" in str(got[1])
    assert int(client.get(key) or 0) == 11  # each call ran once, though both were reloaded
    assert client.script_exists(incr.sha, fail.sha) == [True, True]
    with pytest.raises(ResponseError, match="no b"):
        run_scripts(client, [(incr, [key], [1]), (fail, [], ["b"])])
    assert int(client.get(key) or 0) == 12  # the call before the error ran
    assert run_scripts(client, []) == []


def test_a_pipeline_of_scripts_asks_redis_nothing_else(client: redis.Redis) -> None:
    key = f"test:scripts:{uuid.uuid4().hex}"
    incr = client.register_script(INCR)
    run_scripts(client, [(incr, [key], [1])])  # loaded
    client.config_resetstat()
    run_scripts(client, [(incr, [key], [1]) for _ in range(5)])
    stats = client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 5
    assert "cmdstat_script|exists" not in stats and "cmdstat_script" not in stats


def test_concurrent_calls_go_in_batches_and_each_gets_its_own_answer(
    servers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = f"test:scripts:{uuid.uuid4().hex}"
    batches: list[int] = []
    real = run_scripts_async

    async def counted(c: aioredis.Redis, calls: Any) -> list[Any]:
        batches.append(len(calls))
        return await real(c, calls)

    monkeypatch.setattr(scripts, "run_scripts_async", counted)

    async def main() -> list[Any]:
        c = aioredis.Redis.from_url(servers["REDIS_URL"])
        try:
            coalescer = Coalescer(c)
            incr, fail = c.register_script(INCR), c.register_script(FAIL)
            first = await coalescer.call(incr, [key], [0])  # alone
            calls = [coalescer.call(incr, [key], [1]) for _ in range(50)] + [coalescer.call(fail, [], ["x"])]
            got = await asyncio.gather(*calls, return_exceptions=True)
            return [first, *got]
        finally:
            await c.aclose()

    got = asyncio.run(main())
    assert got[0] == 0
    assert sorted(got[1:51]) == list(range(1, 51))  # every call ran once, each with its own answer
    assert isinstance(got[51], ResponseError) and "no x" in str(got[51])  # only the failing call fails
    assert batches == [1, 51]


def test_a_failed_connection_fails_its_batch_and_the_next_calls_go_out_again(servers: dict[str, str]) -> None:
    key = f"test:scripts:{uuid.uuid4().hex}"

    async def main() -> tuple[list[Any], Any]:
        c = aioredis.Redis.from_url(servers["REDIS_URL"])
        dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)  # nothing listens
        try:
            coalescer = Coalescer(dead)
            incr = dead.register_script(INCR)
            failed = await asyncio.gather(
                *(coalescer.call(incr, [key], [1]) for _ in range(3)), return_exceptions=True
            )
            coalescer.r = c  # Redis is back
            return failed, await coalescer.call(incr, [key], [5])
        finally:
            await c.aclose()
            await dead.aclose()

    failed, after = asyncio.run(main())
    assert len(failed) == 3 and all(isinstance(e, redis.ConnectionError) for e in failed)
    assert after == 5


def test_a_cancelled_caller_leaves_the_others_their_answers(servers: dict[str, str]) -> None:
    key = f"test:scripts:{uuid.uuid4().hex}"

    async def main() -> list[Any]:
        c = aioredis.Redis.from_url(servers["REDIS_URL"])
        try:
            coalescer = Coalescer(c)
            incr = c.register_script(INCR)
            tasks = [asyncio.create_task(coalescer.call(incr, [key], [1])) for _ in range(5)]
            await asyncio.sleep(0)
            tasks[2].cancel()
            got = await asyncio.gather(*tasks, return_exceptions=True)
            return [*got, await coalescer.call(incr, [key], [0])]
        finally:
            await c.aclose()

    got = asyncio.run(main())
    assert isinstance(got[2], asyncio.CancelledError)
    answers = [g for i, g in enumerate(got[:5]) if i != 2]
    assert len(set(answers)) == 4 and all(isinstance(a, int) for a in answers)
    assert got[5] in (4, 5)  # the cancelled call may have run, as one cancelled on the wire may
