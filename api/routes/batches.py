"""``/v1/batches``: submit many recordings (an archive, a JSON manifest of URLs, or a server folder),
list batches, watch one, list its items, cancel it, get its results (jsonl, csv or a zip of files)."""

from __future__ import annotations

import uuid
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from api.deps import Caller, CallerDep, DbDep, SettingsDep
from api.errors import ERRORS, ApiError, invalid_request
from api.jsonbody import MANIFEST_LIMIT
from api.jsonbody import loads as json_loads
from api.multipart import receive_form
from api.schemas import (
    BatchCancelOut,
    BatchItems,
    BatchList,
    BatchOptions,
    BatchOut,
    BatchRedeliverOut,
    BatchRequest,
    DeliveryList,
    ErrorResponse,
    JobStatus,
    TranscriptText,
    validated_options,
)
from api.services import batch_analytics as analytics_svc
from api.services import batch_intake as intake
from api.services import batch_results as results_svc
from api.services import batch_sources as sources
from api.services import batches as svc
from api.services import jobs as jobs_svc
from api.services.archive_stream import EarlyArchive
from api.uploads import StoredAudio, remove_quietly
from shared.db.models import Batch
from shared.platform import received_files
from shared.platform.batch_state import load_view
from shared.platform.settings import Settings
from shared.text.options import OPTION_NAMES, TextOptionError

router = APIRouter(prefix="/v1/batches", tags=["batches"])
_FORM_FIELDS = ("name", "webhook_url", "channels", "decoder", "priority", "item_webhooks", *OPTION_NAMES)
_MEDIA = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8", "zip": "application/zip"}
_STREAMS = {"jsonl": results_svc.stream_jsonl, "csv": results_svc.stream_csv, "zip": results_svc.stream_zip}
_SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "ZIP or tar (.gz, .bz2, .xz)",
                        },
                        "name": {"type": "string"},
                        "webhook_url": {"type": "string"},
                        "channels": {"type": "string", "enum": ["mix", "split"], "default": "split"},
                        "decoder": {"type": "string", "enum": ["auto", "greedy", "beam"], "default": "auto"},
                        "priority": {"type": "integer", "minimum": 0, "maximum": 4, "default": 2},
                        "item_webhooks": {"type": "boolean", "default": False},
                    },
                }
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/BatchRequest"}},
        },
    }
}
_SUBMIT_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    200: {"model": BatchOut, "description": "the earlier batch of this Idempotency-Key"},
    400: {
        "model": ErrorResponse,
        "description": "unsafe_path, archive_bomb, url_not_allowed (a manifest URL on a non-public address)",
    },
    403: {"model": ErrorResponse, "description": "directory_not_allowed (no TONE_BATCH_ROOT)"},
    404: {"model": ErrorResponse, "description": "directory_not_found"},
    409: {"model": ErrorResponse, "description": "idempotency_conflict"},
    413: {"model": ErrorResponse, "description": "too_many_entries, archive_too_large, body_too_large"},
    415: {"model": ErrorResponse, "description": "unsupported_archive, unsupported_media_type"},
}


def _form_options(fields: list[tuple[str, str]]) -> BatchOptions:
    """A batch form's options (ValidationError for a bad one)."""
    options: BatchOptions = validated_options(BatchOptions, {k: v for k, v in fields if k in _FORM_FIELDS})
    return options


def _validated(model: type[BaseModel], fields: dict[str, Any]) -> Any:
    try:
        return validated_options(model, fields)
    except ValidationError as exc:
        raise invalid_request(exc) from None


async def _json_body(request: Request) -> dict[str, Any]:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MANIFEST_LIMIT:
            raise ApiError(413, "body_too_large", f"a JSON body may hold at most {MANIFEST_LIMIT} bytes")
    body = json_loads(bytes(raw))
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "the JSON body must be an object")
    return body


def _options_of(body: BatchRequest) -> BatchOptions:
    return BatchOptions.model_validate(body.model_dump(include=set(BatchOptions.model_fields)))


def _archive_batch(
    db: Session,
    caller: Caller,
    settings: Settings,
    stored: StoredAudio,
    options: BatchOptions,
    key: str | None,
) -> tuple[Batch, bool]:
    """The batch of an uploaded archive, received at ``stored.path`` (removed by the caller, unless
    a large archive was handed to its background reader under another name)."""
    archive = stored.path
    kept: Path | None = None  # a large archive, kept for its reader
    try:
        sub = svc.Submission("archive", options, svc.request_digest("archive", options, stored.sha256), key)

        def build(batch_id: uuid.UUID) -> svc.Built:
            nonlocal kept
            handle, entries = sources.list_archive(archive, settings)
            if sources.audio_files(entries) > settings.batch_inline_files:  # read in the background
                handle.close()
                kept = received_files.kept_archive(archive, batch_id)
                archive.rename(kept)
                return svc.Built([], [], 0, [], preparing={"archive": str(kept)})
            items, skipped, meta = sources.extract(handle, entries, settings)
            jobs = svc.file_jobs(caller, batch_id, items, meta, sub, settings)
            return svc.Built(jobs, skipped, sum(len(i.names) for i in items), items)

        batch, created = svc.create_batch(db, caller, sub, build, settings)
        if created and batch.status == "preparing":
            kept = None  # its reader's now: removed when the batch is read, cancelled or deleted
        return batch, created
    finally:
        if kept is not None:
            remove_quietly(kept)


def _manifest_batch(
    db: Session, caller: Caller, settings: Settings, body: BatchRequest, key: str | None
) -> tuple[Batch, bool]:
    options = _options_of(body)
    content = [i.model_dump() for i in body.items or []]
    sub = svc.Submission("manifest", options, svc.request_digest("manifest", options, content), key)

    def build(batch_id: uuid.UUID) -> svc.Built:
        checked = sources.check_manifest(body, settings)
        return svc.Built(svc.url_jobs(caller, batch_id, checked, sub, settings), [], len(checked), [])

    return svc.create_batch(db, caller, sub, build, settings)


def _directory_batch(
    db: Session, caller: Caller, settings: Settings, body: BatchRequest, key: str | None
) -> tuple[Batch, bool]:
    options = _options_of(body)
    relative = str(PurePosixPath(sources.clean_name(body.directory or "")))
    sub = svc.Submission("directory", options, svc.request_digest("directory", options, relative), key)

    def build(batch_id: uuid.UUID) -> svc.Built:
        folder = sources.resolve_directory(body.directory or "", settings)
        entries = sources.list_directory(folder, settings)
        if sources.audio_files(entries) > settings.batch_inline_files:  # read in the background
            return svc.Built([], [], 0, [], preparing={"directory": relative})
        items, skipped, meta = sources.scan_directory(entries, settings)
        jobs = svc.file_jobs(caller, batch_id, items, meta, sub, settings)
        return svc.Built(jobs, skipped, sum(len(i.names) for i in items), items)

    return svc.create_batch(db, caller, sub, build, settings)


@router.post(
    "",
    status_code=202,
    response_model=BatchOut,
    summary="Submit a batch: an archive (multipart file), a JSON manifest of URLs, or a server folder",
    openapi_extra=_SUBMIT_BODY,
    responses=_SUBMIT_ERRORS,
)
async def submit_batch(
    request: Request,
    response: Response,
    caller: CallerDep,
    db: DbDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        # the archive goes straight to the audio directory as it arrives (not spooled, then copied)
        archive = received_files.received_archive(settings.audio_path)
        early: list[EarlyArchive] = []  # a ZIP or tar (.gz, .bz2, .xz) read while it uploads

        def start_early(fields: list[tuple[str, str]]) -> EarlyArchive | None:
            try:
                options = _form_options(fields)
            except (ValidationError, TextOptionError):
                return None  # the whole form's 422 comes at its end
            if not settings.batch_early_start or options.item_webhooks:
                return None
            early.append(EarlyArchive(caller, options, idempotency_key, settings))
            return early[0]

        try:
            form = await receive_form(
                request, lambda _: archive, settings.max_upload_bytes, max_fields=20, tap=start_early
            )
            if form.stored is None:
                raise ApiError(422, "invalid_request", "file (the archive) is required")
            try:
                options = _form_options(form.fields)
            except ValidationError as exc:
                raise invalid_request(exc) from None
            got = None
            if early:
                got = await run_in_threadpool(early[0].finish, db, form.stored, options)
            if got is None:
                got = await run_in_threadpool(
                    _archive_batch, db, caller, settings, form.stored, options, idempotency_key
                )
            batch, created = got
        finally:
            if early:
                await run_in_threadpool(early[0].abort)  # nothing once finish began
            remove_quietly(archive)
    elif content_type.startswith("application/json"):
        body: BatchRequest = _validated(BatchRequest, await _json_body(request))
        if (body.items is None) == (body.directory is None):
            raise ApiError(422, "invalid_request", "send exactly one of items (URLs) and directory")
        make = _manifest_batch if body.items is not None else _directory_batch
        batch, created = await run_in_threadpool(make, db, caller, settings, body, idempotency_key)
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            "send multipart/form-data with the archive as file, or JSON with items or directory",
        )
    if not created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    view = await run_in_threadpool(svc.view, db, batch)
    if created and batch.status == "preparing" and batch.prepared_beat_at is not None:
        intake.submit(batch.id, batch.prepared_beat_at, settings)  # after the view: it shows preparing
    return view


@router.get("", response_model=BatchList, summary="The tenant's batches, newest first", responses=ERRORS)
def list_batches(
    caller: CallerDep,
    db: DbDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
) -> dict[str, Any]:
    data, next_cursor = svc.list_batches(db, caller, limit, cursor)
    return {"data": data, "next_cursor": next_cursor}


@router.get(
    "/{batch_id}",
    response_model=BatchOut,
    summary="Counts per status, audio seconds done and left, progress, ETA",
    responses=ERRORS,
)
def get_batch(batch_id: str, caller: CallerDep, db: DbDep) -> dict[str, Any]:
    return load_view(db, svc.load_batch(db, caller, batch_id))


@router.get(
    "/{batch_id}/items",
    response_model=BatchItems,
    summary="The batch's items, by name, paginated",
    responses=ERRORS,
)
def list_items(
    batch_id: str,
    caller: CallerDep,
    db: DbDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
    status: Annotated[JobStatus | None, Query(description="only items whose job has this status")] = None,
) -> dict[str, Any]:
    batch = svc.load_batch(db, caller, batch_id)
    items, next_cursor = svc.list_items(db, batch, limit, cursor, status)
    return {"items": items, "next_cursor": next_cursor}


@router.delete(
    "/{batch_id}",
    status_code=204,
    summary="Delete the batch: its jobs, transcripts, deliveries and stored audio (running jobs stop)",
    responses=ERRORS,
)
def delete_batch(batch_id: str, caller: CallerDep, db: DbDep, settings: SettingsDep) -> Response:
    svc.delete_batch(db, svc.load_batch(db, caller, batch_id), settings)
    return Response(status_code=204)


@router.get(
    "/{batch_id}/webhooks",
    response_model=DeliveryList,
    summary="Every delivery attempt of the batch's webhook event",
    responses=ERRORS,
)
def list_webhooks(batch_id: str, caller: CallerDep, db: DbDep) -> DeliveryList:
    return DeliveryList.of(jobs_svc.deliveries(db, svc.load_batch(db, caller, batch_id)))


@router.post(
    "/{batch_id}/webhooks/redeliver",
    status_code=202,
    response_model=BatchRedeliverOut,
    summary="Send the batch's final webhook event again (a new event, with a new webhook-id)",
    responses={**ERRORS, 409: {"model": ErrorResponse, "description": "no webhook_url, or not ended yet"}},
)
def redeliver_webhook(batch_id: str, caller: CallerDep, db: DbDep) -> BatchRedeliverOut:
    batch = svc.load_batch(db, caller, batch_id)
    if not batch.webhook_url:
        raise ApiError(409, "no_webhook", "the batch has no webhook_url")
    event = jobs_svc.send_final_event(batch, again=True)
    if event is None:
        raise ApiError(409, "not_ready", f"the batch is {batch.status}; its event is sent when it ends")
    return BatchRedeliverOut(batch_id=str(batch.id), event_type=event)


@router.post(
    "/{batch_id}/cancel",
    response_model=BatchCancelOut,
    summary="Cancel the batch: queued jobs at once, processing ones within seconds",
    responses=ERRORS,
)
def cancel_batch(batch_id: str, caller: CallerDep, db: DbDep) -> dict[str, Any]:
    batch = svc.load_batch(db, caller, batch_id)
    cancelled = svc.cancel_batch(db, batch)
    return {**svc.view(db, batch), "cancelled": cancelled}


@router.get(
    "/{batch_id}/analytics",
    summary="Conversation analytics over the batch's calls: sums, means, percentiles, per metadata value",
    responses={**ERRORS, 422: {"model": ErrorResponse, "description": "group_by names no metadata column"}},
)
def batch_analytics(
    batch_id: str,
    caller: CallerDep,
    db: DbDep,
    group_by: Annotated[
        str | None, Query(description="a metadata column to aggregate per value of (default: agent, if any)")
    ] = None,
) -> dict[str, Any]:
    batch = svc.load_batch(db, caller, batch_id)
    return analytics_svc.batch_analytics(db, batch.id, group_by)


@router.get(
    "/{batch_id}/results",
    summary="Results, streamed: jsonl, csv (a row per phrase) or zip (files per recording and format)",
    responses={
        **ERRORS,
        200: {
            "content": {
                "application/x-ndjson": {},
                "text/csv": {},
                "application/zip": {},
            },
            "description": "jsonl: a record per item (name, job_id, status, error, metadata, duration, "
            "phrases); zip: <path>.<format> per completed recording and format, results.jsonl, errors.csv",
        },
    },
)
def results(
    batch_id: str,
    caller: CallerDep,
    db: DbDep,
    settings: SettingsDep,
    format: Literal["jsonl", "csv", "zip"] = "jsonl",
    formats: Annotated[
        str | None,
        Query(description="for zip: comma-separated json,txt,srt,vtt,tsv (default json,txt,srt,vtt)"),
    ] = None,
    text: Annotated[
        TranscriptText,
        Query(
            description="csv and the zip's txt/srt/vtt/tsv: the written form (display) or the spoken "
            "words (raw); JSON carries both"
        ),
    ] = "display",
) -> StreamingResponse:
    batch = svc.load_batch(db, caller, batch_id)
    req = results_svc.ResultsRequest(
        batch.id,
        list(batch.skipped or []),
        results_svc.parse_formats(formats),
        tuple(analytics_svc.metadata_keys(db, batch.id)) if format == "zip" else (),
        text,
    )
    headers = {"Content-Disposition": f'attachment; filename="batch-{batch.id}.{format}"'}
    return StreamingResponse(_STREAMS[format](settings, req), media_type=_MEDIA[format], headers=headers)
