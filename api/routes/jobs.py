"""``/v1/jobs``: submit (upload or URL), get, list, transcript, audio, cancel, delete, webhook deliveries."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import ValidationError

from api.deps import CallerDep, DbDep, SettingsDep
from api.errors import ERRORS, ApiError, invalid_request
from api.jsonbody import JSON_LIMIT
from api.jsonbody import loads as json_loads
from api.multipart import ReceivedForm, receive_form
from api.schemas import (
    DeliveryList,
    ErrorResponse,
    JobList,
    JobOptions,
    JobOut,
    RedeliverOut,
    TranscriptOut,
    TranscriptText,
    validated_options,
)
from api.services import jobs as svc
from api.services import playback
from api.uploads import audio_file_path, remove_quietly
from shared.asr.formats import TranscriptFormat
from shared.errors import CodedError
from shared.platform.settings import Settings
from shared.platform.statuses import FINAL_STATUSES, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_UPLOAD_FIELDS = {
    "channels": {"type": "string", "enum": ["mix", "split"], "default": "mix"},
    "decoder": {"type": "string", "enum": ["auto", "greedy", "beam"], "default": "auto"},
    "webhook_url": {"type": "string"},
    "metadata": {"type": "string", "description": "a JSON object, as a string"},
    "priority": {"type": "integer", "minimum": 0, "maximum": 9, "default": 5},
    "normalize": {"type": "boolean", "default": True},
    "vocabulary": {"type": "string", "description": "words to boost: a JSON array or comma-separated"},
    "replacements": {"type": "string", "description": "a JSON object {spoken: written}"},
    "redact": {"type": "string", "description": "kinds to mask: a JSON array or comma-separated"},
    "redact_raw": {"type": "boolean", "default": False},
    "redact_audio": {"type": "boolean", "default": False},
}
_SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "audio_url": {"type": "string"},
                        **_UPLOAD_FIELDS,
                    },
                },
                "example": {"channels": "split", "metadata": '{"call_id": "1234"}'},
            },
            "application/json": {
                "schema": {"$ref": "#/components/schemas/JobOptions"},
                "example": JobOptions.model_config["json_schema_extra"]["examples"][0],  # type: ignore[index]
            },
        },
    }
}


def _options(fields: dict[str, Any]) -> JobOptions:
    try:
        return validated_options(JobOptions, fields)
    except ValidationError as exc:
        raise invalid_request(exc) from None


def _form_fields(items: list[tuple[str, str]]) -> dict[str, Any]:
    """A form's text fields as options; ``file`` among them (not a file part) is refused."""
    if any(name == "file" for name, _ in items):
        raise ApiError(422, "invalid_request", "file must be a file part")
    fields: dict[str, Any] = dict(items)
    if "metadata" in fields:
        try:
            fields["metadata"] = json_loads(fields["metadata"])
        except CodedError as exc:
            if exc.code != "invalid_json":
                raise
            raise ApiError(422, "invalid_request", "metadata must be a JSON object (as a string)") from None
    return fields


async def _small_body(request: Request) -> bytes:
    """A JSON body, at most ``JSON_LIMIT`` bytes (uploads go as multipart, streamed to disk)."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > JSON_LIMIT:
            raise ApiError(413, "body_too_large", f"a JSON body may hold at most {JSON_LIMIT} bytes")
    return bytes(raw)


async def _read_request(
    request: Request, dest: Callable[[str | None], Path], settings: Settings
) -> tuple[dict[str, Any], ReceivedForm | None]:
    """The options, and a multipart upload's form with its file written to ``dest(filename)``."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        body = json_loads(await _small_body(request))
        if not isinstance(body, dict):
            raise ApiError(422, "invalid_request", "the JSON body must be an object")
        return body, None
    if content_type.startswith("multipart/form-data"):  # the file straight to its place (api.multipart)
        form = await receive_form(request, dest, settings.max_upload_bytes, max_fields=20)
        try:
            return _form_fields(form.fields), form
        except BaseException:
            remove_quietly(form.stored.path if form.stored else None)
            raise
    if content_type.startswith("application/x-www-form-urlencoded"):
        form_data = await request.form(max_files=0, max_fields=20)
        return _form_fields([(k, v) for k, v in form_data.multi_items() if isinstance(v, str)]), None
    raise ApiError(415, "unsupported_media_type", "send multipart/form-data (with file) or JSON (audio_url)")


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Submit a recording (upload or audio_url)",
    openapi_extra=_SUBMIT_BODY,
    responses={
        **ERRORS,
        200: {"model": JobOut, "description": "the earlier job of this Idempotency-Key"},
        400: {"model": ErrorResponse, "description": "empty or unreadable audio"},
        409: {"model": ErrorResponse, "description": "Idempotency-Key reused with another body"},
        413: {"model": ErrorResponse, "description": "upload or audio over the limit"},
        415: {"model": ErrorResponse, "description": "not audio"},
    },
)
async def submit_job(
    request: Request,
    response: Response,
    caller: CallerDep,
    db: DbDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobOut:
    job_id = uuid.uuid4()
    fields, form = await _read_request(
        request, lambda name: audio_file_path(settings.audio_path, str(job_id), name), settings
    )
    stored = form.stored if form is not None else None
    try:
        options = _options(fields)
        if (stored is None) == (options.audio_url is None):
            raise ApiError(422, "invalid_request", "send exactly one of file and audio_url")
        if options.audio_url is not None:
            url = svc.validate_audio_url(options.audio_url)
            await run_in_threadpool(svc.check_audio_url_address, url, settings)
            options = options.model_copy(update={"audio_url": url})
            new = svc.NewJob(options, idempotency_key=idempotency_key)
        else:
            assert form is not None and stored is not None
            await run_in_threadpool(svc.check_upload, stored, form.filename, settings)
            new = svc.NewJob(
                options, stored, job_id, form.filename, form.content_type, idempotency_key=idempotency_key
            )
    except BaseException:
        remove_quietly(stored.path if stored else None)  # refused: the upload goes with the request
        raise
    # not under the try: a cancelled await leaves the thread to commit the job, which then holds
    # the file; create_job removes the upload itself wherever no job is made
    job, created = await run_in_threadpool(svc.create_job, db, caller, new, settings)
    if not created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return svc.job_view(job)


@router.get("", response_model=JobList, summary="List jobs, newest first", responses=ERRORS)
def list_jobs(
    caller: CallerDep,
    db: DbDep,
    status: JobStatus | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
    ids: Annotated[
        list[str] | None, Query(alias="id", max_length=100, description="only these jobs (?id=a&id=b)")
    ] = None,
) -> JobList:
    page, next_cursor = svc.list_jobs(
        db, caller, svc.JobFilter(status, created_after, created_before, limit, cursor, tuple(ids or ()))
    )
    return JobList(data=[svc.job_view(j) for j in page], next_cursor=next_cursor)


@router.get(
    "/{job_id}",
    response_model=JobOut,
    summary="A job's status and progress",
    description=f"While the job is open (queued or processing) the answer carries `Retry-After: "
    f"{svc.POLL_AFTER_SECONDS}`: when to ask again (progress moves about once a second). Polling "
    "faster gets nothing newer and takes CPU from the transcription on the same machine; a "
    "webhook_url avoids polling altogether.",
    responses=ERRORS,
)
def get_job(job_id: str, caller: CallerDep, db: DbDep, response: Response) -> JobOut:
    job = svc.load_job(db, caller, job_id)
    if job.status not in FINAL_STATUSES:
        response.headers["Retry-After"] = str(svc.POLL_AFTER_SECONDS)
    return svc.job_view(job)


@router.get(
    "/{job_id}/transcript",
    summary="The transcript, as json, txt, srt, vtt or tsv",
    responses={
        **ERRORS,
        200: {
            "model": TranscriptOut,
            "content": {
                "text/plain": {"example": "чем я могу вам помочь\n"},
                "application/x-subrip": {
                    "example": "1\n00:00:03,300 --> 00:00:05,490\nчем я могу вам помочь\n"
                },
                "text/vtt": {"example": "WEBVTT\n\n00:00:03.300 --> 00:00:05.490\nчем я могу вам помочь\n"},
                "text/tab-separated-values": {"example": "start\tend\tchannel\ttext\n3300\t5490\t0\tчем\n"},
            },
        },
        409: {"model": ErrorResponse, "description": "the job is not completed"},
    },
)
def get_transcript(
    job_id: str,
    caller: CallerDep,
    db: DbDep,
    format: TranscriptFormat = "json",
    text: Annotated[
        TranscriptText,
        Query(description="txt/srt/vtt/tsv: the written form (display) or the spoken words (raw)"),
    ] = "display",
) -> Response:
    body, media_type = svc.render_transcript(svc.load_job(db, caller, job_id), format, text)
    return Response(body, media_type=media_type)


_NO_AUDIO = {
    "model": ErrorResponse,
    "description": "no such job for this tenant (`not_found`), or the job has no stored "
    "recording (`audio_not_available`: a live session, a URL not downloaded yet, a deleted file)",
}


def _stored_audio(job: Any) -> Path:
    path = Path(job.audio_path) if job.audio_path else None
    if path is None or not path.is_file():
        raise ApiError(404, "audio_not_available", "this job has no stored recording to play")
    return path


@router.get(
    "/{job_id}/audio",
    summary="The job's recording for playback: Ogg Opus, MP3 or 16-bit WAV at 8 kHz, channels kept",
    description="Decoded by the engine whatever the stored format and re-encoded once (`format`: "
    "`wav`, the default, lossless; `opus`, what the console plays, about 1/6 of the WAV; `mp3`), then "
    "kept beside the recording until it is removed. Range requests are answered (206), so a player "
    "can seek without downloading the whole file.",
    response_class=FileResponse,
    responses={
        **ERRORS,
        200: {
            "content": {"audio/wav": {}, "audio/ogg": {}, "audio/mpeg": {}},
            "description": "the recording, decoded and re-encoded",
        },
        206: {"description": "the part of it a Range header asked for"},
        404: _NO_AUDIO,
    },
)
async def get_audio(
    job_id: str, caller: CallerDep, db: DbDep, format: playback.PlaybackFormat = "wav"
) -> FileResponse:
    job = await run_in_threadpool(svc.load_job, db, caller, job_id)
    copy = await run_in_threadpool(
        playback.playback_copy, _stored_audio(job), format, job.filename or "the recording"
    )
    stem = Path(job.filename or f"job-{job.id}").stem or f"job-{job.id}"
    return FileResponse(
        copy,
        media_type=playback.media_type(format),
        filename=f"{stem}.{playback.extension(format)}",
        content_disposition_type="inline",
        headers={"Cache-Control": "private, max-age=3600"},
    )


@router.get(
    "/{job_id}/audio/peaks",
    summary="The recording's waveform: min/max per column and channel",
    description="`columns` (default 1000, at most 4000) pairs of (min, max) per channel, samples "
    "scaled to -1..1, computed once on the server and kept: the console draws its waveform from "
    "these instead of decoding the whole recording.",
    responses={
        **ERRORS,
        200: {
            "content": {
                "application/json": {
                    "example": {
                        "sample_rate": 8000,
                        "channels": 1,
                        "duration": 17.7,
                        "columns": 2,
                        "peaks": [[-0.31, 0.3, -0.12, 0.15]],
                    }
                }
            }
        },
        404: _NO_AUDIO,
    },
)
async def get_peaks(
    job_id: str,
    caller: CallerDep,
    db: DbDep,
    columns: Annotated[int, Query(ge=1, le=playback.MAX_COLUMNS)] = 1000,
) -> dict[str, Any]:
    job = await run_in_threadpool(svc.load_job, db, caller, job_id)
    return await run_in_threadpool(
        playback.peaks, _stored_audio(job), columns, job.filename or "the recording"
    )


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobOut,
    summary="Cancel a job (a running one stops within seconds)",
    responses={**ERRORS, 409: {"model": ErrorResponse, "description": "the job already ended"}},
)
def cancel_job(job_id: str, caller: CallerDep, db: DbDep) -> JobOut:
    job = svc.load_job(db, caller, job_id)
    if not svc.request_cancel(db, job):
        raise ApiError(409, "already_final", f"the job is already {job.status}")
    return svc.job_view(job)


@router.delete(
    "/{job_id}",
    status_code=204,
    summary="Delete a job, its audio, transcript and deliveries",
    responses=ERRORS,
)
def delete_job(job_id: str, caller: CallerDep, db: DbDep, settings: SettingsDep) -> Response:
    svc.delete_job(db, svc.load_job(db, caller, job_id), settings)
    return Response(status_code=204)


@router.get(
    "/{job_id}/webhooks",
    response_model=DeliveryList,
    summary="Every webhook delivery attempt",
    responses=ERRORS,
)
def list_webhooks(job_id: str, caller: CallerDep, db: DbDep) -> DeliveryList:
    return DeliveryList.of(svc.deliveries(db, svc.load_job(db, caller, job_id)))


@router.post(
    "/{job_id}/webhooks/redeliver",
    status_code=202,
    response_model=RedeliverOut,
    summary="Send the job's final webhook event again",
    responses={**ERRORS, 409: {"model": ErrorResponse, "description": "no webhook_url, or not final yet"}},
)
def redeliver_webhook(job_id: str, caller: CallerDep, db: DbDep) -> RedeliverOut:
    job = svc.load_job(db, caller, job_id)
    if not job.webhook_url:
        raise ApiError(409, "no_webhook", "the job has no webhook_url")
    if not svc.send_final_event(job, again=True):
        raise ApiError(409, "not_ready", f"the job is {job.status}; events are sent when it ends")
    return RedeliverOut(job_id=str(job.id), event_type=f"job.{job.status}")
