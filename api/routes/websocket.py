"""Live streaming over WebSocket: ``/v1/stream`` (the platform's protocol), ``/api/ws`` (T-one's demo
protocol) and ``/vosk`` (the Vosk server protocol), all over the same Redis sessions and the same
``tone.stream`` workers as the HTTP calls (``api.services.live``): one decoding path.

``/v1/stream``: auth by header (``Authorization: Bearer`` / ``X-API-Key``) or, for browsers, an
``api_key`` field in the first message, the JSON config ``{"sample_rate", "encoding", "channels",
"decoder"}``; then binary audio frames of any size; then ``{"type": "end"}``. The server answers
``{"type": "phrase", ...}`` for each closed phrase, ``{"type": "partial", "text", "channel"}`` for
the open phrase (when it changes, and at least once a second while audio flows), and after the end
``{"type": "final", "phrases"}``, then closes (1000). Errors: ``{"type": "error", "code",
"message"}``, then a close: 1008 auth, 1003 bad data, 1011 internal, 1013 try again later (a new
session refused with ``over_capacity``: the live workers are at capacity; or ``timeout``: no live
worker answered a piece within ``TONE_STREAM_CHUNK_TIMEOUT_SECONDS``), 4408 a stall.

Backpressure: frames are gathered into pieces of at least PIECE_SECONDS (or what arrived within
PIECE_SECONDS) and the handler awaits each piece's answer before it reads the next frame, so a
client faster than real time is slowed by TCP flow control, never dropped. A client that sends
nothing for ``TONE_STREAM_IDLE_TIMEOUT_SECONDS`` is closed with code 4408.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect, WebSocketState

from api.deps import Caller, caller_of, client_address, presented_key, redis_for
from api.errors import status_of
from api.services import live
from shared.asr.types import SAMPLE_RATE
from shared.errors import CodedError
from shared.platform.sessions import Options, SessionError
from shared.platform.settings import Settings, get_settings
from shared.text.options import OPTION_NAMES

router = APIRouter(tags=["streaming"])
log = logging.getLogger("api.websocket")

PIECE_SECONDS = 0.3  # frames are gathered into pieces of at least this much audio
PARTIAL_EVERY = 1.0  # a partial at least this often while audio flows
CONFIG_FIELDS = {
    "sample_rate",
    "encoding",
    "channels",
    "decoder",
    "api_key",
    "store",
    "webhook_url",
    "acks",
    *OPTION_NAMES,
}

CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_BAD_DATA, CLOSE_POLICY, CLOSE_INTERNAL = 1000, 1001, 1003, 1008, 1011
CLOSE_TRY_AGAIN = 1013  # RFC 6455 "Try Again Later": over capacity, or a dependency is down
CLOSE_IDLE = 4408


class CloseError(CodedError):
    """End the connection with an error message and a close code."""

    def __init__(self, code: str, message: str, close_code: int) -> None:
        super().__init__(message, code=code)
        self.close_code = close_code


def close_code_of(exc: CodedError) -> int:
    """The close code a coded error ends a connection with (its HTTP status decides, as on HTTP)."""
    if isinstance(exc, CloseError):
        return exc.close_code
    status = status_of(exc)
    if status in (401, 403, 429):
        return CLOSE_POLICY
    if status == 410:
        return CLOSE_GOING_AWAY
    if status in (503, 504):  # over capacity, a dependency down, no live worker answering in time
        return CLOSE_TRY_AGAIN
    return CLOSE_INTERNAL if status >= 500 else CLOSE_BAD_DATA


class ClientGoneError(Exception):
    """The client went away."""


async def authenticate(ws: WebSocket, settings: Settings, key: str | None) -> Caller:
    """The connection's caller (as an HTTP request's: failed attempts counted per address, a
    verified key kept in memory), counted against its key's per-minute limit."""
    return await caller_of(settings, key, client_address(ws), rate_limit=settings.rate_limit_per_minute)


def connection_key(ws: WebSocket, settings: Settings) -> str | None:
    """The key of a header, else of ``?api_key=`` when the deployment allows keys in the query
    string (``TONE_WS_QUERY_KEYS``: for Vosk's and T-one's clients, which cannot send headers)."""
    key = presented_key(ws)
    if key:
        return key
    query = ws.query_params.get("api_key")
    if query is None:
        return None
    if not settings.ws_query_keys:
        message = ("API keys in the query string are off on this server (TONE_WS_QUERY_KEYS): "
                   "send the key in a header or in the first message")  # fmt: skip
        raise CloseError("query_key_disabled", message, CLOSE_POLICY)
    return query or None


class Receiver:
    """Messages of one connection, each awaited at most until the idle deadline."""

    def __init__(self, ws: WebSocket, idle: float) -> None:
        self.ws = ws
        self.idle = idle
        self.last = time.monotonic()

    async def receive(self) -> dict[str, Any]:
        """The next message; raises CloseError after the idle timeout, ClientGoneError."""
        message = await self.receive_until(None)
        assert message is not None
        return message

    async def receive_until(self, flush_at: float | None) -> dict[str, Any] | None:
        """The next message (``{"bytes"}`` or ``{"text"}``), or None when ``flush_at`` (monotonic)
        came first. Raises CloseError after the idle timeout, ClientGoneError when the client left."""
        idle_at = self.last + self.idle
        until = idle_at if flush_at is None else min(idle_at, flush_at)
        try:
            message = await asyncio.wait_for(self.ws.receive(), max(0.0, until - time.monotonic()))
        except asyncio.TimeoutError:
            if flush_at is not None and flush_at < idle_at:
                return None
            raise CloseError(
                "idle_timeout", f"no data received for {self.idle:g} s: the stream was closed", CLOSE_IDLE
            ) from None
        if message["type"] == "websocket.disconnect":
            raise ClientGoneError
        self.last = time.monotonic()
        return dict(message)


class LiveStream:
    """One session of the session store, fed with raw bytes of any size (whole frames are sent on,
    a split frame's bytes wait for the next piece)."""

    def __init__(self, settings: Settings, caller: Caller, options: Options) -> None:
        self.settings = settings
        self.tenant = str(caller.tenant_id)
        self.options = options
        self.store = live.session_store(redis_for(settings.redis_url))
        self.frame_bytes = (2 if options.encoding == "pcm_s16le" else 1) * options.channels
        self.piece_bytes = max(1, int(options.sample_rate * PIECE_SECONDS)) * self.frame_bytes
        self.rest = b""
        self.sid = ""
        self.sent = 0  # phrases already sent to the client
        self.frames = 0  # audio frames applied

    async def open(self) -> None:
        self.sid = await live.create(
            self.store, self.settings, self.tenant, self.options, self.settings.stream_ttl_seconds
        )

    async def feed(self, data: bytes) -> dict[str, Any] | None:
        """Apply the whole frames of (the rest +) ``data``; the answer's body, or None if no whole
        frame was there."""
        data = self.rest + data
        whole = len(data) - len(data) % self.frame_bytes
        self.rest = data[whole:]
        if not whole:
            return None
        body = await live.send_chunk(self.store, self.settings, self.sid, self.tenant, data[:whole])
        self.sent += len(body["phrases"])
        self.frames += whole // self.frame_bytes
        return body

    async def end(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Finalize: (the phrases not sent yet, every phrase of the session)."""
        body = await live.finalize(self.store, self.settings, self.sid, self.tenant)
        phrases: list[dict[str, Any]] = body["phrases"]
        new = phrases[self.sent :]
        self.sent = len(phrases)
        return new, phrases

    @property
    def duration(self) -> float:
        return self.frames / self.options.sample_rate


async def _send(ws: WebSocket, payload: dict[str, Any]) -> None:
    try:
        await ws.send_text(json.dumps(payload, ensure_ascii=False))
    except (WebSocketDisconnect, RuntimeError) as exc:
        raise ClientGoneError from exc


async def _close(ws: WebSocket, code: int, reason: str = "") -> None:
    if ws.application_state == WebSocketState.CONNECTED and ws.client_state == WebSocketState.CONNECTED:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await ws.close(code, reason.encode()[:120].decode(errors="ignore"))


def _error(protocol: str, code: str, message: str) -> dict[str, Any]:
    """An error message in the protocol's shape."""
    if protocol == "v1":
        return {"type": "error", "code": code, "message": message}
    if protocol == "vosk":
        return {"error": {"code": code, "message": message}}
    return {"event": "error", "code": code, "message": message}


async def _serve(ws: WebSocket, protocol: str, body: Any) -> None:
    """Run a protocol's handler; errors become the protocol's error message and a close code."""
    await ws.accept()
    try:
        await body
        return
    except CodedError as exc:
        log.info("%s: closing (%s): %s", protocol, exc.code, exc.message)
        code, message, close = exc.code, exc.message, close_code_of(exc)
    except ClientGoneError:
        log.info("%s: the client went away", protocol)
        return
    except Exception:
        log.exception("%s: internal error", protocol)
        code, message, close = "internal_error", "internal error", CLOSE_INTERNAL
    try:
        await _send(ws, _error(protocol, code, message))
    except ClientGoneError:
        return
    await _close(ws, close, message)


def _options(raw: dict[str, Any]) -> Options:
    try:
        return Options(
            sample_rate=int(raw.get("sample_rate", SAMPLE_RATE)),
            encoding=str(raw.get("encoding", "pcm_s16le")),
            channels=int(raw.get("channels", 1)),
            decoder=str(raw.get("decoder", "auto")),
            text=json.dumps(live.live_text_options(raw).to_dict(), ensure_ascii=False),
        )
    except SessionError as exc:  # the WebSocket protocols' code for a bad config (TextOptionError,
        # 422 invalid_<option>, goes through as it is: close_code_of gives it 1003)
        raise CloseError("invalid_config", exc.message, CLOSE_BAD_DATA) from exc
    except (ValueError, TypeError) as exc:
        raise CloseError("invalid_config", f"invalid streaming config: {exc}", CLOSE_BAD_DATA) from exc


def _json_object(message: dict[str, Any], what: str) -> dict[str, Any]:
    text = message.get("text")
    try:
        value = json.loads(text) if text is not None else None
    except RecursionError:  # (an internal_error close, 1011, before)
        raise CloseError("invalid_message", f"{what} is JSON nested too deeply", CLOSE_BAD_DATA) from None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise CloseError("invalid_message", f"{what} must be a JSON object (a text message)", CLOSE_BAD_DATA)
    return value


# -- /v1/stream -----------------------------------------------------------------------------------


@router.websocket("/v1/stream")
async def v1_stream(ws: WebSocket) -> None:
    await _serve(ws, "v1", _v1(ws, get_settings()))


async def _v1(ws: WebSocket, settings: Settings) -> None:
    receiver = Receiver(ws, settings.stream_idle_timeout_seconds)
    header_key = connection_key(ws, settings)
    caller = await authenticate(ws, settings, header_key) if header_key or settings.auth_disabled else None
    config = _json_object(await receiver.receive(), "the first message (the stream's config)")
    key = config.pop("api_key", None)
    if caller is None:
        caller = await authenticate(ws, settings, key if isinstance(key, str) and key else None)
    unknown = set(config) - CONFIG_FIELDS
    if unknown:
        fields = ", ".join(sorted(unknown))
        raise CloseError("invalid_config", f"unknown config field(s): {fields}", CLOSE_BAD_DATA)
    keep = config.pop("store", False)
    acks = config.pop("acks", False)
    if not isinstance(acks, bool):
        raise CloseError("invalid_config", "acks must be true or false", CLOSE_BAD_DATA)
    webhook_url = config.pop("webhook_url", None)
    if not isinstance(keep, bool):
        raise CloseError("invalid_config", "store must be true or false", CLOSE_BAD_DATA)
    if webhook_url is not None and not (
        isinstance(webhook_url, str) and webhook_url.startswith(("http://", "https://"))
    ):
        raise CloseError("invalid_config", "webhook_url must be an http(s) URL", CLOSE_BAD_DATA)
    stream = LiveStream(
        settings, caller, await live.with_tenant_vocabulary(settings, caller.tenant_id, _options(config))
    )
    await stream.open()
    started = datetime.now(timezone.utc)
    buffer = bytearray()
    flush_at: float | None = None
    partial: str | None = None
    partial_at = 0.0

    async def piece() -> None:
        nonlocal flush_at, partial, partial_at
        data = bytes(buffer)
        buffer.clear()
        flush_at = None
        body = await stream.feed(data)
        if body is None:
            return
        for phrase in body["phrases"]:
            await _send(ws, {"type": "phrase", **phrase})
        text = str(body.get("partial", ""))
        now = time.monotonic()
        if text != partial or now - partial_at >= PARTIAL_EVERY:
            await _send(ws, {"type": "partial", "text": text, "channel": 0})
            partial, partial_at = text, now
        if acks:  # the piece was applied: its seq and the audio seconds applied so far
            await _send(ws, {"type": "ack", "seq": body["seq"], "audio_seconds": round(stream.duration, 3)})

    while True:
        message = await receiver.receive_until(flush_at)
        if message is None:  # what arrived waited PIECE_SECONDS: send it on
            await piece()
            continue
        if message.get("bytes") is not None:
            if not buffer:
                flush_at = time.monotonic() + PIECE_SECONDS
            buffer += message["bytes"]
            if len(buffer) >= stream.piece_bytes:
                await piece()
            continue
        request = _json_object(message, "a text message")
        if request.get("type") != "end" or set(request) - {"type", "store"}:
            raise CloseError(
                "invalid_message", 'the only text message is {"type": "end"[, "store"]}', CLOSE_BAD_DATA
            )
        if "store" in request:  # keeping the session may be decided at its end, too
            if not isinstance(request["store"], bool):
                raise CloseError("invalid_message", "store must be true or false", CLOSE_BAD_DATA)
            keep = request["store"]
        if buffer:
            await piece()
        new, phrases = await stream.end()
        for phrase in new:
            await _send(ws, {"type": "phrase", **phrase})
        final: dict[str, Any] = {"type": "final", "phrases": phrases}
        if keep:
            opts = stream.options
            args = (settings, caller.tenant_id, opts, stream.duration, phrases, webhook_url, started)
            final["job_id"] = await run_in_threadpool(live.store_job, *args)
        await _send(ws, final)
        await _close(ws, CLOSE_NORMAL)
        return


# -- T-one's demo protocol: /api/ws ---------------------------------------------------------------


def _tone_phrase(phrase: dict[str, Any]) -> dict[str, Any]:
    return {"text": phrase["text"], "start_time": phrase["start_time"], "end_time": phrase["end_time"]}


@router.websocket("/api/ws")
async def tone_ws(ws: WebSocket) -> None:
    await _serve(ws, "tone", _tone(ws, get_settings()))


async def _tone(ws: WebSocket, settings: Settings) -> None:
    caller = await authenticate(ws, settings, connection_key(ws, settings))
    receiver = Receiver(ws, settings.stream_idle_timeout_seconds)
    stream = LiveStream(settings, caller, Options())
    await stream.open()
    while True:
        await _send(ws, {"event": "ready"})
        message = await receiver.receive()
        data = message.get("bytes")
        if data is None:
            if message.get("text"):
                raise CloseError("invalid_message", "send raw int16 8 kHz audio as binary messages", 1003)
            data = b""
        if not data:  # an empty message ends the stream
            new, _ = await stream.end()
            for phrase in new:
                await _send(ws, {"event": "transcript", "phrase": _tone_phrase(phrase)})
            await _close(ws, CLOSE_NORMAL)
            return
        body = await stream.feed(data)
        for phrase in body["phrases"] if body else []:
            await _send(ws, {"event": "transcript", "phrase": _tone_phrase(phrase)})


# -- the Vosk server protocol: /vosk --------------------------------------------------------------


def _vosk_result(phrases: list[dict[str, Any]]) -> dict[str, Any]:
    """One Vosk result for the phrases a frame closed (several are joined: Vosk's clients read
    exactly one reply per frame)."""
    words = [
        {"word": w["text"], "start": w["start"], "end": w["end"], "conf": 1.0}
        for phrase in phrases
        for w in phrase["words"]
    ]
    return {"result": words, "text": " ".join(p["text"] for p in phrases)}


@router.websocket("/vosk")
async def vosk_ws(ws: WebSocket) -> None:
    await _serve(ws, "vosk", _vosk(ws, get_settings()))


async def _vosk(ws: WebSocket, settings: Settings) -> None:
    """Exactly one reply per received message, as Vosk's server does: a frame gets ``{"partial"}``
    or one ``{"result", "text"}``; ``{"eof": 1}`` gets the last result (or ``{"text": ""}``). The key:
    a header, ``?api_key=`` (``TONE_WS_QUERY_KEYS``), or ``api_key`` in the config message."""
    key = connection_key(ws, settings)
    caller = await authenticate(ws, settings, key) if key or settings.auth_disabled else None
    receiver = Receiver(ws, settings.stream_idle_timeout_seconds)
    options = Options()
    stream: LiveStream | None = None
    partial = ""
    while True:
        message = await receiver.receive()
        if message.get("bytes") is None:
            request = _json_object(message, "a text message")
            if "config" in request:
                if stream is not None:
                    raise CloseError("invalid_message", "the config comes before the audio", 1003)
                config = request["config"] if isinstance(request["config"], dict) else {}
                options = _options({"sample_rate": config.get("sample_rate", SAMPLE_RATE)})
                if caller is None:
                    given = config.get("api_key")
                    caller = await authenticate(
                        ws, settings, given if isinstance(given, str) and given else None
                    )
                continue
            if request.get("eof"):
                break
            raise CloseError("invalid_message", 'text messages are {"config": ...} or {"eof": 1}', 1003)
        if caller is None:  # audio before any key
            caller = await authenticate(ws, settings, None)
        if stream is None:
            stream = LiveStream(settings, caller, options)
            await stream.open()
        body = await stream.feed(message["bytes"])
        if body is not None:
            partial = str(body.get("partial", ""))
        if body and body["phrases"]:
            await _send(ws, _vosk_result(body["phrases"]))
        else:
            await _send(ws, {"partial": partial})
    new: list[dict[str, Any]] = []
    if stream is not None:
        new, _ = await stream.end()
    await _send(ws, _vosk_result(new) if new else {"text": ""})
    await _close(ws, CLOSE_NORMAL)
