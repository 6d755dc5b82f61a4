"""PostgreSQL down (issue 16, item 7): the API answers 503 ``database_unavailable`` with
Retry-After, not 500, and recovers by itself when the server is back; a live session whose key was
verified goes on meanwhile. A PostgreSQL of this test's
own is stopped and started again under a running API (the session's servers stay untouched)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.dev.models.tones import synthesize
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
    own_postgres: tuple[Path, str, int], platform_env: dict[str, str], logs: Path, worker: Proc
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
        audio, _ = synthesize(["раз два три", "четыре пять"])
        pieces = [audio[i : i + 2400].tobytes() for i in range(0, len(audio), 2400)]
        opened = httpx.post(f"{api.url}/transcribe/streaming", headers=auth(key), timeout=30)
        assert opened.status_code == 200, opened.text
        sid = opened.json()["state_id"]

        def piece(seq: int) -> httpx.Response:
            data = {"state_id": sid, "seq": str(seq)}
            files = {"file": ("p.raw", pieces[seq], "application/octet-stream")}
            return httpx.post(f"{api.url}/transcribe/streaming/chunk", headers=auth(key), data=data,
                              files=files, timeout=60)  # fmt: skip

        assert piece(0).status_code == 200
        stack.stop(data_dir)
        # a live call goes on without the database: its key was verified a moment ago (kept in
        # memory), and its pieces live in Redis
        for seq in range(1, len(pieces)):
            got = piece(seq)
            assert got.status_code == 200, got.text
        ended = httpx.post(f"{api.url}/transcribe/streaming/finalize", headers=auth(key),
                           data={"state_id": sid}, timeout=60)  # fmt: skip
        assert ended.status_code == 200, ended.text
        assert [p["text"] for p in ended.json()["phrases"]] == ["раз два три", "четыре пять"]
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
