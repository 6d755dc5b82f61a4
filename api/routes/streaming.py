"""The original service's streaming calls, over sessions whose decoder state lives in Redis.

``POST /transcribe/streaming`` opens a session; ``POST /transcribe/streaming/chunk`` sends a piece of
audio (a WAV piece or raw samples of any length, never padded) and answers the phrases it
completed; ``POST /transcribe/streaming/finalize`` ends the stream (the engine's 300 ms tail) and
answers every phrase of the session. The API stays thin: it checks the call against the session
(``shared.platform.sessions``), stores the audio, queues the work for ``tone.stream`` on a worker and waits
for the answer with BLPOP on the event loop.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from pydantic import BaseModel, Field

from api.deps import CallerDep, RedisDep, SettingsDep
from api.errors import ERRORS, ApiError
from api.jsonbody import loads as json_loads
from api.schemas import ErrorResponse
from api.services import live
from shared.asr.types import SAMPLE_RATE
from shared.platform.sessions import Options
from shared.text.options import TextOptionError

router = APIRouter(tags=["streaming"])

MAX_CHUNK_BYTES = 16 * 1024 * 1024
STREAM_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    404: {"model": ErrorResponse, "description": "no such session for this tenant (session_not_found)"},
    409: {"model": ErrorResponse, "description": "sequence_gap, session_finished or sequence_stale"},
    410: {"model": ErrorResponse, "description": "the session expired (session_expired)"},
    504: {"model": ErrorResponse, "description": "no worker answered within the chunk timeout"},
}


class StreamAnswer(BaseModel):
    phrases: list[dict[str, Any]] = Field(description="phrases completed (finalize: all of the session)")
    state_id: str
    is_final: bool
    seq: int | None = None
    job_id: str | None = Field(None, description="finalize of a session opened with store=true: its job")


def _job_options(raw: dict[str, Any]) -> dict[str, Any] | None:
    """``store``, ``webhook_url``, ``metadata`` of the create call: the session's ``job`` field."""
    keep = raw.pop("store", False)
    if isinstance(keep, str):
        keep = {"true": True, "1": True, "false": False, "0": False, "": False}.get(keep.lower(), keep)
    if not isinstance(keep, bool):
        raise ValueError("store must be true or false")
    webhook_url = raw.pop("webhook_url", None) or None
    metadata = raw.pop("metadata", None)
    if webhook_url is not None and not (
        isinstance(webhook_url, str) and webhook_url.startswith(("http://", "https://"))
    ):
        raise ValueError("webhook_url must be an http(s) URL")
    if isinstance(metadata, str):
        metadata = json_loads(metadata) if metadata.strip() else None
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError("metadata must be a JSON object")
    if not keep:
        return None
    return {"webhook_url": webhook_url, "metadata": metadata, "started": time.time()}


@router.post(
    "/transcribe/streaming",
    response_model=StreamAnswer,
    response_model_exclude_none=True,
    summary="Open a streaming session (the original service's call)",
    responses={
        **ERRORS,
        422: {"model": ErrorResponse, "description": "invalid options"},
        503: {"model": ErrorResponse, "description": "over_capacity (with Retry-After): open it again later"},
    },
)
async def start(request: Request, caller: CallerDep, settings: SettingsDep, client: RedisDep) -> StreamAnswer:
    """Options, as a form or a JSON body, all optional: ``sample_rate`` (8000), ``encoding``
    (pcm_s16le | mulaw | alaw) and ``channels`` (1, averaged when more) of raw chunks; ``decoder``
    (auto | greedy | beam); ``ttl_seconds`` (at most ``TONE_STREAM_TTL_SECONDS``). ``channels`` 2
    keeps the two channels apart (agent = 0, client = 1), each phrase carrying its ``channel``.
    ``store`` (true: finalize keeps the session as a completed job, its id in ``job_id``), with
    ``webhook_url`` and ``metadata`` (a JSON object, or one as a string) for that job."""
    raw: dict[str, Any] = {}
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("application/json"):
            body = await request.body()
            raw = json_loads(body) if body.strip() else {}
            if not isinstance(raw, dict):
                raise ValueError("a JSON object is expected")
        elif content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            raw = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        ttl = int(raw.pop("ttl_seconds", settings.stream_ttl_seconds))
        job = _job_options(raw)
        options = Options(
            sample_rate=int(raw.get("sample_rate", SAMPLE_RATE)),
            encoding=str(raw.get("encoding", "pcm_s16le")),
            channels=int(raw.get("channels", 1)),
            decoder=str(raw.get("decoder", "auto")),
            text=json.dumps(live.live_text_options(raw).to_dict(), ensure_ascii=False),
        )
    except TextOptionError:
        raise
    except (ValueError, TypeError) as exc:
        raise ApiError(422, "invalid_request", f"invalid streaming options: {exc}") from exc
    if not 1 <= ttl <= settings.stream_ttl_seconds:
        limit = settings.stream_ttl_seconds
        raise ApiError(422, "invalid_request", f"ttl_seconds must be between 1 and {limit}")
    options = await live.with_tenant_vocabulary(settings, caller.tenant_id, options)
    sid = await live.create(live.session_store(client), settings, str(caller.tenant_id), options, ttl, job)
    return StreamAnswer(phrases=[], state_id=sid, is_final=False)


@router.post(
    "/transcribe/streaming/chunk",
    response_model=StreamAnswer,
    response_model_exclude_none=True,
    summary="Send a piece of audio to a streaming session",
    responses=STREAM_ERRORS,
)
async def chunk(
    caller: CallerDep,
    settings: SettingsDep,
    client: RedisDep,
    state_id: Annotated[str, Form(description="the session, from POST /transcribe/streaming")],
    file: Annotated[UploadFile, File(description="a WAV piece, or raw samples in the session's encoding")],
    seq: Annotated[int | None, Form(description="0, 1, 2, ...; none: arrival order")] = None,
) -> StreamAnswer:
    """Answers the phrases this piece completed. A repeated ``seq`` returns its first answer; a
    skipped one is refused (409 ``sequence_gap``)."""
    audio = await file.read(MAX_CHUNK_BYTES + 1)
    if len(audio) > MAX_CHUNK_BYTES:
        raise ApiError(413, "file_too_large", f"a chunk may hold at most {MAX_CHUNK_BYTES} bytes")
    store = live.session_store(client)
    body = await live.send_chunk(store, settings, state_id, str(caller.tenant_id), audio, seq)
    return StreamAnswer.model_validate(body)


@router.post(
    "/transcribe/streaming/finalize",
    response_model=StreamAnswer,
    response_model_exclude_none=True,
    summary="End a streaming session: every phrase of it",
    responses=STREAM_ERRORS,
)
async def finalize(
    caller: CallerDep,
    settings: SettingsDep,
    client: RedisDep,
    state_id: Annotated[str, Form(description="the session")],
) -> StreamAnswer:
    """Pads the stream's end as the offline run does and answers all its phrases; calling it
    again returns the same answer."""
    store = live.session_store(client)
    body = await live.finalize(store, settings, state_id, str(caller.tenant_id))
    job_id = await live.keep_as_job(store, settings, state_id, caller.tenant_id, body["phrases"])
    if job_id is not None:
        body = {**body, "job_id": job_id}
    return StreamAnswer.model_validate(body)
