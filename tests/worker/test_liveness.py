"""A task run's holder key (worker/liveness.py) against real Redis: set while the run lasts, gone
after it, and one connection per process for all of it (a new client per call was a connection
per call: a batch of 32 jobs is 32 task runs)."""

from __future__ import annotations

import uuid

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
