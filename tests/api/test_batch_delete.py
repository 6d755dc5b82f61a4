"""Deleting a batch while a worker stores a round of its jobs (``api.services.batches.delete_batch``),
against the real PostgreSQL: the two lock the same job rows in different orders, PostgreSQL picks
the DELETE as the deadlock's victim, and the DELETE tries again instead of answering 503."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from api.services.batches import delete_batch
from shared.db.models import Batch, Job
from shared.db.session import session_scope, sessionmaker_for
from shared.platform.settings import Settings
from tests.api.test_batch_intake import _add_job, _preparing
from tests.conftest import make_key

pytestmark = pytest.mark.platform


def _waiting_on_a_lock(url: str, pid: int) -> bool:
    with session_scope(url) as s:
        return bool(
            s.scalar(text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :p"), {"p": pid})
        )


def test_a_delete_chosen_as_a_deadlocks_victim_tries_again(servers: dict[str, str], tmp_path: Path) -> None:
    url = servers["DATABASE_URL"]
    key = make_key(servers, f"delete-{uuid.uuid4().hex[:6]}")
    batch_id = _preparing(servers, key, None)
    for name in ("first.wav", "second.wav"):  # the DELETE's scan meets them in this order
        (tmp_path / name).write_bytes(b"RIFF")
        _add_job(servers, key, batch_id, tmp_path / name)
    with session_scope(url) as s:
        first, second = s.scalars(
            select(Job.id).where(Job.batch_id == batch_id).order_by(Job.created_at, Job.id)
        )
    worker = create_engine(url).connect()
    deleted: list[object] = []
    try:
        round_ = worker.begin()
        worker.execute(text("UPDATE jobs SET progress = 0.5 WHERE id = :j"), {"j": second})  # a round's row

        def delete() -> None:
            with sessionmaker_for(url)() as db:
                pid = db.scalar(text("SELECT pg_backend_pid()"))
                deleted.append(pid)
                batch = db.get(Batch, batch_id)
                assert batch is not None
                try:
                    deleted.append(delete_batch(db, batch, Settings()))
                except Exception as exc:  # without its retry: the deadlock's OperationalError
                    deleted.append(exc)

        thread = threading.Thread(target=delete)
        thread.start()
        deadline = time.monotonic() + 10
        while not (deleted and _waiting_on_a_lock(url, int(deleted[0]))):  # type: ignore[call-overload]
            assert time.monotonic() < deadline, "the DELETE never waited for the worker's row"
            time.sleep(0.05)
        # the worker's round now wants the row the DELETE holds: a deadlock, the DELETE its victim
        # (it waited first, so its deadlock check runs first)
        worker.execute(text("UPDATE jobs SET progress = 0.5 WHERE id = :j"), {"j": first})
        round_.commit()
        thread.join(30)
    finally:
        worker.close()
    assert deleted[1:] == [2], deleted
    with session_scope(url) as s:
        assert s.get(Batch, batch_id) is None
        assert s.scalar(select(func.count()).select_from(Job).where(Job.batch_id == batch_id)) == 0
