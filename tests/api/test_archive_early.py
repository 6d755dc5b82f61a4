"""A ZIP or tar (.gz, .bz2, .xz) batch read while it uploads (``api.services.archive_stream``),
against the real stack: a job of the batch is transcribed before the client has sent the archive's
last bytes, and the batch that results is the one the finished upload would have made (names, the
dedupe, skips, ``metadata.csv`` at the archive's end attached to the early jobs too, transcripts); a
form field after the file, a local header the central directory contradicts, an archive refused by
an entry after the early ones, and a client gone midway each leave exactly what the request without
early reading leaves (one batch with the late options; a refusal with nothing created).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from shared.db.models import Batch, Job
from shared.db.session import session_scope
from tests.api.test_api import auth
from tests.api.test_archive_stream_unit import _piped
from tests.api.test_batch_intake import _tenant
from tests.api.test_batch_sources import audio, offline, tenant_batches, wait_batch  # noqa: F401
from tests.conftest import Proc, make_key

pytestmark = pytest.mark.platform

BOUNDARY = "tone-test-boundary"
FILLER = 2_500_000  # a non-audio entry after the early ones: the upload's first pieces hold them


def _zip(members: list[tuple[str, bytes, int]], piped: bool = False) -> bytes:
    """``piped``: written as to a pipe (every entry's sizes after its data, stored and deflated
    alike: as Go's ``archive/zip`` writes them, and ``zipfile`` to a pipe)."""
    if piped:
        return _piped([m for m in members if not m[0].endswith("/")])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, method in members:
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return buf.getvalue()


def _form(archive: bytes, before: dict[str, str], after: dict[str, str] | None = None) -> bytes:
    def field(name: str, value: str) -> bytes:
        return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()

    head = b"".join(field(k, v) for k, v in before.items())
    head += (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="calls.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()
    tail = b"\r\n" + b"".join(field(k, v) for k, v in (after or {}).items()) + f"--{BOUNDARY}--\r\n".encode()
    return head + archive + tail


def _jobs_of(servers: dict[str, str], tenant: uuid.UUID, status: str | None = None) -> int:
    with session_scope(servers["DATABASE_URL"]) as s:
        query = select(func.count()).select_from(Job).where(Job.tenant_id == tenant)
        if status is not None:
            query = query.where(Job.status == status)
        return int(s.scalar(query) or 0)


def _nothing_left(servers: dict[str, str], key: str, tenant: uuid.UUID) -> None:
    assert tenant_batches(servers["DATABASE_URL"], key) == 0
    assert _jobs_of(servers, tenant) == 0


def _post(
    url: str,
    key: str,
    body: bytes,
    hold: int,
    until: Callable[[], bool],
    gone: bool = False,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """``body`` sent but its last ``hold`` bytes, which follow once ``until()`` (or, ``gone``, the
    client goes away instead)."""

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(body) - hold, 256 * 1024):
            yield body[i : min(i + 256 * 1024, len(body) - hold)]
        deadline = time.monotonic() + 60
        while not until():
            assert time.monotonic() < deadline, "nothing happened while the upload waited"
            time.sleep(0.1)
        if gone:
            raise ConnectionAbortedError("the client went away")
        yield body[-hold:]

    sent = {**auth(key), "Content-Type": f"multipart/form-data; boundary={BOUNDARY}", **(headers or {})}
    return httpx.post(f"{url}/v1/batches", headers=sent, content=pieces(), timeout=60)


def _tar(members: list[tuple[str, bytes, int]], kind: str) -> bytes:
    """The members as a pax tar (GNU tar's and Python's default), compressed as ``kind`` says."""
    buf = io.BytesIO()
    mode = "w" + kind.removeprefix("tar").replace(".", ":")  # tar.gz -> w:gz
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.PAX_FORMAT) as tf:  # type: ignore[call-overload]
        for name, data, _ in members:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE if name.endswith("/") else tarfile.REGTYPE
            info.size = 0 if info.isdir() else len(data)
            tf.addfile(info, None if info.isdir() else io.BytesIO(data))
    return buf.getvalue()


def _archive(
    audio: dict[str, Path],  # noqa: F811
    last: list[tuple[str, bytes, int]] | None = None,
    kind: str = "zip",
) -> bytes:
    """``kind``: zip, piped (a ZIP written as to a pipe), tar, tar.gz, tar.bz2 or tar.xz."""
    a, b, c = (audio[n].read_bytes() for n in ("a.wav", "b.wav", "c.wav"))
    metadata = "path,agent\ncalls/a.wav,Иван\ncalls/b.wav,Ольга\ncalls/c.wav,Пётр\n".encode()
    members = [
        ("calls/", b"", zipfile.ZIP_STORED),
        ("calls/a.wav", a, zipfile.ZIP_STORED),
        ("calls/b.wav", b, zipfile.ZIP_DEFLATED),
        ("calls/copy.wav", a, zipfile.ZIP_DEFLATED),
        ("notes.bin", os.urandom(FILLER), zipfile.ZIP_STORED),
        ("calls/c.wav", c, zipfile.ZIP_STORED),
        *(last or []),
        ("metadata.csv", metadata, zipfile.ZIP_DEFLATED),
    ]
    if kind.startswith("tar"):
        return _tar(members, kind)
    return _zip(members, kind == "piped")


@dataclass
class _Upload:
    """Where a test uploads: the API (a worker beside it), and a fresh tenant whose batches and jobs
    the test counts."""

    url: str
    servers: dict[str, str]
    key: str
    tenant: uuid.UUID


@pytest.fixture
def up(api: Proc, worker: Proc, servers: dict[str, str]) -> _Upload:
    key = make_key(servers, f"early-{uuid.uuid4().hex[:6]}")
    return _Upload(api.url, servers, key, _tenant(servers, key))


def _results(url: str, key: str, batch_id: str) -> dict[str, dict[str, Any]]:
    lines = httpx.get(f"{url}/v1/batches/{batch_id}/results", headers=auth(key), timeout=30).text
    return {r["name"]: r for r in map(json.loads, lines.splitlines())}


@pytest.mark.parametrize("kind", ["zip", "piped", "tar", "tar.gz", "tar.bz2", "tar.xz"])
def test_jobs_are_transcribed_while_the_archive_uploads_and_the_batch_is_the_finished_uploads(
    up: _Upload,
    audio: dict[str, Path],  # noqa: F811
    offline: dict[str, Any],  # noqa: F811
    kind: str,
) -> None:
    """A ZIP, one written as to a pipe (sizes after each entry's data: followed through its
    deflate streams and to the descriptors that match its stored data), a tar, and a tar.gz,
    tar.bz2 and tar.xz (decompressed into a sidecar as it arrives, which, holding the whole tar at
    the end, becomes the archive the rest is read from)."""
    key, tenant, servers = up.key, up.tenant, up.servers
    body = _form(_archive(audio, kind=kind), {"name": "May calls", "priority": "3"})
    got = _post(up.url, key, body, 200_000, lambda: _jobs_of(servers, tenant, "completed") > 0)
    assert got.status_code == 202, got.text
    view = wait_batch(up.url, key, got.json()["id"])
    assert (view["status"], view["name"], view["jobs"], view["items"]) == ("completed", "May calls", 3, 4), (
        view
    )
    assert view["skipped"] == [
        {"name": "notes.bin", "reason": "not_audio: the extension is not an audio one"}
    ]
    assert tenant_batches(servers["DATABASE_URL"], key) == 1
    rows = _results(up.url, key, view["id"])
    assert sorted(rows) == ["calls/a.wav", "calls/b.wav", "calls/c.wav", "calls/copy.wav"]
    assert {n: rows[n]["metadata"]["agent"] for n in ("calls/a.wav", "calls/b.wav", "calls/c.wav")} == {
        "calls/a.wav": "Иван",
        "calls/b.wav": "Ольга",
        "calls/c.wav": "Пётр",
    }
    assert rows["calls/copy.wav"]["job_id"] == rows["calls/a.wav"]["job_id"]
    for name in ("a.wav", "b.wav", "c.wav"):
        phrases = rows[f"calls/{name}"]["phrases"]
        assert [p["text"] for p in phrases] == [p["text"] for p in offline[name]]
    with session_scope(servers["DATABASE_URL"]) as s:
        batch = s.get(Batch, uuid.UUID(view["id"]))
        assert batch is not None
        assert "receiving" not in batch.options and batch.options["priority"] == 3
        assert batch.request_hash  # an Idempotency-Key replay compares it
    assert not _sidecars(servers)
    assert not (_received(servers) / f"{view['id']}.archive").exists()  # read, then removed


def test_a_metadata_csv_that_is_no_csv_table_is_one_skip_of_a_batch_read_while_it_uploads(
    up: _Upload,
    audio: dict[str, Path],  # noqa: F811
) -> None:
    """The early batch keeps its jobs; metadata.csv (at the archive's end, read when the upload
    ends) is one skip with its reason, and no job gets metadata (a 500 before)."""
    a, b = (audio[n].read_bytes() for n in ("a.wav", "b.wav"))
    junk = b"path,agent\n" + b"a\rb" * 10 + bytes(range(256)) * 4  # Python's CSV reader refuses it
    members = [
        ("calls/a.wav", a, zipfile.ZIP_STORED),
        ("notes.bin", os.urandom(FILLER), zipfile.ZIP_STORED),
        ("calls/b.wav", b, zipfile.ZIP_DEFLATED),
        ("metadata.csv", junk, zipfile.ZIP_STORED),
    ]
    done = lambda: _jobs_of(up.servers, up.tenant, "completed") > 0  # noqa: E731
    got = _post(up.url, up.key, _form(_zip(members), {"name": "bad metadata"}), 200_000, done)
    assert got.status_code == 202, got.text
    view = wait_batch(up.url, up.key, got.json()["id"])
    assert (view["status"], view["jobs"]) == ("completed", 2), view
    # (in no fixed order: notes.bin's skip is written by whichever reader reaches it, the early one
    # or the one of the rest, and the latter writes metadata.csv's first)
    assert sorted((s["name"], s["reason"].split(":")[0]) for s in view["skipped"]) == [
        ("metadata.csv", "invalid_metadata"),
        ("notes.bin", "not_audio"),
    ]
    assert all(not r["metadata"] for r in _results(up.url, up.key, view["id"]).values())


def test_a_field_after_the_file_makes_the_batch_the_late_options_say(
    up: _Upload,
    audio: dict[str, Path],  # noqa: F811
) -> None:
    key, tenant, servers = up.key, up.tenant, up.servers
    body = _form(_archive(audio), {"name": "early"}, after={"name": "late", "channels": "mix"})
    got = _post(up.url, key, body, 200_000, lambda: _jobs_of(servers, tenant) > 0)
    assert got.status_code == 202, got.text
    view = wait_batch(up.url, key, got.json()["id"])
    assert (view["status"], view["name"], view["jobs"]) == ("completed", "late", 3), view
    assert tenant_batches(servers["DATABASE_URL"], key) == 1  # the early one is gone
    with session_scope(servers["DATABASE_URL"]) as s:
        channels = set(s.scalars(select(Job.options["channels"].as_string()).where(Job.tenant_id == tenant)))
    assert channels == {"mix"}


def _contradicted(audio: dict[str, Path]) -> bytes:  # noqa: F811
    """a.wav's name changed in the central directory only."""
    raw = bytearray(_archive(audio))
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
        at = raw.index(b"calls/a.wav", zf.start_dir)
    raw[at : at + len(b"calls/a.wav")] = b"calls/z.wav"
    return bytes(raw)


def _unsafe_at_the_end(audio: dict[str, Path]) -> bytes:  # noqa: F811
    return _archive(audio, last=[("../evil.wav", b"RIFF", zipfile.ZIP_STORED)])


def _unsafe_tar_gz_at_the_end(audio: dict[str, Path]) -> bytes:  # noqa: F811
    return _archive(audio, last=[("../evil.wav", b"RIFF", 0)], kind="tar.gz")


def _damaged_tar_gz(audio: dict[str, Path]) -> bytes:  # noqa: F811
    """A byte flipped two thirds in (the filler or c.wav): the early reader has made its jobs by
    then; only the gzip stream's CRC at its end tells (``tarfile`` stops at the end blocks)."""
    raw = bytearray(_archive(audio, kind="tar.gz"))
    raw[len(raw) * 2 // 3] ^= 0xFF
    return bytes(raw)


@pytest.mark.parametrize(
    ("build", "status", "code"),
    [
        # the reader's refusal of an entry that does not match its headers (it was a 500)
        (_contradicted, 400, "archive_bomb"),
        (_unsafe_at_the_end, 400, "unsafe_path"),
        (_unsafe_tar_gz_at_the_end, 400, "unsafe_path"),
        # its damaged member was extracted as it came, the batch made (a later session)
        (_damaged_tar_gz, 415, "unsupported_archive"),
    ],
)
def test_an_archive_refused_at_its_end_leaves_nothing(
    up: _Upload,
    audio: dict[str, Path],  # noqa: F811
    build: Callable[[dict[str, Path]], bytes],
    status: int,
    code: str,
) -> None:
    key, tenant, servers = up.key, up.tenant, up.servers
    got = _post(up.url, key, _form(build(audio), {}), 200_000, lambda: _jobs_of(servers, tenant) > 0)
    assert got.status_code == status, got.text
    assert got.json()["error"]["code"] == code
    _nothing_left(servers, key, tenant)
    assert not _sidecars(servers)


def _sidecars(servers: dict[str, str]) -> list[Path]:
    """A compressed tar's decompressed copies left in the API's upload directory (none once a
    request ended)."""
    return list(_received(servers).glob("*.part.tar"))


def _received(servers: dict[str, str]) -> Path:
    """Where the API receives archives and keeps those its batches read (``<batch id>.archive``)."""
    return Path(servers["root"]) / "data" / "audio" / "batches"


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_a_client_gone_midway_leaves_nothing(
    up: _Upload,
    audio: dict[str, Path],  # noqa: F811
    kind: str,
) -> None:
    key, tenant, servers = up.key, up.tenant, up.servers
    with pytest.raises(ConnectionAbortedError):
        _post(
            up.url,
            key,
            _form(_archive(audio, kind=kind), {}),
            200_000,
            lambda: _jobs_of(servers, tenant) > 0,
            gone=True,
        )
    deadline = time.monotonic() + 20
    while tenant_batches(servers["DATABASE_URL"], key) and time.monotonic() < deadline:
        time.sleep(0.2)
    _nothing_left(servers, key, tenant)
    assert not _sidecars(servers)


def test_an_idempotency_key_is_held_while_its_archive_uploads_and_replays_after(
    up: _Upload,
    audio: dict[str, Path],  # noqa: F811
) -> None:
    key, tenant, servers = up.key, up.tenant, up.servers
    same_key = {"Idempotency-Key": f"upload-{uuid.uuid4().hex}"}
    body = _form(_archive(audio), {"name": "keyed"})
    during: list[httpx.Response] = []

    def another_request_meanwhile() -> bool:
        if _jobs_of(servers, tenant) == 0:
            return False
        small = _zip([("a.wav", audio["a.wav"].read_bytes(), zipfile.ZIP_STORED)])
        files = {"file": ("other.zip", small)}
        during.append(
            httpx.post(f"{up.url}/v1/batches", headers={**auth(key), **same_key}, files=files, timeout=30)
        )
        return True

    got = _post(up.url, key, body, 200_000, another_request_meanwhile, headers=same_key)
    assert got.status_code == 202, got.text
    assert during[0].status_code == 409, during[0].text
    assert during[0].json()["error"]["code"] == "idempotency_conflict"
    assert "still uploading" in during[0].json()["error"]["message"]
    again = _post(up.url, key, body, 1, lambda: True, headers=same_key)
    assert again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == got.json()["id"]
    assert tenant_batches(servers["DATABASE_URL"], key) == 1
