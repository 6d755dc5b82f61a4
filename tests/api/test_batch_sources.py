"""Batches beyond archives, against the real stack: JSON manifests of URLs, server folders under
TONE_BATCH_ROOT, Idempotency-Key, the list of batches, cancel, limits over HTTP, the zip of files
per format, and the one signed batch-end webhook."""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from sqlalchemy import func, select
from standardwebhooks import Webhook

from shared.asr.engine import Recognizer
from shared.db.models import Batch, Job, WebhookDelivery
from shared.db.session import session_scope
from shared.dev.models.tones import synthesize
from shared.platform.batch_state import finish_batch, finish_done_batches
from shared.platform.keys import get_or_create_tenant
from tests.api.test_api import assert_error, auth, serve_directory
from tests.api.test_batches import archive_bytes
from tests.conftest import Proc, make_key, serving, start_api, written
from tests.worker.test_webhooks import Receiver

PARKED_QUEUE = "batch-parked"  # no worker consumes it: jobs sent there stay queued
PUBLIC = "http://93.184.216.34"  # a literal public address: no DNS needed to check it


def stereo_wav(path: Path, left: list[str], right: list[str]) -> Path:
    a, _ = synthesize(left)
    b, _ = synthesize(right)
    audio = np.zeros((max(len(a), len(b)), 2), dtype=np.int16)
    audio[: len(a), 0] = a
    audio[: len(b), 1] = b
    sf.write(path, audio, 8000, subtype="PCM_16")
    return path


zip_bytes = archive_bytes  # a ZIP of {name: bytes}


def post_archive(
    url: str, key: str, data: bytes, headers: dict[str, str] | None = None, **fields: str
) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/batches",
        headers={**auth(key), **(headers or {})},
        files={"file": ("calls.zip", data)},
        data=fields,
        timeout=60,
    )


def post_json(
    url: str, key: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(f"{url}/v1/batches", headers={**auth(key), **(headers or {})}, json=body, timeout=60)


def wait_batch(url: str, key: str, batch_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view = httpx.get(f"{url}/v1/batches/{batch_id}", headers=auth(key), timeout=10).json()
        if view.get("finished_at") or time.monotonic() > deadline:
            return view
        time.sleep(0.3)


def tenant_batches(db: str, key: str) -> int:
    from shared.db.models import ApiKey
    from shared.platform.keys import key_prefix

    with session_scope(db) as s:
        tenant = s.scalar(select(ApiKey.tenant_id).where(ApiKey.prefix == key_prefix(key)))
        return int(s.scalar(select(func.count()).select_from(Batch).where(Batch.tenant_id == tenant)) or 0)


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("batch-sources")
    return {
        "a.wav": stereo_wav(root / "a.wav", ["привет мир"], ["да"]),
        "b.wav": stereo_wav(root / "b.wav", ["как дела"], ["хорошо"]),
        "c.wav": stereo_wav(root / "c.wav", ["до свидания"], ["пока"]),
    }


@pytest.fixture(scope="module")
def offline(audio: dict[str, Path], tone_model: Path) -> dict[str, list[dict[str, Any]]]:
    """The engine's own transcripts of the recordings (channels=split, the batch default)."""
    rec = Recognizer.load(tone_model, threads=1)
    return {
        n: written(rec.transcribe_file(p, channels="split").to_dict()["phrases"]) for n, p in audio.items()
    }


@pytest.fixture(scope="module")
def batch_root(tmp_path_factory: pytest.TempPathFactory, audio: dict[str, Path]) -> Path:
    """TONE_BATCH_ROOT: calls/ (recordings, a copy, a note, metadata.csv, a link leading out),
    other/ (one recording), out -> a folder outside the root."""
    root = tmp_path_factory.mktemp("batch-root")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.wav").write_bytes(audio["c.wav"].read_bytes())
    calls = root / "calls"
    (calls / "sub").mkdir(parents=True)
    (calls / "a.wav").write_bytes(audio["a.wav"].read_bytes())
    (calls / "sub" / "b.wav").write_bytes(audio["b.wav"].read_bytes())
    (calls / "copy.wav").write_bytes(audio["a.wav"].read_bytes())
    (calls / "notes.txt").write_text("not audio")
    (calls / "metadata.csv").write_text("path,agent\na.wav,ivan\nsub/b.wav,olga\n")
    os.symlink(outside / "secret.wav", calls / "link.wav")
    (root / "other").mkdir()
    (root / "other" / "c.wav").write_bytes(audio["c.wav"].read_bytes())
    os.symlink(outside, root / "out")
    return root


@pytest.fixture(scope="module")
def root_api(platform_env: dict[str, str], logs: Path, batch_root: Path) -> Iterator[Proc]:
    """An API whose administrator allowed batches from folders under ``batch_root`` (its jobs go to
    the shared worker's queue)."""
    proc = start_api({**platform_env, "TONE_BATCH_ROOT": str(batch_root)}, logs, "api-batch-root")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def limited_api(platform_env: dict[str, str], logs: Path) -> Iterator[Proc]:
    """An API with small batch limits, private URLs refused (the default), no batch root, and its
    jobs parked in a queue no worker reads."""
    env = {k: v for k, v in platform_env.items() if k != "TONE_ALLOW_PRIVATE_URLS"}
    env.update(
        TONE_BATCH_MAX_ENTRIES="3", TONE_BATCH_MAX_TOTAL_BYTES="150000", TONE_WORKER_QUEUE=PARKED_QUEUE
    )
    proc = start_api(env, logs, "api-batch-limited")
    yield proc
    proc.stop()


# -- refused whole, nothing created ---------------------------------------------------------------


def test_limits_are_enforced_over_http_and_nothing_is_created(
    limited_api: Proc, servers: dict[str, str], audio: dict[str, Path]
) -> None:
    key = make_key(servers, f"limits-{uuid.uuid4().hex[:6]}")
    wav = audio["a.wav"].read_bytes()  # ~100 kB: two of them pass the 150 kB limit
    many = zip_bytes({f"{i}.wav": wav[: 1000 + i] for i in range(5)})
    assert_error(post_archive(limited_api.url, key, many), 413, "too_many_entries")
    big = zip_bytes({"a.wav": wav, "b.wav": audio["b.wav"].read_bytes()})
    assert_error(post_archive(limited_api.url, key, big), 413, "archive_too_large")
    items = [{"audio_url": f"{PUBLIC}/{i}.wav"} for i in range(4)]
    assert_error(post_json(limited_api.url, key, {"items": items}), 413, "too_many_entries")
    assert tenant_batches(servers["DATABASE_URL"], key) == 0


def test_unreadable_zip_entries_are_skipped_with_their_reason_and_damaged_data_refuses_it(
    root_api: Proc, servers: dict[str, str], audio: dict[str, Path]
) -> None:
    """A password-protected entry and a Deflate64 one (Windows' compressed folders write it for
    large files) beside a readable recording: the batch, with both skipped and why; an entry whose
    bzip2 data is damaged: 400, nothing created. Each answered 500 before."""
    from tests.api.test_batch_zip_methods_unit import _patch

    key = make_key(servers, f"methods-{uuid.uuid4().hex[:6]}")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in ("a.wav", "b.wav", "c.wav"):
            zf.writestr(name, audio[name].read_bytes(), compress_type=zipfile.ZIP_BZIP2)
    raw = _patch(_patch(buf.getvalue(), "b.wav", flags=0x1), "c.wav", method=9)
    got = post_archive(root_api.url or "", key, raw)
    assert got.status_code == 202, got.text
    assert (got.json()["jobs"], [s["name"] for s in got.json()["skipped"]]) == (1, ["b.wav", "c.wav"])
    assert got.json()["skipped"][0]["reason"].startswith("encrypted: ")
    assert got.json()["skipped"][1]["reason"].startswith("unsupported_compression: method 9 (Deflate64)")

    damaged = bytearray(buf.getvalue())
    with zipfile.ZipFile(buf) as zf:
        a = zf.getinfo("a.wav")
    n, m = struct.unpack_from("<HH", damaged, a.header_offset + 26)
    damaged[a.header_offset + 30 + n + m + a.compress_size // 2] ^= 0xFF  # inside a.wav's bzip2 stream
    assert_error(post_archive(root_api.url or "", key, bytes(damaged)), 400, "archive_bomb")
    assert tenant_batches(servers["DATABASE_URL"], key) == 1


def test_a_manifest_url_on_a_private_address_is_refused_up_front(
    limited_api: Proc, servers: dict[str, str]
) -> None:
    key = make_key(servers, f"ssrf-{uuid.uuid4().hex[:6]}")
    for private in ("http://127.0.0.1:9/a.wav", "http://10.1.2.3/a.wav", "http://[::1]/a.wav",
                    "http://169.254.169.254/latest/meta-data"):  # fmt: skip
        body = {"items": [{"audio_url": f"{PUBLIC}/ok.wav"}, {"audio_url": private}]}
        got = post_json(limited_api.url, key, body)
        assert_error(got, 400, "url_not_allowed")
        assert "items[1].audio_url" in got.json()["error"]["message"]
    assert_error(
        post_json(limited_api.url, key, {"items": [{"audio_url": "ftp://x/a.wav"}]}), 422, "invalid_request"
    )
    assert_error(post_json(limited_api.url, key, {"items": []}), 422, "invalid_request")
    assert_error(
        post_json(limited_api.url, key, {"items": [{"url": f"{PUBLIC}/a.wav"}]}), 422, "invalid_request"
    )
    # a batch may not outrank interactive jobs (5 by default): its priority stays within 0..4
    too_high = {"items": [{"audio_url": f"{PUBLIC}/a.wav"}], "priority": 5}
    assert_error(post_json(limited_api.url, key, too_high), 422, "invalid_request")
    assert tenant_batches(servers["DATABASE_URL"], key) == 0


def test_folders_are_refused_when_no_batch_root_is_configured(limited_api: Proc, api_key: str) -> None:
    assert_error(post_json(limited_api.url, api_key, {"directory": "calls"}), 403, "directory_not_allowed")


def test_folder_paths_may_not_leave_the_batch_root(root_api: Proc, servers: dict[str, str]) -> None:
    key = make_key(servers, f"escape-{uuid.uuid4().hex[:6]}")
    for path in ("../", "calls/../../etc", "/etc", "out", "out/secret.wav"):
        got = post_json(root_api.url, key, {"directory": path})
        assert_error(got, 400, "unsafe_path")
        assert "/tmp" not in got.json()["error"]["message"]  # no server paths shown
    assert_error(post_json(root_api.url, key, {"directory": "missing"}), 404, "directory_not_found")
    assert_error(post_json(root_api.url, key, {"directory": "calls/a.wav"}), 404, "directory_not_found")
    both = {"directory": "calls", "items": [{"audio_url": f"{PUBLIC}/a.wav"}]}
    assert_error(post_json(root_api.url, key, both), 422, "invalid_request")
    assert_error(post_json(root_api.url, key, {"name": "x"}), 422, "invalid_request")
    bad_hook = {"directory": "calls", "webhook_url": "ftp://example.com/hook"}
    assert_error(post_json(root_api.url, key, bad_hook), 422, "invalid_request")
    assert tenant_batches(servers["DATABASE_URL"], key) == 0


# -- folders ----------------------------------------------------------------------------------------


def test_a_folder_batch_reads_files_in_place_and_job_delete_keeps_them(
    root_api: Proc, worker: Proc, servers: dict[str, str], batch_root: Path, offline: dict[str, Any]
) -> None:
    key = make_key(servers, f"folder-{uuid.uuid4().hex[:6]}")
    got = post_json(root_api.url, key, {"directory": "calls", "name": "calls of May"})
    assert got.status_code == 202, got.text
    body = got.json()
    assert (body["source"], body["name"], body["items"], body["jobs"]) == ("directory", "calls of May", 3, 2)
    assert sorted(s["name"] for s in body["skipped"]) == ["link.wav", "notes.txt"]
    assert next(s for s in body["skipped"] if s["name"] == "link.wav")["reason"].startswith("link")
    view = wait_batch(root_api.url, key, body["id"])
    assert view["status"] == "completed" and view["counts"]["completed"] == 2, view

    lines = httpx.get(f"{root_api.url}/v1/batches/{body['id']}/results", headers=auth(key)).text.splitlines()
    by_name = {r["name"]: r for r in map(json.loads, lines)}
    assert sorted(by_name) == ["a.wav", "copy.wav", "sub/b.wav"]
    assert by_name["a.wav"]["phrases"] == offline["a.wav"] == by_name["copy.wav"]["phrases"]
    assert by_name["sub/b.wav"]["phrases"] == offline["b.wav"]
    assert by_name["sub/b.wav"]["metadata"] == {"path": "sub/b.wav", "agent": "olga"}

    job = by_name["a.wav"]["job_id"]
    with session_scope(servers["DATABASE_URL"]) as s:
        row = s.get(Job, uuid.UUID(job))
        assert row is not None and row.source == "directory"
        assert Path(row.audio_path or "") == batch_root / "calls" / "a.wav"  # in place, not copied
    assert httpx.delete(f"{root_api.url}/v1/jobs/{job}", headers=auth(key)).status_code == 204
    assert (batch_root / "calls" / "a.wav").is_file()  # the archive's file is not the platform's to remove
    view = httpx.get(f"{root_api.url}/v1/batches/{body['id']}", headers=auth(key)).json()
    assert view["jobs"] == 1 and view["status"] == "completed"


# -- Idempotency-Key, list, cancel -----------------------------------------------------------------


def test_idempotency_key_returns_the_same_batch_for_every_form(
    root_api: Proc, servers: dict[str, str], audio: dict[str, Path]
) -> None:
    key = make_key(servers, f"idem-{uuid.uuid4().hex[:6]}")
    archive = zip_bytes({"a.wav": audio["a.wav"].read_bytes()})
    manifest = {"items": [{"audio_url": f"{PUBLIC}/a.wav", "metadata": {"n": 1}}], "name": "m"}
    forms = [
        (lambda h: post_archive(root_api.url, key, archive, h),
         lambda h: post_archive(root_api.url, key, zip_bytes({"b.wav": audio["b.wav"].read_bytes()}), h)),
        (lambda h: post_json(root_api.url, key, manifest, h),
         lambda h: post_json(root_api.url, key, {**manifest, "items": [{"audio_url": f"{PUBLIC}/b"}]}, h)),
        (lambda h: post_json(root_api.url, key, {"directory": "other"}, h),
         lambda h: post_json(root_api.url, key, {"directory": "calls"}, h)),
    ]  # fmt: skip
    for same, different in forms:
        h = {"Idempotency-Key": uuid.uuid4().hex}
        first = same(h)
        assert first.status_code == 202, first.text
        again = same(h)
        assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["id"] == first.json()["id"]
        assert_error(different(h), 409, "idempotency_conflict")
    assert tenant_batches(servers["DATABASE_URL"], key) == 3
    unkeyed = [post_archive(root_api.url, key, archive).json()["id"] for _ in range(2)]
    assert unkeyed[0] != unkeyed[1]  # without a key, every request is a new batch


def test_the_batch_list_is_newest_first_and_pages_with_a_cursor(
    limited_api: Proc, servers: dict[str, str], other_key: str, audio: dict[str, Path]
) -> None:
    key = make_key(servers, f"list-{uuid.uuid4().hex[:6]}")
    archive = zip_bytes({"a.wav": audio["a.wav"].read_bytes()})
    ids = [post_archive(limited_api.url, key, archive, name=f"b{i}").json()["id"] for i in range(5)]
    seen: list[str] = []
    cursor, pages = None, 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{limited_api.url}/v1/batches", headers=auth(key), params=params).json()
        seen += [b["id"] for b in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1] and pages == 3
    first = httpx.get(f"{limited_api.url}/v1/batches", headers=auth(key), params={"limit": 1}).json()["data"][
        0
    ]
    assert first["name"] == "b4" and first["status"] == "queued" and first["counts"]["queued"] == 1
    assert first["created_at"] and first["finished_at"] is None and first["skipped"] == []
    assert first == httpx.get(f"{limited_api.url}/v1/batches/{ids[-1]}", headers=auth(key)).json() | {
        "eta_seconds": first["eta_seconds"]
    }
    others = httpx.get(f"{limited_api.url}/v1/batches", headers=auth(other_key)).json()["data"]
    assert not set(ids) & {b["id"] for b in others}
    assert_error(
        httpx.get(f"{limited_api.url}/v1/batches", headers=auth(key), params={"cursor": "x"}),
        400,
        "invalid_cursor",
    )


def test_cancel_ends_a_queued_batch_at_once_as_cancelled(
    limited_api: Proc, servers: dict[str, str], audio: dict[str, Path]
) -> None:
    key = make_key(servers, f"cancel-{uuid.uuid4().hex[:6]}")
    items = [{"audio_url": f"{PUBLIC}/{n}.wav"} for n in range(3)]
    batch = post_json(limited_api.url, key, {"items": items}).json()
    assert batch["status"] == "queued" and batch["jobs"] == 3 and batch["source"] == "manifest"
    done = httpx.post(f"{limited_api.url}/v1/batches/{batch['id']}/cancel", headers=auth(key)).json()
    assert done["cancelled"] == 3 and done["status"] == "cancelled" and done["finished_at"]
    assert done["counts"]["cancelled"] == 3 and done["progress"] == 1.0
    again = httpx.post(f"{limited_api.url}/v1/batches/{batch['id']}/cancel", headers=auth(key)).json()
    assert again["cancelled"] == 0 and again["finished_at"] == done["finished_at"]
    with session_scope(servers["DATABASE_URL"]) as s:
        row = s.get(Batch, uuid.UUID(batch["id"]))
        assert row is not None and row.status == "cancelled" and row.cancel_requested_at is not None


# -- a manifest end to end: results, zip of formats, the batch webhook ------------------------------


def test_a_manifest_batch_transcribes_urls_zips_every_format_and_sends_one_signed_event(
    api: Proc, worker: Proc, api_key: str, servers: dict[str, str], audio: dict[str, Path],
    offline: dict[str, Any],
) -> None:  # fmt: skip
    with serving(Receiver()) as receiver, serve_directory(audio["a.wav"].parent) as base:
        assert isinstance(receiver, Receiver)
        hook = receiver.script((200, {}))
        body = {
            "name": "by url",
            "webhook_url": hook,
            "items": [
                {"audio_url": f"{base}/a.wav", "metadata": {"call": 1}},
                {"audio_url": f"{base}/b.wav", "name": "calls/b.wav"},
                {"audio_url": f"{base}/missing.wav"},
            ],
        }
        got = post_json(api.url, api_key, body)
        assert got.status_code == 202, got.text
        batch = got.json()
        assert (batch["source"], batch["items"], batch["jobs"]) == ("manifest", 3, 3)
        view = wait_batch(api.url, api_key, batch["id"])
        assert view["status"] == "completed", view
        assert view["counts"]["completed"] == 2 and view["counts"]["failed"] == 1
        [request] = _wait_requests(receiver, hook, 1)

    db = servers["DATABASE_URL"]
    secret = _secret(db, api_key)
    event = Webhook(secret).verify(request["body"], request["headers"])  # raises unless signed right
    assert event["type"] == "batch.completed"
    assert event["data"]["id"] == batch["id"] and event["data"]["counts"]["failed"] == 1
    assert event["data"]["links"]["results"] == f"/v1/batches/{batch['id']}/results"
    assert event["data"]["finished_at"] == view["finished_at"]

    a, b, missing = "127.0.0.1/a.wav", "calls/b.wav", "127.0.0.1/missing.wav"
    lines = httpx.get(f"{api.url}/v1/batches/{batch['id']}/results", headers=auth(api_key)).text.splitlines()
    by_name = {r["name"]: r for r in map(json.loads, lines)}
    assert sorted(by_name) == sorted([a, b, missing])
    assert by_name[a]["phrases"] == offline["a.wav"] and by_name[a]["metadata"] == {"call": 1}
    assert by_name[b]["phrases"] == offline["b.wav"]
    assert by_name[missing]["status"] == "failed" and by_name[missing]["error"]["code"] == "download_failed"

    res = httpx.get(
        f"{api.url}/v1/batches/{batch['id']}/results",
        params={"format": "zip", "formats": "srt,vtt,txt,json"},
        headers=auth(api_key),
    )
    assert res.status_code == 200 and res.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(res.content)) as zf:
        stems = {a: "127.0.0.1/a", b: "calls/b"}
        expected = [f"{s}.{f}" for s in stems.values() for f in ("srt", "vtt", "txt", "json")]
        assert sorted(zf.namelist()) == sorted([*expected, "results.jsonl", "errors.csv", "analytics.csv"])
        for name, stem in stems.items():
            job = by_name[name]["job_id"]
            for fmt in ("srt", "vtt", "txt", "json"):
                want = httpx.get(
                    f"{api.url}/v1/jobs/{job}/transcript", params={"format": fmt}, headers=auth(api_key)
                )
                assert zf.read(f"{stem}.{fmt}").decode() == want.text, (name, fmt)
        raw_errors = zf.read("errors.csv")
        assert raw_errors.startswith("\ufeff".encode())  # a BOM: Excel on a Russian Windows reads UTF-8
        errors = list(csv.DictReader(io.StringIO(raw_errors.decode("utf-8-sig"))))
        assert [(e["name"], e["status"], e["code"]) for e in errors] == [
            (missing, "failed", "download_failed")
        ]
        assert len(zf.read("results.jsonl").decode().splitlines()) == 3
    assert_error(
        httpx.get(f"{api.url}/v1/batches/{batch['id']}/results", params={"format": "zip", "formats": "doc"},
                  headers=auth(api_key)),
        422, "invalid_request",
    )  # fmt: skip

    # exactly one event: the sweep finds nothing left to finish, and nothing else was sent
    with session_scope(db) as s:
        assert batch["id"] not in {f.id for f in finish_done_batches(s)}
    time.sleep(2)
    assert len(receiver.requests(hook)) == 1
    with session_scope(db) as s:
        rows = list(
            s.scalars(select(WebhookDelivery).where(WebhookDelivery.batch_id == uuid.UUID(batch["id"])))
        )
        assert [(r.event_type, r.attempt, r.success, r.job_id) for r in rows] == [
            ("batch.completed", 1, True, None)
        ]
        job_ids = [uuid.UUID(r["job_id"]) for r in by_name.values()]
        job_events = s.scalar(
            select(func.count()).select_from(WebhookDelivery).where(WebhookDelivery.job_id.in_(job_ids))
        )
        assert job_events == 0  # the items send no job.* events unless item_webhooks is set


def _wait_requests(receiver: Receiver, url: str, n: int, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(receiver.requests(url)) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    return receiver.requests(url)


def _secret(db: str, key: str) -> str:
    from shared.db.models import ApiKey, Tenant
    from shared.platform.keys import key_prefix

    with session_scope(db) as s:
        tenant_id = s.scalar(select(ApiKey.tenant_id).where(ApiKey.prefix == key_prefix(key)))
        tenant = s.get(Tenant, tenant_id)
        assert tenant is not None
        return tenant.webhook_secret


# -- exactly one finisher, with real concurrent transactions -----------------------------------------


def test_the_batch_is_finished_exactly_once_when_its_last_jobs_end_together(servers: dict[str, str]) -> None:
    """Two workers end a batch's last two jobs at the same moment, each checking after its own
    commit: exactly one of them finishes the batch (and would send its event), every time."""
    db = servers["DATABASE_URL"]
    for _ in range(15):
        with session_scope(db) as s:
            tenant = get_or_create_tenant(s, "finish-once")
            batch = Batch(tenant_id=tenant.id, source="manifest", skipped=[], items=2, options={})
            s.add(batch)
            s.flush()
            jobs = [
                Job(tenant_id=tenant.id, batch_id=batch.id, status="processing", options={}) for _ in range(2)
            ]
            s.add_all(jobs)
            s.flush()
            batch_id, job_ids = batch.id, [j.id for j in jobs]
        barrier = threading.Barrier(2)
        won: list[Any] = []
        threads = [threading.Thread(target=_end_job, args=(db, j, batch_id, barrier, won)) for j in job_ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len([w for w in won if w is not None]) == 1, won
        with session_scope(db) as s:
            row = s.get(Batch, batch_id)
            assert row is not None and row.status == "completed" and row.finished_at is not None
            assert finish_batch(s, batch_id) is None  # never twice


def _end_job(
    db: str, job_id: uuid.UUID, batch_id: uuid.UUID, barrier: threading.Barrier, won: list[Any]
) -> None:
    """One worker: its job final and committed; then, with the other at the same moment, the check."""
    from sqlalchemy import update

    with session_scope(db) as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status="completed", finished_at=datetime.now(timezone.utc))
        )
    barrier.wait()
    with session_scope(db) as s:
        won.append(finish_batch(s, batch_id))
