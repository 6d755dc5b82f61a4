"""The original single-host service's ``POST /transcribe``, now answered through the queue.

Same response as before (``phrases``, ``full_text``, ``duration``, ``processing_time``), except that
``duration`` is the audio's length; with ``return_timestamps=false`` phrases carry only their text.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from api.deps import CallerDep, DbDep, SettingsDep
from api.errors import ERRORS
from api.schemas import ErrorResponse, JobOptions, LegacyPhrase, LegacyTranscription
from api.services import jobs as svc

router = APIRouter(tags=["legacy"])


@router.post(
    "/transcribe",
    response_model=LegacyTranscription,
    response_model_exclude_none=True,
    summary="Transcribe a file synchronously (the original service's call)",
    responses={
        **ERRORS,
        400: {"model": ErrorResponse, "description": "empty or unreadable audio"},
        415: {"model": ErrorResponse, "description": "not audio"},
        504: {"model": ErrorResponse, "description": "not finished within the sync timeout"},
    },
)
async def transcribe(
    caller: CallerDep,
    db: DbDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="the recording")],
    return_timestamps: Annotated[bool, Form()] = True,
) -> LegacyTranscription:
    job, transcript = await svc.transcribe_sync(db, caller, settings, file.file, file.filename, JobOptions())
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
