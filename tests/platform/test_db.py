"""The schema: Alembic builds it from empty, removes it, and never drifts from the models."""

from __future__ import annotations

import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from shared.db.migrate import alembic_downgrade, alembic_upgrade
from shared.db.models import Base
from shared.db.session import session_scope
from shared.platform.keys import create_key, key_prefix, revoke_key, verify_key


@pytest.fixture
def empty_database(servers: dict[str, str]) -> str:
    """A new, empty database on the test server, dropped afterwards."""
    url = make_url(servers["DATABASE_URL"])
    name = f"schema_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def test_upgrade_builds_the_schema_the_models_describe_and_downgrade_removes_it(empty_database: str) -> None:
    alembic_upgrade(empty_database)
    engine = create_engine(empty_database)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == [], f"models and migrations drifted: {diff}"
        assert set(inspect(conn).get_table_names()) >= {
            "tenants", "api_keys", "batches", "jobs", "transcripts", "webhook_deliveries", "alembic_version",
        }  # fmt: skip
    alembic_downgrade(empty_database)
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    engine.dispose()


def test_batches_kept_in_job_options_before_0002_get_rows_and_deliveries_name_one_subject(
    empty_database: str,
) -> None:
    """Upgrading a database whose batches lived only in ``options.batch_id`` makes a row for each
    and points its jobs at it; a delivery names exactly one of a job and a batch; downgrade writes
    ``options.batch_id`` back."""
    import json

    from sqlalchemy.exc import IntegrityError

    alembic_upgrade(empty_database, "0001")
    engine = create_engine(empty_database)
    tenant, batch = uuid.uuid4(), str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO tenants (id, name, webhook_secret) VALUES (:t, 'old', 'whsec_x')"),
            {"t": tenant},
        )
        for n, status in enumerate(("completed", "processing")):
            options = {
                "batch_id": batch,
                "batch_name": f"{n}.wav",
                "batch_names": [f"{n}.wav", f"copy-{n}.wav"],
            }
            conn.execute(
                text(
                    "INSERT INTO jobs (id, tenant_id, kind, status, priority, queue, options, source, "
                    "progress, attempts, cancel_requested) VALUES (:id, :t, 'job', :s, 2, 'cpu', "
                    "CAST(:o AS jsonb), 'upload', 0, 0, false)"
                ),
                {"id": uuid.uuid4(), "t": tenant, "s": status, "o": json.dumps(options)},
            )
    alembic_upgrade(empty_database)
    with engine.begin() as conn:
        row = conn.execute(
            text("SELECT id, tenant_id, source, status, items, finished_at FROM batches")
        ).one()
        assert (str(row.id), row.tenant_id, row.source, row.status, row.items) == (
            batch,
            tenant,
            "archive",
            "queued",
            4,
        )
        assert row.finished_at is None  # a job is still open
        linked = conn.execute(text("SELECT count(*) FROM jobs WHERE batch_id = :b"), {"b": uuid.UUID(batch)})
        assert linked.scalar() == 2
    insert = (
        "INSERT INTO webhook_deliveries (id, job_id, batch_id, event_id, event_type, url, attempt, success) "
        "VALUES (:id, {job}, {batch}, 'evt_1', 'batch.completed', 'http://x', 1, true)"
    )
    for job_sql, batch_sql in (("NULL", "NULL"), ("(SELECT id FROM jobs LIMIT 1)", ":b")):
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(
                text(insert.format(job=job_sql, batch=batch_sql)), {"id": uuid.uuid4(), "b": uuid.UUID(batch)}
            )
    with engine.begin() as conn:
        conn.execute(text(insert.format(job="NULL", batch=":b")), {"id": uuid.uuid4(), "b": uuid.UUID(batch)})
    alembic_downgrade(empty_database, "0001")
    with engine.connect() as conn:
        kept = conn.execute(text("SELECT DISTINCT options->>'batch_id' FROM jobs")).scalars().all()
        assert kept == [batch]
        assert conn.execute(text("SELECT count(*) FROM webhook_deliveries")).scalar() == 0
    engine.dispose()


def test_keys_are_stored_hashed_found_by_prefix_and_revocable(servers: dict[str, str]) -> None:
    url = servers["DATABASE_URL"]
    with session_scope(url) as session:
        row, key = create_key(session, "keys-test", "ci")
        prefix = row.prefix
        assert key.startswith(prefix + "_")
        assert row.key_hash != key and key not in row.key_hash
    assert key_prefix(key) == prefix
    with session_scope(url) as session:
        assert verify_key(session, key) is not None
        assert verify_key(session, key[:-1] + ("A" if key[-1] != "A" else "B")) is None
        assert verify_key(session, "tone_nope") is None
        assert revoke_key(session, prefix)
    with session_scope(url) as session:
        assert verify_key(session, key) is None


def test_0003_indexes_and_measures_transcripts_stored_before_it(empty_database: str) -> None:
    """Upgrading to 0003 back-fills the search index (a phrase's display text when it has one, its
    words otherwise) and every completed job's analytics; the index finds stemmed words."""
    import json

    from shared.platform.analytics import compute

    alembic_upgrade(empty_database, "0002")
    engine = create_engine(empty_database)
    tenant, job = uuid.uuid4(), uuid.uuid4()
    phrases = [
        {"text": "ваш договор готов", "start_time": 0.5, "end_time": 2.0, "channel": 0,
         "words": [{"text": "ваш", "start": 0.5, "end": 0.8}, {"text": "договор", "start": 0.9, "end": 1.5},
                   {"text": "готов", "start": 1.6, "end": 2.0}]},
        {"text": "хочу расторгнуть договора", "display": "Хочу расторгнуть договора!", "start_time": 2.5,
         "end_time": 4.0, "channel": 1, "words": []},
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO tenants (id, name, webhook_secret) VALUES (:t, 'old', 'whsec_x')"),
            {"t": tenant},
        )
        conn.execute(
            text(
                "INSERT INTO jobs (id, tenant_id, kind, status, priority, queue, options, source, progress, "
                "attempts, cancel_requested) VALUES "
                "(:id, :t, 'job', 'completed', 5, 'cpu', '{}', 'upload', 1, 1, false)"
            ),
            {"id": job, "t": tenant},
        )
        conn.execute(
            text(
                "INSERT INTO transcripts (job_id, phrases, full_text, duration, channels) "
                "VALUES (:j, CAST(:p AS jsonb), 'x', 5.0, 2)"
            ),
            {"j": job, "p": json.dumps(phrases)},
        )
    alembic_upgrade(empty_database)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT idx, channel, text FROM transcript_phrases WHERE job_id = :j ORDER BY idx"),
            {"j": job},
        ).all()
        assert [tuple(r) for r in rows] == [(0, 0, "ваш договор готов"), (1, 1, "Хочу расторгнуть договора!")]
        found = conn.execute(
            text(
                "SELECT idx FROM transcript_phrases "
                "WHERE tsv @@ plainto_tsquery('russian', 'договором') ORDER BY idx"
            )
        ).scalars()
        assert list(found) == [0, 1]
        stored = conn.execute(text("SELECT analytics FROM jobs WHERE id = :j"), {"j": job}).scalar_one()
        assert stored == compute(phrases, 5.0, 2)
    engine.dispose()
