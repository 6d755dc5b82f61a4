"""Uploads to disk in pieces: never the whole file in memory, never over the limit.

Two guards: :class:`BodyLimitMiddleware` refuses a request body larger than the upload limit (plus
room for form fields; a JSON body: ``JSON_LIMIT``, a batch manifest ``MANIFEST_LIMIT``) before
FastAPI parses it — from ``Content-Length`` at once, or by counting the bytes of a chunked body as
they arrive —, and request headers over ``HEADER_LIMIT`` in all (431); and :func:`save_stream`
(:class:`FileSink`) copies a spooled upload (or any byte stream) to ``settings.audio_path`` in 1 MiB
pieces, hashing and counting as it goes, removing the partial file on any failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, error_body
from api.jsonbody import JSON_LIMIT, MANIFEST_LIMIT
from shared.platform import received_files
from shared.platform.playback_cache import remove_copies

PIECE = 1024 * 1024
FORM_SLACK = 1024 * 1024  # multipart boundaries and form fields beside the file
HEADER_LIMIT = 32 * 1024  # all request headers together (names and values)
_MANIFEST_PATHS = ("/v1/batches",)
_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


@dataclass(frozen=True)
class StoredAudio:
    path: Path
    size: int
    sha256: str


def too_large(limit: int) -> ApiError:
    return ApiError(413, "file_too_large", f"the upload is larger than the limit of {limit} bytes")


def audio_file_path(audio_dir: Path, name: str, filename: str | None) -> Path:
    """Where an upload is kept: ``<audio_dir>/<name><suffix of the client's filename, when sane>``."""
    suffix = Path(filename or "").suffix
    return audio_dir / (name + (suffix.lower() if _SAFE_SUFFIX.match(suffix) else ""))


def _pieces(source: BinaryIO) -> Iterable[bytes]:
    while piece := source.read(PIECE):
        yield piece


class FileSink:
    """A file written in pieces to ``dest``: hashed and counted as it goes, a ``.part`` beside it
    until :meth:`finish` puts it in place; 413 ``file_too_large`` past ``max_bytes``."""

    def __init__(self, dest: Path, max_bytes: int) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.dest = dest
        self.max_bytes = max_bytes
        self.part = received_files.partial(dest)
        self.digest = hashlib.sha256()
        self.size = 0
        self.finished = False
        self._out = self.part.open("wb")

    def write(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.size > self.max_bytes:
            raise too_large(self.max_bytes)
        self.digest.update(piece)
        self._out.write(piece)

    def flush(self) -> None:
        """What was written so far readable by another reader of ``part``."""
        self._out.flush()

    def finish(self) -> StoredAudio:
        self._out.close()
        try:
            os.replace(self.part, self.dest)
        except FileNotFoundError:  # removed as a stray while the body stalled (TONE_STRAY_FILE_HOURS)
            raise ApiError(
                408,
                "upload_stalled",
                "the upload stalled so long that its partial file was removed: send it again",
            ) from None
        self.finished = True
        return StoredAudio(self.dest, self.size, self.digest.hexdigest())

    def abort(self) -> None:
        """Nothing left behind: the partial file removed."""
        self._out.close()
        self.part.unlink(missing_ok=True)


def save_stream(source: BinaryIO | Iterable[bytes], dest: Path, max_bytes: int) -> StoredAudio:
    """Copy ``source`` to ``dest`` in pieces; 413 ``file_too_large`` past ``max_bytes``."""
    pieces = _pieces(source) if hasattr(source, "read") else source  # type: ignore[arg-type]
    sink = FileSink(dest, max_bytes)
    try:
        for piece in pieces:
            sink.write(piece)
        return sink.finish()
    except BaseException:
        sink.abort()
        raise


def remove_quietly(path: str | Path | None) -> None:
    """The stored recording and its playback copies."""
    if path:
        Path(path).unlink(missing_ok=True)
        remove_copies(path)


class _BodyTooLargeError(Exception):
    pass


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit()`` bytes with 413 before they are parsed or spooled.

    A declared ``Content-Length`` over the limit is refused without reading the body. A chunked
    body is counted as it arrives; past the limit the app sees an error, and whatever it answers is
    replaced by the 413.
    """

    def __init__(self, app: ASGIApp, limit: Callable[[], int]) -> None:
        self.app = app
        self.limit = limit

    def _limits(self, scope: Scope, headers: dict[bytes, bytes]) -> tuple[int, ApiError]:
        """``(bytes allowed, the error past them)``: a JSON body is small, an upload is not."""
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media == b"application/json" or media.endswith(b"+json"):
            cap = MANIFEST_LIMIT if scope["path"].rstrip("/") in _MANIFEST_PATHS else JSON_LIMIT
            return cap, ApiError(413, "body_too_large", f"a JSON body may hold at most {cap} bytes")
        file_limit = self.limit()
        return file_limit + FORM_SLACK, too_large(file_limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(k) + len(v) for k, v in scope["headers"])
            if size > HEADER_LIMIT:
                message = f"the request headers hold {size} bytes, over the limit of {HEADER_LIMIT}"
                await _send_error(send, ApiError(431, "headers_too_large", message))
                return
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        limit, refusal = self._limits(scope, headers)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_error(send, refusal)
            return
        seen = 0
        overflow = False
        started = False

        async def counting_receive() -> Message:
            nonlocal seen, overflow
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    overflow = True
                    raise _BodyTooLargeError
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if overflow:
                return  # the app's answer to the aborted body is replaced by our 413
            started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLargeError:
            pass
        except Exception:
            if not overflow:
                raise
        if overflow and not started:
            await _send_error(send, refusal)


async def _send_error(send: Send, err: ApiError) -> None:
    body = json.dumps(error_body(err.code, err.message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": err.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
