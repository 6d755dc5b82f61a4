"""PostgreSQL down (issue 16, item 7): the API answers 503 ``database_unavailable`` with
Retry-After, not 500, and recovers by itself when the server is back. A PostgreSQL of this test's
own is stopped and started again under a running API (the session's servers stay untouched)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.test_api import assert_error, auth
from tests.conftest import Proc, start_api

pytestmark = pytest.mark.platform


@pytest.fixture(scope="module")
def own_postgres(servers: dict[str, str]) -> Iterator[tuple[Path, str, int]]:
    """``(data dir, URL, port)`` of a PostgreSQL started for this module, schema at head."""
    from shared.db.migrate import alembic_upgrade
    from shared.localstack import servers as stack

    root = Path(tempfile.mkdtemp(prefix="tone-pg-outage-"))
    root.chmod(0o755)
    try:
        pg = stack.start_postgres(root / "postgres")
        alembic_upgrade(pg.url)
        yield root / "postgres", pg.url, pg.port
    finally:
        stack.stop(root / "postgres")
        shutil.rmtree(root, ignore_errors=True)


def test_submits_get_503_database_unavailable_while_postgres_is_down_then_work_again(
    own_postgres: tuple[Path, str, int], platform_env: dict[str, str], logs: Path
) -> None:
    from shared.db.session import session_scope
    from shared.localstack import servers as stack
    from shared.platform.keys import create_key

    data_dir, url, port = own_postgres
    with session_scope(url) as session:
        key = create_key(session, "outage")[1]
    api: Proc = start_api({**platform_env, "DATABASE_URL": url}, logs, "api-pg-outage")
    try:
        body = {"audio_url": "https://example.com/a.wav"}
        listed = httpx.get(f"{api.url}/v1/jobs", headers=auth(key))
        assert listed.status_code == 200, listed.text
        stack.stop(data_dir)
        for _ in range(3):  # pooled connections are dead now, new ones are refused
            got = httpx.post(f"{api.url}/v1/jobs", json=body, headers=auth(key), timeout=30)
            assert_error(got, 503, "database_unavailable")
            assert int(got.headers["Retry-After"]) > 0
        assert_error(
            httpx.get(f"{api.url}/v1/jobs", headers=auth(key), timeout=30), 503, "database_unavailable"
        )
        stack.start_postgres(data_dir, port=port)
        got = httpx.get(f"{api.url}/v1/jobs", headers=auth(key), timeout=30)
        if got.status_code == 503:  # at most one dead pooled connection left to find out about
            got = httpx.get(f"{api.url}/v1/jobs", headers=auth(key), timeout=30)
        assert got.status_code == 200, got.text
    finally:
        api.stop()
