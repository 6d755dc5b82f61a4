"""A task run's holder key (worker/liveness.py) against real Redis: set while the run lasts, gone
after it, and one connection per process for all of it (a new client per call was a connection
per call: a batch of 32 jobs is 32 task runs)."""

from __future__ import annotations

import uuid

import pytest
import redis

from worker.liveness import Liveness, holder_key, is_alive


def test_the_holder_key_lives_as_long_as_the_run_over_one_connection(servers: dict[str, str]) -> None:
    url = servers["REDIS_URL"]
    r = redis.Redis.from_url(url)
    owner = f"test-{uuid.uuid4().hex[:8]}"
    with Liveness(url, owner):  # the process's client is made here, once
        assert r.exists(holder_key(owner)) and is_alive(url, owner)
    assert not r.exists(holder_key(owner)) and not is_alive(url, owner)
    before = int(r.info("stats")["total_connections_received"])
    for i in range(20):  # as many task runs
        with Liveness(url, f"{owner}-{i}"):
            assert is_alive(url, f"{owner}-{i}")
    assert int(r.info("stats")["total_connections_received"]) - before <= 2


def test_a_message_for_a_final_or_missing_job_ends_with_one_read(
    servers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``worker.tasks.run_job`` for a job another run already finished (the common stale message of
    a batch) or one deleted: nothing to do, decided with one read, no holder key, no claim. A job
    still queued goes on to the holder key as before."""
    from shared.db.models import Job
    from shared.db.session import session_scope
    from shared.platform.keys import get_or_create_tenant
    from shared.platform.settings import get_settings
    from worker import tasks

    monkeypatch.setenv("DATABASE_URL", servers["DATABASE_URL"])
    monkeypatch.setenv("REDIS_URL", servers["REDIS_URL"])
    get_settings.cache_clear()
    entered: list[str] = []

    class Seen(Liveness):
        def __enter__(self) -> Liveness:
            entered.append(self.key)
            raise RuntimeError("went past the read")

    monkeypatch.setattr(tasks, "Liveness", Seen)
    with session_scope(servers["DATABASE_URL"]) as s:
        tenant = get_or_create_tenant(s, "stale-messages")
        done, queued = Job(tenant_id=tenant.id, status="completed"), Job(tenant_id=tenant.id, status="queued")
        s.add_all([done, queued])
        s.flush()
        ids = (str(done.id), str(queued.id))
    try:
        tasks.run_job(ids[0], "owner-a")
        tasks.run_job(str(uuid.uuid4()), "owner-a")
        assert entered == []
        with pytest.raises(RuntimeError, match="went past"):
            tasks.run_job(ids[1], "owner-a")
        with pytest.raises(RuntimeError, match="went past"):  # a retry may still hold other jobs
            tasks.run_job(ids[0], "owner-a", resume_owner="owner-a")
        assert len(entered) == 2
    finally:
        get_settings.cache_clear()
