"""``POST /v1/audio/transcriptions``: OpenAI's call, answered synchronously through the queue.

``prompt`` and ``temperature`` are accepted and ignored; ``model`` may be anything (one model
serves); the language is Russian.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Response, UploadFile
from fastapi.responses import JSONResponse

from api.deps import CallerDep, DbDep, SettingsDep
from api.errors import ERRORS
from api.schemas import ErrorResponse, JobOptions, OpenAITranscription, OpenAIVerboseTranscription
from api.services import jobs as svc
from shared.asr.formats import MEDIA_TYPES, render
from shared.db.models import Job, Transcript

router = APIRouter(prefix="/v1/audio", tags=["openai"])

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
LANGUAGE = "ru"


def _segments(transcript: Transcript) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "seek": 0,
            "start": p["start_time"],
            "end": p["end_time"],
            "text": p["text"],
            "tokens": [],
            "temperature": 0.0,
            "avg_logprob": 0.0,
            "compression_ratio": 1.0,
            "no_speech_prob": 0.0,
        }
        for i, p in enumerate(transcript.phrases)
    ]


def _words(transcript: Transcript) -> list[dict[str, Any]]:
    return [
        {"word": w["text"], "start": w["start"], "end": w["end"]}
        for p in transcript.phrases
        for w in p.get("words") or ()
    ]


def _verbose(job: Job, transcript: Transcript, granularities: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": LANGUAGE,
        "duration": job.duration if job.duration is not None else transcript.duration,
        "text": transcript.full_text,
        "segments": _segments(transcript),
    }
    if "word" in granularities:
        body["words"] = _words(transcript)
    return body


@router.post(
    "/transcriptions",
    summary="Transcribe a file (OpenAI-compatible)",
    response_model=OpenAITranscription | OpenAIVerboseTranscription,
    responses={
        **ERRORS,
        200: {"content": {"text/plain": {"example": "чем я могу вам помочь\n"}}},
        400: {"model": ErrorResponse, "description": "empty or unreadable audio"},
        413: {"model": ErrorResponse, "description": "upload or audio over the limit"},
        415: {"model": ErrorResponse, "description": "not audio"},
        504: {"model": ErrorResponse, "description": "not finished within the sync timeout"},
    },
)
async def create_transcription(
    caller: CallerDep,
    db: DbDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="the recording")],
    model: Annotated[str, Form(examples=["t-one"])] = "t-one",
    language: Annotated[str | None, Form(examples=["ru"])] = None,
    prompt: Annotated[str | None, Form(description="accepted and ignored")] = None,
    response_format: Annotated[ResponseFormat, Form()] = "json",
    temperature: Annotated[float | None, Form(description="accepted and ignored")] = None,
    timestamp_granularities: Annotated[
        list[Literal["word", "segment"]] | None, Form(alias="timestamp_granularities[]")
    ] = None,
) -> Response:
    job, transcript = await svc.transcribe_sync(db, caller, settings, file.file, file.filename, JobOptions())
    if response_format == "json":
        return JSONResponse({"text": transcript.full_text})
    if response_format == "verbose_json":
        return JSONResponse(_verbose(job, transcript, list(timestamp_granularities or ["segment"])))
    fmt = {"text": "txt", "srt": "srt", "vtt": "vtt"}[response_format]
    phrases = [svc.phrase_of(p) for p in transcript.phrases]
    if fmt == "txt":
        return Response(transcript.full_text + "\n", media_type=MEDIA_TYPES["txt"])
    return Response(render(fmt, phrases, channels=transcript.channels), media_type=MEDIA_TYPES[fmt])
