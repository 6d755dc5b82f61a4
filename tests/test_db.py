"""The schema: Alembic builds it from empty, removes it, and never drifts from the models."""

from __future__ import annotations

import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from shared.db.models import Base
from shared.db.session import session_scope
from shared.keys import create_key, key_prefix, revoke_key, verify_key
from shared.platform_cli import alembic_downgrade, alembic_upgrade


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
            "tenants", "api_keys", "jobs", "transcripts", "webhook_deliveries", "alembic_version",
        }  # fmt: skip
    alembic_downgrade(empty_database)
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
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
