"""Alembic from code: the project's migrations against a database URL (tests, ``up``, ``db upgrade``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the project root: alembic.ini, migrations/


def _alembic_config(database_url: str) -> Any:
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def alembic_upgrade(database_url: str, revision: str = "head") -> None:
    """``alembic upgrade head`` against this URL, from the project's migrations."""
    from alembic import command

    command.upgrade(_alembic_config(database_url), revision)


def alembic_downgrade(database_url: str, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(_alembic_config(database_url), revision)
