"""A lease holder proves it is alive: a Redis key per lease owner (``tone:holder:<owner>``) of
``ALIVE_TTL_SECONDS``, renewed every ``ALIVE_EVERY_SECONDS`` by a thread of the task run for as long
as the run lasts, so it lapses seconds after its process is SIGKILLed.

A holder is presumed dead only when BOTH its key is gone AND its job rows were not renewed for
``STALE_SECONDS`` (a live run renews them about once a second with its progress): a Redis restart
that drops every key therefore takes no live worker's jobs. Its leases are then expired at once
(:func:`worker.store.expire_dead_holder`), and the next task for any of its jobs takes them over
instead of waiting out the whole lease. Redis unreachable: every holder counts as alive (the lease
expiry still frees their jobs, as before).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from types import TracebackType
from typing import Any

log = logging.getLogger("tone.worker")

ALIVE_TTL_SECONDS = 6
ALIVE_EVERY_SECONDS = 2.0
STALE_SECONDS = 5.0


def holder_key(owner: str) -> str:
    return f"tone:holder:{owner}"


_clients: dict[tuple[int, str], Any] = {}


def _client(redis_url: str) -> Any:
    """This process's client for ``redis_url``, made once: every task run sets and deletes its
    holder key, and a new client per call was a new connection each time (a batch of 32 jobs is 32
    task runs, most of them finding their job already taken). redis-py reconnects a dropped
    connection at the next call (a Redis restart)."""
    import redis

    key = (os.getpid(), redis_url)
    if key not in _clients:
        _clients[key] = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    return _clients[key]


def is_alive(redis_url: str, owner: str) -> bool:
    """Whether ``owner``'s key is there (True when Redis cannot tell)."""
    try:
        return bool(_client(redis_url).exists(holder_key(owner)))
    except Exception:
        return True


class Liveness:
    """``with Liveness(url, owner):`` keeps ``owner``'s key alive while the block runs."""

    def __init__(self, redis_url: str, owner: str) -> None:
        self.url = redis_url
        self.key = holder_key(owner)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-holder", daemon=True)

    def _beat(self) -> None:
        try:
            _client(self.url).set(self.key, "1", ex=ALIVE_TTL_SECONDS)
        except Exception as exc:  # the DB lease still protects the jobs
            log.warning("job=- could not renew the holder key %s: %s", self.key, exc)

    def _run(self) -> None:
        while not self._stop.wait(ALIVE_EVERY_SECONDS):
            self._beat()

    def __enter__(self) -> Liveness:
        self._beat()
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(ALIVE_EVERY_SECONDS + 1)
        with contextlib.suppress(Exception):
            _client(self.url).delete(self.key)
