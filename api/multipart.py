"""A ``multipart/form-data`` upload written straight to where it is kept, as it arrives.

Starlette's ``request.form()`` spools a file part to a temporary file (in ``/tmp``) and hands it
over once the whole body is in; the batch and job routes then copied it again to the audio
directory, hashing it on the way: every upload written twice, once where a container's ``/tmp`` may be
small. :func:`receive_form` parses the body with python-multipart (the parser Starlette uses) and
writes the one file part through :class:`api.uploads.FileSink` (hashed, counted, refused past the
limit, a ``.part`` until complete) in 1 MiB pieces off the event loop; form fields are kept in
memory, a few and small. Written by hand around the library's parser because Starlette's form
parser has no way to say where a file part goes.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from api.errors import ApiError
from api.uploads import PIECE, FileSink, StoredAudio

FIELD_LIMIT = 1024 * 1024  # one form field's value (as Starlette's form reader)


@dataclass
class ReceivedForm:
    fields: list[tuple[str, str]]
    stored: StoredAudio | None = None  # the file part, on disk at the destination
    filename: str | None = None
    content_type: str | None = None  # the file part's own


class FileTap(Protocol):
    """Told of every piece of the file part once it is on disk (in the threadpool)."""

    def written(self, sink: FileSink, piece: bytes) -> None: ...


@dataclass
class _Part:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    name: str = ""
    kind: str = "field"  # "field", "file" (the one kept) or "ignored" (a file under another name)
    data: bytearray = field(default_factory=bytearray)


def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def _decode(raw: bytes, charset: str) -> str:
    try:
        return raw.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return raw.decode("latin-1")


class _Receiver:
    """python-multipart's callbacks: fields into memory, the file part's bytes queued for the sink."""

    def __init__(self, file_field: str, max_fields: int, charset: str) -> None:
        self.file_field = file_field
        self.max_fields = max_fields
        self.charset = charset
        self.fields: list[tuple[str, str]] = []
        self.files = 0
        self.filename: str | None = None
        self.content_type: str | None = None
        self.pending: list[bytes] = []  # the file's bytes not yet handed to the sink
        self.pending_bytes = 0
        self.part = _Part()
        self._header = [b"", b""]
        self.ended = False  # the closing boundary seen

    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header[0] += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header[1] += data[start:end]

    def on_header_end(self) -> None:
        self.part.headers.append((self._header[0].lower(), self._header[1]))
        self._header = [b"", b""]

    def on_headers_finished(self) -> None:
        disposition = next((v for k, v in self.part.headers if k == b"content-disposition"), b"")
        _, options = parse_options_header(disposition)
        if b"name" not in options:
            raise _bad('the Content-Disposition header field "name" must be provided')
        self.part.name = _decode(options[b"name"], self.charset)
        if b"filename" in options:
            self.files += 1
            if self.files > 1:
                raise _bad(f"too many files: send one, as {self.file_field}")
            self.part.kind = "file" if self.part.name == self.file_field else "ignored"
            if self.part.kind == "file":
                self.filename = _decode(options[b"filename"], self.charset)
                media = next((v for k, v in self.part.headers if k == b"content-type"), None)
                self.content_type = _decode(media, "latin-1") if media else None
        elif len(self.fields) >= self.max_fields:
            raise _bad(f"too many fields: at most {self.max_fields}")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part.kind == "file":
            self.pending.append(data[start:end])
            self.pending_bytes += end - start
        elif self.part.kind == "field":
            if len(self.part.data) + end - start > FIELD_LIMIT:
                raise _bad(f"the form field {self.part.name!r} is over {FIELD_LIMIT} bytes")
            self.part.data += data[start:end]

    def on_part_end(self) -> None:
        if self.part.kind == "field":
            self.fields.append((self.part.name, _decode(bytes(self.part.data), self.charset)))

    def on_end(self) -> None:
        self.ended = True

    def take(self) -> bytes:
        piece = b"".join(self.pending)
        self.pending, self.pending_bytes = [], 0
        return piece


async def receive_form(
    request: Request,
    dest: Callable[[str | None], Path],
    max_bytes: int,
    *,
    file_field: str = "file",
    max_fields: int = 20,
    tap: Callable[[list[tuple[str, str]]], FileTap | None] | None = None,
) -> ReceivedForm:
    """The request's form: its fields, and its one file part (``file_field``) written to
    ``dest(its filename)`` (413 ``file_too_large`` past ``max_bytes``). A malformed body is 400
    ``bad_request``; on any failure, the client's disconnect included, nothing is left there.
    ``tap(the fields so far)``, when the file part's first piece is written before the body's end
    (a file part over one piece), may give a :class:`FileTap` that then sees every piece written."""
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise _bad("the multipart body has no boundary in its Content-Type")
    charset = _decode(params.get(b"charset", b"utf-8"), "latin-1")
    try:
        charset = codecs.lookup(charset).name
    except LookupError:
        charset = "latin-1"
    got = _Receiver(file_field, max_fields, charset)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": got.on_part_begin,
            "on_header_field": got.on_header_field,
            "on_header_value": got.on_header_value,
            "on_header_end": got.on_header_end,
            "on_headers_finished": got.on_headers_finished,
            "on_part_data": got.on_part_data,
            "on_part_end": got.on_part_end,
            "on_end": got.on_end,
        },
    )
    sink: list[FileSink] = []  # made at the file part's first piece
    taps: list[FileTap] = []

    def write(piece: bytes) -> None:
        sink[0].write(piece)
        for t in taps:
            t.written(sink[0], piece)

    async def flush(last: bool = False) -> None:
        if not sink:
            sink.append(await run_in_threadpool(FileSink, dest(got.filename), max_bytes))
            made = None if tap is None or last else await run_in_threadpool(tap, list(got.fields))
            taps.extend([made] if made is not None else [])
        await run_in_threadpool(write, got.take())

    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if got.pending_bytes >= PIECE:
                await flush()
        parser.finalize()
        if not got.ended:
            raise _bad("the multipart body ends before its closing boundary")
        if got.filename is None:
            return ReceivedForm(got.fields)
        await flush(last=True)
        stored = await run_in_threadpool(sink[0].finish)
        return ReceivedForm(got.fields, stored, got.filename, got.content_type)
    except MultipartParseError as exc:
        raise _bad(f"the multipart body cannot be read: {exc}") from None
    finally:
        if sink and not sink[0].finished:
            sink[0].abort()


def upload_body(fields: type[BaseModel], description: str = "the recording") -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a multipart call read with :func:`receive_form` (FastAPI
    declares it only for parameters it reads itself): ``file`` and the fields of ``fields``."""
    schema = fields.model_json_schema()
    properties = {"file": {"type": "string", "format": "binary", "description": description}}
    properties.update(schema.get("properties", {}))
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["file"], "properties": properties}
                }
            },
        }
    }
