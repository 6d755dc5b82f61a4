"""Alembic's environment: runs the migrations offline (SQL script) or online (against DATABASE_URL).

Only alembic runs this file (``alembic upgrade head``); it is not part of the installed package.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config

if config.config_file_name is not None:
    fileConfig(config.config_file_name)

from shared.db.models import Base  # noqa: E402

# Migrations are generated from the models (`alembic revision --autogenerate`); a test checks they agree.
target_metadata = Base.metadata


def database_url() -> str:
    url = os.environ.get("DATABASE_URL", "").strip() or config.get_main_option("sqlalchemy.url") or ""
    if not url:
        raise SystemExit(
            "DATABASE_URL is not set: export it before running alembic, "
            "e.g. DATABASE_URL=postgresql+psycopg://tone:secret@localhost:5432/tone"
        )
    return url


def run_migrations_offline() -> None:
    """Emit the migrations as SQL to stdout, without a database connection."""
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Connect to DATABASE_URL and apply the migrations."""
    section = config.get_section(config.config_ini_section, {})
    section["sqlalchemy.url"] = database_url()
    connectable = engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
