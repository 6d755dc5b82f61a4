"""Uploads (an archive to ``POST /v1/batches``, a recording to ``POST /v1/jobs``) go straight to the
audio directory as they arrive (``api.multipart``): written once, their form fields read before or
after them, and on any bad body, refusal, limit passed or client gone midway, nothing of them stays
on disk."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from api.errors import ApiError
from api.uploads import FileSink
from shared.db.models import Batch
from shared.db.session import session_scope
from tests.api.test_api import assert_error, auth
from tests.conftest import Proc, start_api

FILLER = 6 * 1024 * 1024  # a non-audio member: in the upload, never extracted


def _archive() -> bytes:
    wav = io.BytesIO()
    sf.write(wav, np.random.default_rng(7).normal(0, 2000, 8000).astype(np.int16), 8000, format="WAV")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("calls/one.wav", wav.getvalue())
        zf.writestr("notes.bin", os.urandom(FILLER))  # skipped as not audio
    return buf.getvalue()


def _written(pid: int) -> int:
    """Bytes the API's processes passed to write() (/proc/<pid>/io ``wchar``), children included."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    total = 0
    for p in [pid, *map(int, children)]:
        for line in Path(f"/proc/{p}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                total += int(line.split()[1])
    return total


def _leftovers(platform_env: dict[str, str]) -> list[str]:
    folder = Path(platform_env["TONE_DATA_DIR"]) / "audio" / "batches"
    return sorted(p.name for p in folder.glob("*")) if folder.exists() else []


def _body(boundary: str, parts: list[tuple[str, str | None, bytes]], close: bool = True) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if close else b"")


def _post(url: str, key: str, boundary: str, body: bytes | Iterator[bytes]) -> httpx.Response:
    headers = {**auth(key), "Content-Type": f"multipart/form-data; boundary={boundary}"}
    return httpx.post(f"{url}/v1/batches", headers=headers, content=body, timeout=60)


def test_an_archive_is_written_once_and_its_fields_are_read_on_either_side_of_it(
    api: Proc, api_key: str, platform_env: dict[str, str], servers: dict[str, str]
) -> None:
    data = _archive()
    boundary = uuid.uuid4().hex
    body = _body(
        boundary,
        [
            ("name", None, "Звонки за ноябрь".encode()),
            ("file", "calls.zip", data),
            ("priority", None, b"3"),
        ],
    )
    before = _written(api.popen.pid)
    response = _post(api.url, api_key, boundary, body)
    written = _written(api.popen.pid) - before
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["name"] == "Звонки за ноябрь"
    with session_scope(servers["DATABASE_URL"]) as s:  # a field after the file is read too
        assert s.get(Batch, uuid.UUID(batch["id"])).options["priority"] == 3
    assert batch["items"] == 1 and [s["name"] for s in batch["skipped"]] == ["notes.bin"]
    # the archive once, the one recording once more (spooled, then copied, it was twice the archive)
    assert len(data) <= written < 1.5 * len(data), written
    assert _leftovers(platform_env) == []
    httpx.delete(f"{api.url}/v1/batches/{batch['id']}", headers=auth(api_key), timeout=30)


def test_a_bad_multipart_body_is_refused_and_leaves_nothing(
    api: Proc, api_key: str, platform_env: dict[str, str]
) -> None:
    data = _archive()
    b = uuid.uuid4().hex
    cases: list[tuple[bytes, int, str]] = [
        (_body(b, [("file", "calls.zip", data)], close=False), 400, "bad_request"),  # cut short
        (_body(b, [("file", "a.zip", data), ("file", "b.zip", data)]), 400, "bad_request"),  # two files
        (_body(b, [("archive", "calls.zip", data)]), 422, "invalid_request"),  # no part named file
        (_body(b, [("name", None, b"x" * 1_100_000), ("file", "calls.zip", data)]), 400, "bad_request"),
        (_body(b, [("file", "calls.zip", data), ("priority", None, b"9")]), 422, "invalid_request"),
    ]
    for body, status, code in cases:
        assert_error(_post(api.url, api_key, b, body), status, code)
    no_boundary = httpx.post(
        f"{api.url}/v1/batches",
        headers={**auth(api_key), "Content-Type": "multipart/form-data"},
        content=_body(b, [("file", "calls.zip", data)]),
        timeout=60,
    )
    assert_error(no_boundary, 400, "bad_request")
    assert _leftovers(platform_env) == []


@pytest.fixture(scope="module")
def small_api(platform_env: dict[str, str], logs: Path) -> Iterator[Proc]:
    proc = start_api({**platform_env, "TONE_MAX_UPLOAD_BYTES": "1000000"}, logs, "api-small-uploads")
    yield proc
    proc.stop()


def test_an_archive_over_the_limit_leaves_nothing(
    small_api: Proc, api_key: str, platform_env: dict[str, str]
) -> None:
    boundary = uuid.uuid4().hex
    head, tail = _body(boundary, [("file", "calls.zip", b"@")]).split(b"@")

    def chunked(total: int) -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield head
        for _ in range(total // 65536):
            yield b"\0" * 65536
        yield tail

    # over the upload limit though within the form's slack: refused while written, the part removed
    assert_error(_post(small_api.url, api_key, boundary, chunked(1_310_720)), 413, "file_too_large")
    assert_error(_post(small_api.url, api_key, boundary, chunked(8 * 1024 * 1024)), 413, "file_too_large")
    assert _leftovers(platform_env) == []


def test_an_archive_is_on_disk_while_it_arrives_and_gone_when_its_client_goes(
    api: Proc, api_key: str, platform_env: dict[str, str]
) -> None:
    boundary = uuid.uuid4().hex
    head = _body(boundary, [("file", "calls.zip", b"@")]).split(b"@")[0]
    port = int(str(api.url).rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        request = (
            f"POST /v1/batches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api_key}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 9000000\r\n\r\n"
        )
        sock.sendall(request.encode() + head + os.urandom(3_000_000))
        deadline = time.monotonic() + 10
        while not _leftovers(platform_env) and time.monotonic() < deadline:
            time.sleep(0.05)
        arriving = _leftovers(platform_env)
        assert len(arriving) == 1 and arriving[0].endswith(".upload.part"), arriving  # written as it comes
    deadline = time.monotonic() + 10
    while _leftovers(platform_env) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _leftovers(platform_env) == []  # the client went away: its partial archive with it
    assert httpx.get(f"{api.url}/livez", timeout=10).status_code == 200


def _wav(seconds: float, seed: int) -> bytes:
    out = io.BytesIO()
    audio = np.random.default_rng(seed).normal(0, 2000, int(seconds * 8000)).astype(np.int16)
    sf.write(out, audio, 8000, format="WAV", subtype="PCM_16")
    return out.getvalue()


def _audio_files(platform_env: dict[str, str]) -> set[str]:
    folder = Path(platform_env["TONE_DATA_DIR"]) / "audio"
    return {p.name for p in folder.iterdir() if p.is_file()} if folder.exists() else set()


def test_a_recording_is_written_once_and_a_refused_one_leaves_nothing(
    api: Proc, api_key: str, platform_env: dict[str, str]
) -> None:
    wav = _wav(200, 11)  # 3.2 MB
    before = _written(api.popen.pid)
    response = httpx.post(
        f"{api.url}/v1/jobs", headers=auth(api_key), files={"file": ("call.wav", wav)}, timeout=60
    )
    written = _written(api.popen.pid) - before
    assert response.status_code == 202, response.text
    assert f"{response.json()['id']}.wav" in _audio_files(platform_env)
    assert len(wav) <= written < 1.3 * len(wav), written  # once (spooled, then copied: twice)
    files = _audio_files(platform_env)
    key = {**auth(api_key), "Idempotency-Key": uuid.uuid4().hex}
    first = httpx.post(f"{api.url}/v1/jobs", headers=key, files={"file": ("a.wav", _wav(1, 12))}, timeout=60)
    assert first.status_code == 202, first.text
    files.add(f"{first.json()['id']}.wav")

    def job(data: bytes, headers: dict[str, str] | None = None, **fields: str) -> int:
        files = {"file": ("x.wav", data)}
        return httpx.post(
            f"{api.url}/v1/jobs", headers=headers or auth(api_key), files=files, data=fields, timeout=60
        ).status_code

    assert job(_wav(1, 13), key) == 409  # the same key with another recording: the second does not stay
    assert job(b"") == 400  # empty
    assert job(os.urandom(9000)) == 415  # not audio
    assert job(_wav(1, 14), audio_url="https://example.com/a.wav") == 422  # a file and a URL
    assert job(_wav(1, 15), priority="99") == 422  # options are checked after the file arrived
    assert job(_wav(1, 16), file="not a file part") == 422  # file as a text field beside the file
    as_text = httpx.post(  # a form with no file part: file as text is refused, not ignored
        f"{api.url}/v1/jobs",
        headers=auth(api_key),
        data={"audio_url": "https://example.com/a.wav", "file": "x"},
        timeout=60,
    )
    assert_error(as_text, 422, "invalid_request")
    assert "file part" in as_text.json()["error"]["message"]
    assert _audio_files(platform_env) == files


@pytest.mark.parametrize("path", ["/transcribe", "/v1/audio/transcriptions"])
def test_a_synchronous_calls_recording_is_written_once_and_a_refused_one_leaves_nothing(
    path: str, api: Proc, worker: Proc, api_key: str, platform_env: dict[str, str]
) -> None:
    """The legacy call and OpenAI's, which wait for the transcript: their recording goes where the
    job keeps it as it arrives (Starlette's form reader spooled it, then it was copied), its fields
    are read as FastAPI read them, and nothing of a refused one stays."""
    wav = _wav(200, 21)  # 3.2 MB
    before = _written(api.popen.pid)
    fields = {"return_timestamps": "false"} if path == "/transcribe" else {"response_format": "text"}
    response = httpx.post(
        f"{api.url}{path}", headers=auth(api_key), files={"file": ("call.wav", wav)}, data=fields, timeout=120
    )
    written = _written(api.popen.pid) - before
    assert response.status_code == 200, response.text
    assert len(wav) <= written < 1.3 * len(wav), written  # once (spooled, then copied: twice)
    if path == "/transcribe":  # return_timestamps=false: phrases with their text only
        assert all(set(p) == {"text"} for p in response.json()["phrases"])
    else:  # response_format=text: the transcript as plain text
        assert response.headers["content-type"].startswith("text/plain")
    files = _audio_files(platform_env)

    def call(data: bytes, **form: str | list[str]) -> httpx.Response:
        parts = {"file": ("x.wav", data)}
        return httpx.post(f"{api.url}{path}", headers=auth(api_key), files=parts, data=form, timeout=60)

    def refused(response: httpx.Response, status: int, code: str) -> None:  # either error shape
        assert response.status_code == status and response.json()["error"]["code"] == code, response.text

    refused(call(b""), 400, "empty_audio")
    assert call(os.urandom(9000)).status_code == 415  # not audio
    boundary = uuid.uuid4().hex
    no_file = httpx.post(
        f"{api.url}{path}",
        headers={**auth(api_key), "Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=_body(boundary, [("model", None, b"t-one")]),
        timeout=60,
    )
    assert no_file.status_code == 422 and "file" in no_file.json()["error"]["message"]
    if path == "/transcribe":
        refused = call(_wav(1, 22), return_timestamps="maybe")
        assert_error(refused, 422, "invalid_request")
        assert "return_timestamps" in refused.json()["error"]["message"]
    else:  # OpenAI's shape, with the field named
        refused = call(_wav(1, 22), response_format="xml")
        assert refused.status_code == 422 and refused.json()["error"]["param"] == "response_format"
        wrong_model = call(_wav(1, 23), model="gpt-4o-transcribe")
        assert wrong_model.status_code == 400 and wrong_model.json()["error"]["code"] == "invalid_model"
        several = call(
            _wav(1, 24), response_format="text", **{"timestamp_granularities[]": ["word", "segment"]}
        )
        assert several.status_code == 400 and several.json()["error"]["param"] == "timestamp_granularities"
    not_a_form = httpx.post(f"{api.url}{path}", headers=auth(api_key), content=_wav(1, 25), timeout=60)
    assert not_a_form.status_code == 415
    assert _audio_files(platform_env) == files


@pytest.mark.parametrize("path", ["/transcribe", "/v1/audio/transcriptions"])
def test_a_synchronous_call_with_a_wrong_key_is_refused_before_its_body_is_read(
    path: str, api: Proc, platform_env: dict[str, str]
) -> None:
    """FastAPI reads a route's form parameters before its dependencies, the key check included: a
    caller without a valid key made the server spool its whole upload first."""
    wav = _wav(600, 26)  # 9.6 MB
    files = _audio_files(platform_env)
    before = _written(api.popen.pid)
    response = httpx.post(
        f"{api.url}{path}", headers=auth("tone_wrong_" + "y" * 32), files={"file": ("x.wav", wav)}, timeout=60
    )
    assert response.status_code == 401
    assert _written(api.popen.pid) - before < 1024 * 1024  # not spooled (it was 9.6 MB)
    assert _audio_files(platform_env) == files


def test_an_upload_whose_partial_file_was_swept_meanwhile_fails_clearly(tmp_path: Path) -> None:
    """A body that stalled past ``TONE_STRAY_FILE_HOURS`` had its ``.part`` removed by the stray
    sweep: its end is a 408 ``upload_stalled``, not a 500, and nothing is left."""
    sink = FileSink(tmp_path / "a.wav", 1 << 20)
    sink.write(b"RIFF")
    sink.flush()
    sink.part.unlink()  # what worker.retention.sweep_strays does to a .part untouched that long
    with pytest.raises(ApiError) as stalled:
        sink.finish()
    assert (stalled.value.status, stalled.value.code) == (408, "upload_stalled")
    assert list(tmp_path.iterdir()) == []
