"""``worker.store.JobStore.complete_many`` against real PostgreSQL: a round's transcripts stored in one
transaction (one commit for all of them), a job whose lease was lost left alone, its batch ended
once by ``finish_batches``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, update

from shared.asr.engine import Transcript as EngineTranscript
from shared.asr.types import Phrase
from shared.db.models import Batch, Job, JobFlag, Rule, Transcript, TranscriptPhrase
from shared.db.session import session_scope
from shared.platform.keys import get_or_create_tenant
from worker.store import Completion, JobStore


def _transcript(text: str) -> EngineTranscript:
    return EngineTranscript((Phrase(text, 0.5, 1.5),), duration=2.0, processing_time=0.1)


def test_a_rounds_transcripts_are_stored_in_one_transaction_and_a_lost_lease_is_left_alone(
    servers: dict[str, str],
) -> None:
    url = servers["DATABASE_URL"]
    with session_scope(url) as s:
        tenant = get_or_create_tenant(s, f"complete-many-{uuid.uuid4().hex[:6]}")
        batch = Batch(
            tenant_id=tenant.id, source="directory", status="queued", options={}, skipped=[], items=3
        )
        s.add(batch)
        s.flush()
        jobs = [Job(tenant_id=tenant.id, status="queued", batch_id=batch.id) for _ in range(3)]
        s.add_all(jobs)
        s.flush()
        ids = [str(j.id) for j in jobs]
        batch_id = str(batch.id)
    store = JobStore(url, f"owner-{uuid.uuid4().hex[:6]}", 60.0)
    assert all(store.claim(i) is not None for i in ids)
    with session_scope(url) as s:  # the middle job was taken over by another worker meanwhile
        s.execute(update(Job).where(Job.id == uuid.UUID(ids[1])).values(lease_owner="someone-else"))

    stored = store.complete_many([Completion(i, _transcript(f"фраза {n}")) for n, i in enumerate(ids)])
    assert stored == {ids[0]: True, ids[1]: False, ids[2]: True}
    with session_scope(url) as s:
        rows = {str(j.id): j for j in s.scalars(select(Job).where(Job.id.in_([uuid.UUID(i) for i in ids])))}
        texts = dict(s.execute(select(Transcript.job_id, Transcript.full_text)).all())
        indexed = set(s.scalars(select(TranscriptPhrase.job_id)))
    assert [rows[i].status for i in ids] == ["completed", "processing", "completed"]
    # one transaction: PostgreSQL's now() is its start, the same for every job stored in it
    assert rows[ids[0]].finished_at is not None and rows[ids[0]].finished_at == rows[ids[2]].finished_at
    assert texts[uuid.UUID(ids[0])] == "фраза 0" and texts[uuid.UUID(ids[2])] == "фраза 2"
    assert uuid.UUID(ids[1]) not in texts and uuid.UUID(ids[1]) not in indexed
    assert {uuid.UUID(ids[0]), uuid.UUID(ids[2])} <= indexed
    assert rows[ids[0]].analytics is not None

    assert store.finish_batches([batch_id, batch_id]) == []  # the middle job is still open
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id == uuid.UUID(ids[1])).values(status="failed"))
    ended = store.finish_batches([batch_id])
    assert [(b.id, b.status) for b in ended] == [(batch_id, "completed")]
    assert store.finish_batches([batch_id]) == []  # exactly once


def test_a_tenants_rules_are_read_once_and_flag_every_job_of_the_round(servers: dict[str, str]) -> None:
    url = servers["DATABASE_URL"]
    with session_scope(url) as s:
        tenant = get_or_create_tenant(s, f"complete-rules-{uuid.uuid4().hex[:6]}")
        rule = Rule(tenant_id=tenant.id, name="refund", kind="phrase_contains", params={"words": ["возврат"]})
        jobs = [Job(tenant_id=tenant.id, status="queued") for _ in range(3)]
        s.add_all([rule, *jobs])
        s.flush()
        ids, rule_id = [str(j.id) for j in jobs], str(rule.id)
    store = JobStore(url, f"owner-{uuid.uuid4().hex[:6]}", 60.0)
    assert all(store.claim(i) is not None for i in ids)
    said = ["оформим возврат", "всё хорошо", "нужен возврат денег"]
    stored = store.complete_many([Completion(i, _transcript(t)) for i, t in zip(ids, said, strict=True)])
    assert all(stored.values())
    assert store.flagged == {ids[0]: [rule_id], ids[1]: [], ids[2]: [rule_id]}
    with session_scope(url) as s:
        flagged = set(s.scalars(select(JobFlag.job_id).where(JobFlag.rule_id == uuid.UUID(rule_id))))
    assert flagged == {uuid.UUID(ids[0]), uuid.UUID(ids[2])}


def _claimed(url: str, tenant: Any, count: int) -> tuple[JobStore, list[str]]:
    """``count`` new jobs of ``tenant`` (the n-th with audio path ``/a/<n>.wav``), claimed by a
    store of their own."""
    with session_scope(url) as s:
        jobs = [Job(tenant_id=tenant, status="queued", audio_path=f"/a/{n}.wav") for n in range(count)]
        s.add_all(jobs)
        s.flush()
        ids = [str(j.id) for j in jobs]
    store = JobStore(url, f"owner-{uuid.uuid4().hex[:6]}", 60.0)
    assert all(store.claim(i) is not None for i in ids)
    return store, ids


@contextmanager
def _statements() -> Iterator[list[str]]:
    """The SQL statements any engine of this process sends meanwhile."""
    sent: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        yield sent
    finally:
        event.remove(Engine, "before_cursor_execute", seen)


def _stored_round(url: str, tenant: Any, count: int) -> tuple[list[str], int]:
    """``count`` claimed jobs completed in one call, each with its own phrases (the n-th job n+1
    phrases, the last a redacted recording's path); their ids and the statements it sent."""
    store, ids = _claimed(url, tenant, count)
    done = []
    for n, job_id in enumerate(ids):
        phrases = tuple(Phrase(f"фраза {n} {k}", 2.0 * k, 2.0 * k + 1.5, channel=k % 2) for k in range(n + 1))
        t = EngineTranscript(phrases, duration=10.0 + n, processing_time=0.1 * (n + 1), channels=2)
        path = f"/a/{n}.redacted.wav" if n == count - 1 else None
        done.append(Completion(job_id, t, [p.to_dict() for p in phrases], path))
    with _statements() as sent:
        assert all(store.complete_many(done).values())
    return ids, len(sent)


def test_a_round_is_stored_in_the_same_statements_however_many_jobs_it_ended(servers: dict[str, str]) -> None:
    """Twelve jobs cost the database no more statements than two (one per job before: a round of
    16 calls took ~30 ms of the worker's one thread), and each job still gets its own transcript,
    duration, index rows and analytics."""
    url = servers["DATABASE_URL"]
    with session_scope(url) as s:
        tenant = get_or_create_tenant(s, f"complete-set-{uuid.uuid4().hex[:6]}").id
    _, two = _stored_round(url, tenant, 2)
    ids, twelve = _stored_round(url, tenant, 12)
    assert twelve == two
    with session_scope(url) as s:
        rows = {str(j.id): j for j in s.scalars(select(Job).where(Job.id.in_([uuid.UUID(i) for i in ids])))}
        texts = {str(k): v for k, v in s.execute(select(Transcript.job_id, Transcript.full_text))}
        indexed = dict(
            s.execute(
                select(TranscriptPhrase.job_id, func.count())
                .where(TranscriptPhrase.job_id.in_([uuid.UUID(i) for i in ids]))
                .group_by(TranscriptPhrase.job_id)
            ).all()
        )
    for n, job_id in enumerate(ids):
        job = rows[job_id]
        assert job.status == "completed" and job.progress == 1.0 and job.lease_expires_at is None
        assert job.duration == 10.0 + n and job.processing_seconds == pytest.approx(0.1 * (n + 1))
        assert job.audio_path == (f"/a/{n}.redacted.wav" if n == len(ids) - 1 else f"/a/{n}.wav")
        assert texts[job_id] == " ".join(f"фраза {n} {k}" for k in range(n + 1))
        assert indexed[uuid.UUID(job_id)] == n + 1
        assert job.analytics is not None and job.analytics["duration"] == 10.0 + n
        assert job.analytics["channels"] == 2


def test_a_heartbeat_is_one_statement_however_many_jobs_and_tells_lost_and_cancelled_ones(
    servers: dict[str, str],
) -> None:
    url = servers["DATABASE_URL"]
    with session_scope(url) as s:
        tenant = get_or_create_tenant(s, f"heartbeat-{uuid.uuid4().hex[:6]}").id
    store, ids = _claimed(url, tenant, 12)
    with session_scope(url) as s:  # one taken over by another worker, one asked to cancel
        s.execute(update(Job).where(Job.id == uuid.UUID(ids[3])).values(lease_owner="someone-else"))
        s.execute(update(Job).where(Job.id == uuid.UUID(ids[5])).values(cancel_requested=True))
        before = {
            str(j.id): j.lease_expires_at
            for j in s.scalars(select(Job).where(Job.id.in_(map(uuid.UUID, ids))))
        }
    with _statements() as sent:
        alive, cancel = store.heartbeat({job_id: n / 20 for n, job_id in enumerate(ids)})
        few, _ = store.heartbeat({ids[0]: 0.9})
    assert alive == set(ids) - {ids[3]} and cancel == {ids[5]} and few == {ids[0]}
    assert len([x for x in sent if "UPDATE" in x.upper()]) == 2  # one per heartbeat
    assert store.heartbeat({}) == (set(), set())
    with session_scope(url) as s:
        rows = {str(j.id): j for j in s.scalars(select(Job).where(Job.id.in_(map(uuid.UUID, ids))))}
    assert rows[ids[0]].progress == 0.9
    assert [rows[i].progress for i in ids[1:3]] == [pytest.approx(0.05), pytest.approx(0.1)]
    assert rows[ids[3]].progress != pytest.approx(0.15) and rows[ids[3]].lease_expires_at == before[ids[3]]
    assert rows[ids[4]].lease_expires_at > before[ids[4]]  # renewed
