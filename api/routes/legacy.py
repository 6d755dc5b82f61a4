"""The original single-host service's ``POST /transcribe``, now answered through the queue.

Same response as before (``phrases``, ``full_text``, ``duration``, ``processing_time``), except that
``duration`` is the audio's length; with ``return_timestamps=false`` phrases carry only their text.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from api.deps import CallerDep, DbDep, SettingsDep
from api.errors import ERRORS
from api.multipart import upload_body
from api.schemas import ErrorResponse, JobOptions, LegacyPhrase, LegacyTranscription
from api.services import jobs as svc

router = APIRouter(tags=["legacy"])


class LegacyFields(BaseModel):
    """The form's fields besides ``file``."""

    return_timestamps: bool = True


@router.post(
    "/transcribe",
    response_model=LegacyTranscription,
    response_model_exclude_none=True,
    summary="Transcribe a file synchronously (the original service's call)",
    openapi_extra=upload_body(LegacyFields),
    responses={
        **ERRORS,
        400: {"model": ErrorResponse, "description": "empty or unreadable audio, or a malformed form"},
        413: {"model": ErrorResponse, "description": "upload or audio over the limit"},
        415: {"model": ErrorResponse, "description": "not audio, or not a multipart form"},
        504: {"model": ErrorResponse, "description": "not finished within the sync timeout"},
    },
)
async def transcribe(
    request: Request, caller: CallerDep, db: DbDep, settings: SettingsDep
) -> LegacyTranscription:
    upload, fields = await svc.receive_sync_upload(request, settings, LegacyFields)
    return_timestamps = fields.return_timestamps
    job, transcript = await svc.transcribe_sync(db, caller, settings, upload, JobOptions())
    phrases = [
        LegacyPhrase.model_validate(p) if return_timestamps else LegacyPhrase(text=p["text"])
        for p in transcript.phrases
    ]
    return LegacyTranscription(
        phrases=phrases,
        full_text=transcript.full_text,
        duration=job.duration if job.duration is not None else transcript.duration,
        processing_time=job.processing_seconds or 0.0,
    )
