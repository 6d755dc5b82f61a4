"""Input that must be refused at the door with a 4xx and a code, never a 500 nor work (issue 16,
items 8-12), against the real uvicorn server: understated ZIP entries, the archive's total
compression ratio, tar.gz bombs stopped at the first header over a limit, deep JSON, JSON bodies
capped at 1 MiB (also the streaming call), webhook and audio URLs checked up front, huge headers,
large metadata."""

from __future__ import annotations

import gzip
import io
import json
import struct
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.jsonbody import JSON_LIMIT, MAX_DEPTH, METADATA_LIMIT
from tests.api.test_api import assert_error, auth
from tests.api.test_batches import archive_bytes, post_batch
from tests.conftest import Proc, start_api


def _understated_zip(name: str, real: bytes, declared: int) -> bytes:
    """A ZIP whose local and central headers claim ``declared`` uncompressed bytes for ``real``."""
    data = bytearray(archive_bytes({name: real}))
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    assert local >= 0 and central > local
    struct.pack_into("<I", data, local + 22, declared)
    struct.pack_into("<I", data, central + 24, declared)
    return bytes(data)


def _truncated_tar_gz(size: int) -> bytes:
    """A tar.gz whose first member declares ``size`` bytes, of which only 1 MiB of zeros is there.

    Listing past that member means decompressing all of it (here: reading past the end, an error);
    an archive refused at its first header over a limit never gets there."""
    info = tarfile.TarInfo("calls/huge.wav")
    info.size = size
    raw = info.tobuf(format=tarfile.GNU_FORMAT) + bytes(1024 * 1024)
    return gzip.compress(raw, compresslevel=1)


def test_a_zip_entry_larger_than_its_headers_is_400_not_500(api: Proc, api_key: str) -> None:
    data = _understated_zip("a.wav", bytes(2_000_000), 5000)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:  # the lie is in place: Python trusts it
        assert zf.infolist()[0].file_size == 5000
    assert_error(post_batch(api.url, api_key, data), 400, "archive_bomb")


def test_the_whole_zip_ratio_is_checked_not_only_each_large_entry(api: Proc, api_key: str) -> None:
    # 60 entries of exactly 1 MiB of zeros: each under the per-entry check, 60 MiB from ~60 KB
    data = archive_bytes({f"z{i:02}.wav": bytes(1024 * 1024) for i in range(60)})
    assert len(data) < 200_000
    assert_error(post_batch(api.url, api_key, data), 400, "archive_bomb")


def test_a_tar_gz_bomb_is_refused_at_its_first_header(api: Proc, api_key: str) -> None:
    # 2 GiB declared (over the 1 GiB entry limit): refused from the header, nothing decompressed past it
    data = _truncated_tar_gz(2 * 1024**3)
    assert_error(post_batch(api.url, api_key, data, name="calls.tar.gz"), 413, "archive_too_large")


def _nested(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


@pytest.mark.parametrize("levels", [100_000, 5_000, MAX_DEPTH + 5])
def test_deeply_nested_json_is_400(api: Proc, api_key: str, levels: int) -> None:
    body = '{"audio_url": "https://example.com/a.wav", "metadata": ' + _nested(levels) + "}"
    headers = {**auth(api_key), "Content-Type": "application/json"}
    assert_error(httpx.post(f"{api.url}/v1/jobs", content=body, headers=headers), 400, "json_too_deep")
    whole = httpx.post(f"{api.url}/v1/jobs", content=_nested(levels), headers=headers)
    assert_error(whole, 400, "json_too_deep")
    form = httpx.post(
        f"{api.url}/v1/jobs",
        headers=auth(api_key),
        files={"file": ("a.wav", b"RIFF")},
        data={"metadata": _nested(levels)},
    )
    assert_error(form, 400, "json_too_deep")
    manifest = '{"items": [{"audio_url": "https://example.com/a.wav", "metadata": ' + _nested(levels) + "}]}"
    assert_error(httpx.post(f"{api.url}/v1/batches", content=manifest, headers=headers), 400, "json_too_deep")


def test_every_json_body_is_capped_at_1_mib_also_the_streaming_call(api: Proc, api_key: str) -> None:
    headers = {**auth(api_key), "Content-Type": "application/json"}
    big = json.dumps({"sample_rate": 8000, "pad": "x" * (JSON_LIMIT + 10)})
    for path in ("/transcribe/streaming", "/v1/jobs"):
        assert_error(httpx.post(f"{api.url}{path}", content=big, headers=headers), 413, "body_too_large")

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield big.encode()[: JSON_LIMIT // 2]
        yield big.encode()[JSON_LIMIT // 2 :]

    got = httpx.post(f"{api.url}/transcribe/streaming", content=chunked(), headers=headers)
    assert_error(got, 413, "body_too_large")
    # a batch manifest keeps its own, larger cap: 2 MiB of items is read (and judged on its content)
    items = [{"audio_url": f"ftp://example.com/{i}.wav", "name": f"{i:06}" + "n" * 400} for i in range(5000)]
    manifest = json.dumps({"items": items})
    assert len(manifest) > 2 * JSON_LIMIT
    got = httpx.post(f"{api.url}/v1/batches", content=manifest, headers=headers, timeout=60)
    assert got.status_code == 422, got.text


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "javascript:alert(1)", "https://example.com/" + "a" * 10_000, "http://:80/"]
)
def test_bad_webhook_urls_are_refused_at_the_door(api: Proc, api_key: str, url: str) -> None:
    body = {"audio_url": "https://example.com/a.wav", "webhook_url": url}
    got = httpx.post(f"{api.url}/v1/jobs", json=body, headers=auth(api_key))
    assert_error(got, 422, "invalid_request")
    assert "webhook_url" in got.json()["error"]["message"]
    form = httpx.post(
        f"{api.url}/v1/jobs",
        headers=auth(api_key),
        files={"file": ("a.wav", b"RIFF")},
        data={"webhook_url": url},
    )
    assert_error(form, 422, "invalid_request")
    batch = httpx.post(
        f"{api.url}/v1/batches", json={"directory": "x", "webhook_url": url}, headers=auth(api_key)
    )
    assert_error(batch, 422, "invalid_request")


def test_large_metadata_is_refused(api: Proc, api_key: str) -> None:
    metadata = {"notes": "я" * 450_000}  # ~900 KB as UTF-8, under the 1 MiB body cap
    body = {"audio_url": "https://example.com/a.wav", "metadata": metadata}
    assert_error(
        httpx.post(f"{api.url}/v1/jobs", json=body, headers=auth(api_key)), 400, "metadata_too_large"
    )
    just_over = {"n": "x" * METADATA_LIMIT}
    body = {"items": [{"audio_url": "https://example.com/a.wav", "metadata": just_over}]}
    assert_error(
        httpx.post(f"{api.url}/v1/batches", json=body, headers=auth(api_key)), 400, "metadata_too_large"
    )


def test_huge_request_headers_are_431(api: Proc, api_key: str) -> None:
    got = httpx.get(f"{api.url}/v1/jobs", headers={**auth(api_key), "X-Pad": "x" * 200_000})
    assert_error(got, 431, "headers_too_large")
    assert httpx.get(f"{api.url}/v1/jobs", headers={**auth(api_key), "X-Pad": "x" * 1000}).status_code == 200


@pytest.fixture(scope="module")
def strict_api(platform_env: dict[str, str], logs: Path) -> Iterator[Proc]:
    """An API that refuses private URL targets (the default)."""
    env = {k: v for k, v in platform_env.items() if k != "TONE_ALLOW_PRIVATE_URLS"}
    proc = start_api(env, logs, "api-strict-urls")
    yield proc
    proc.stop()


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/a.wav", "http://10.1.2.3/a.wav", "http://[::1]/a.wav"])
def test_an_audio_url_on_a_private_address_is_refused_up_front(
    strict_api: Proc, api_key: str, url: str
) -> None:
    got = httpx.post(f"{strict_api.url}/v1/jobs", json={"audio_url": url}, headers=auth(api_key))
    assert_error(got, 400, "url_not_allowed")
