"""``/v1/batches``: submit an archive of recordings, watch it, list its items, cancel, get results."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from starlette.datastructures import UploadFile

from api import batches as svc
from api.deps import CallerDep, DbDep, SettingsDep
from api.errors import ApiError
from api.routes.jobs import ERRORS, _options
from api.uploads import remove_quietly, save_stream

router = APIRouter(prefix="/v1/batches", tags=["batches"])
_MEDIA = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8", "zip": "application/zip"}
_STREAMS = {"jsonl": svc.stream_jsonl, "csv": svc.stream_csv, "zip": svc.stream_zip}


@router.post(
    "", status_code=202, summary="Submit an archive (ZIP or tar/tar.gz) of recordings", responses=ERRORS
)
async def submit_batch(
    request: Request, caller: CallerDep, db: DbDep, settings: SettingsDep
) -> dict[str, Any]:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data with the archive as file")
    form = await request.form(max_files=1, max_fields=20)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(422, "invalid_request", "file (the archive) is required")
    fields: dict[str, Any] = {"channels": "split", "priority": 2}
    fields.update({k: v for k, v in form.multi_items() if k in ("channels", "decoder", "priority")})
    options = _options(fields)  # webhook_url is not yet used for batches
    archive = settings.audio_path / "batches" / f"{uuid.uuid4()}.upload"
    try:
        await run_in_threadpool(save_stream, upload.file, archive, settings.max_upload_bytes)
        return await run_in_threadpool(svc.create_batch, db, caller, archive, options, settings)
    finally:
        remove_quietly(archive)


@router.get(
    "/{batch_id}", summary="Counts per status, audio seconds done and left, progress, ETA", responses=ERRORS
)
def get_batch(batch_id: str, caller: CallerDep, db: DbDep) -> dict[str, Any]:
    jobs = svc.batch_jobs(db, caller, batch_id)
    return svc.batch_view(batch_id, jobs)


@router.get("/{batch_id}/items", summary="The batch's items, by name, paginated", responses=ERRORS)
def list_items(
    batch_id: str,
    caller: CallerDep,
    db: DbDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> dict[str, Any]:
    rows = svc.item_rows(svc.batch_jobs(db, caller, batch_id))
    if cursor is not None:
        rows = [r for r in rows if r["name"] > cursor]
    page = rows[:limit]
    return {"items": page, "next_cursor": page[-1]["name"] if len(rows) > limit else None}


@router.post(
    "/{batch_id}/cancel", summary="Cancel every queued or processing job of the batch", responses=ERRORS
)
def cancel_batch(batch_id: str, caller: CallerDep, db: DbDep) -> dict[str, Any]:
    jobs = svc.batch_jobs(db, caller, batch_id)
    cancelled = svc.cancel_batch(db, jobs)
    return {"id": batch_id, "cancelled": cancelled}


@router.get(
    "/{batch_id}/results", summary="Results, streamed: jsonl, csv (a row per phrase) or zip", responses=ERRORS
)
def results(
    batch_id: str,
    caller: CallerDep,
    db: DbDep,
    settings: SettingsDep,
    format: Literal["jsonl", "csv", "zip"] = "jsonl",
) -> StreamingResponse:
    ids = [job.id for job in svc.batch_jobs(db, caller, batch_id)]
    headers = {"Content-Disposition": f'attachment; filename="batch-{batch_id}.{format}"'}
    return StreamingResponse(_STREAMS[format](settings, ids), media_type=_MEDIA[format], headers=headers)
