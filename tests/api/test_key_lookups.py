"""``api.deps.caller_of`` against real PostgreSQL and Redis, in this process: requests with a key not
in memory that arrive together share one database lookup (calls starting at once, or a key's entry
expiring under load, each took a lookup and a pooled connection of its own), a wrong key's refusal
is shared the same way and still counted for every request, and a revocation in between is never
answered from a lookup begun before it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from api import deps
from api.errors import ApiError
from shared.platform.keys import announce_revocation
from shared.platform.settings import Settings
from tests.conftest import make_key


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str | None]]:
    """The keys ``caller_of`` looked up in the database (the real lookup, slowed to 0.2 s so that
    requests pile up behind it); the process's verified keys forgotten first."""
    seen: list[str | None] = []
    real = deps._from_database
    lock = threading.Lock()

    def spy(settings: Settings, key: str | None) -> Any:
        with lock:
            seen.append(key)
        threading.Event().wait(0.2)
        return real(settings, key)

    monkeypatch.setattr(deps, "_from_database", spy)
    monkeypatch.setattr(deps, "VERIFIED", deps.VerifiedKeys())
    deps.async_redis_for.cache_clear()  # its client belongs to one event loop: each test runs its own
    yield seen
    deps.async_redis_for.cache_clear()


def _settings(servers: dict[str, str]) -> Settings:
    return Settings(database_url=servers["DATABASE_URL"], redis_url=servers["REDIS_URL"])


async def _callers(settings: Settings, key: str, count: int) -> list[Any]:
    calls = (deps.caller_of(settings, key, f"10.9.0.{n % 3}") for n in range(count))
    return await asyncio.gather(*calls, return_exceptions=True)


def test_requests_arriving_together_share_one_lookup(
    servers: dict[str, str], lookups: list[str | None]
) -> None:
    settings = _settings(servers)
    key = make_key(servers, "tenant-lookups")

    async def scenario() -> tuple[list[Any], list[Any]]:
        together = await _callers(settings, key, 30)
        return together, await _callers(settings, key, 3)

    together, later = asyncio.run(scenario())
    assert lookups == [key]  # one lookup for 30 requests, none for the 3 after it (kept in memory)
    assert all(not isinstance(c, BaseException) for c in together + later), together + later
    assert len({(c.tenant_id, c.key_prefix) for c in together + later}) == 1


def test_a_wrong_keys_refusal_is_shared_and_counted_for_every_request(
    servers: dict[str, str], lookups: list[str | None]
) -> None:
    settings = _settings(servers)
    wrong = "tone_wrong_" + "x" * 32

    async def scenario() -> tuple[list[Any], list[int]]:
        answers = await _callers(settings, wrong, 12)
        client = deps.async_redis_for(settings.redis_url)
        return answers, [int(await client.get(f"tone:authfail:10.9.0.{n}") or 0) for n in range(3)]

    answers, failures = asyncio.run(scenario())
    assert lookups == [wrong]
    assert all(isinstance(a, ApiError) and a.status == 401 for a in answers), answers
    assert sum(failures) == 12  # every request failed on its own account


def test_a_lookup_begun_before_a_revocation_is_not_shared_after_it(
    servers: dict[str, str], lookups: list[str | None]
) -> None:
    settings = _settings(servers)
    key = make_key(servers, "tenant-lookups-revoked")

    async def scenario() -> None:
        first = asyncio.ensure_future(deps.caller_of(settings, key, "10.9.1.1"))
        await asyncio.sleep(0.05)  # the first lookup is running
        assert announce_revocation(servers["REDIS_URL"])  # any key revoked: the counter moves
        second = await deps.caller_of(settings, key, "10.9.1.2")
        await first
        assert second.key_prefix

    asyncio.run(scenario())
    assert lookups == [key, key]  # the second request did not take the first lookup's answer
