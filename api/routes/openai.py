"""OpenAI's calls: ``POST /v1/audio/transcriptions`` (answered synchronously through the queue),
``GET /v1/models`` and ``GET /v1/models/{id}`` (which SDKs, Open WebUI and LiteLLM probe).

``prompt`` and ``temperature`` are accepted and ignored. ``model`` is ``t-one`` or one of
:data:`MODEL_ALIASES`; the language is Russian (``ru``, ``rus``, ``russian`` or none); anything else
is refused, like every error of these paths, in OpenAI's shape
``{"error": {"message", "type", "param", "code"}}`` (:class:`api.errors.OpenAIError`).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.deps import CallerDep, DbDep, SettingsDep
from api.errors import ERRORS, OpenAIError
from api.multipart import upload_body
from api.schemas import (
    ErrorResponse,
    JobOptions,
    OpenAIModel,
    OpenAIModelList,
    OpenAITranscription,
    OpenAIVerboseTranscription,
)
from api.services import jobs as svc
from shared.asr.formats import MEDIA_TYPES, render
from shared.db.models import Job, Transcript
from shared.text.display import display_text, phrase_text

router = APIRouter(tags=["openai"])

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
LANGUAGE = "russian"  # what whisper-1 answers in verbose_json
LANGUAGES = {"ru", "rus", "russian"}  # accepted for `language` (ISO 639-1, 639-2, the name)
MODEL_ID = "t-one"
# accepted for `model`: T-one's names, and whisper-1 so clients that send OpenAI's default work as is
MODEL_ALIASES = ("t-tech/T-one", "tone", "whisper-1")
MODEL_CREATED = 1_750_000_000  # the model list's "created" (June 2025, T-one's release)


def _model() -> OpenAIModel:
    return OpenAIModel(id=MODEL_ID, created=MODEL_CREATED, owned_by="t-tech")


def _check_request(fields: TranscriptionFields) -> None:
    """OpenAI's refusals (400, its error shape) of a model, language or granularity we don't serve."""
    model, language = fields.model, fields.language
    response_format, granularities = fields.response_format, fields.timestamp_granularities
    if model != MODEL_ID and model not in MODEL_ALIASES:
        raise OpenAIError(
            400,
            "invalid_model",
            f"The model `{model}` does not exist; use `{MODEL_ID}` (or {', '.join(MODEL_ALIASES)})",
            param="model",
        )
    if language is not None and language.strip().lower() not in LANGUAGES:
        raise OpenAIError(
            400,
            "unsupported_language",
            f"Language `{language}` is not supported: this service transcribes Russian only (`ru`)",
            param="language",
        )
    if granularities and response_format != "verbose_json":
        raise OpenAIError(
            400,
            "invalid_value",
            "timestamp_granularities is only supported with response_format=verbose_json",
            param="timestamp_granularities",
        )


def _usage(seconds: float) -> dict[str, Any]:
    return {"type": "duration", "seconds": round(seconds, 3)}


def _segments(phrases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "seek": 0,
            "start": p["start_time"],
            "end": p["end_time"],
            "text": phrase_text(p),
            "tokens": [],
            "temperature": 0.0,
            "avg_logprob": 0.0,
            "compression_ratio": 1.0,
            "no_speech_prob": 0.0,
        }
        for i, p in enumerate(phrases)
    ]


def _words(phrases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"word": w["text"], "start": w["start"], "end": w["end"]}
        for p in phrases
        for w in p.get("display_words", p.get("words")) or ()
    ]


def _duration(job: Job, transcript: Transcript) -> float:
    return job.duration if job.duration is not None else transcript.duration


def _verbose(job: Job, transcript: Transcript, granularities: list[str]) -> dict[str, Any]:
    """OpenAI's verbose_json: ``segments`` unless only ``word`` was asked, ``words`` when asked."""
    phrases = svc.shown_phrases(job, transcript)
    duration = _duration(job, transcript)
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": LANGUAGE,
        "duration": duration,
        "text": display_text(phrases),
    }
    if "segment" in granularities:
        body["segments"] = _segments(phrases)
    if "word" in granularities:
        body["words"] = _words(phrases)
    body["usage"] = _usage(duration)
    return body


@router.get(
    "/v1/models",
    response_model=OpenAIModelList,
    summary="The models (OpenAI-compatible)",
    description=f"One model, `{MODEL_ID}`; `model` in a transcription may also be "
    + ", ".join(f"`{a}`" for a in MODEL_ALIASES)
    + ".",
    responses={k: v for k, v in ERRORS.items() if k != 404},
)
def list_models(caller: CallerDep) -> OpenAIModelList:
    return OpenAIModelList(data=[_model()])


@router.get(
    "/v1/models/{model_id:path}",
    response_model=OpenAIModel,
    summary="One model (OpenAI-compatible)",
    description="`t-one` (or an alias, answered as `t-one`); any other id is 404 `model_not_found` in "
    "OpenAI's error shape.",
    responses={**ERRORS, 404: {"model": ErrorResponse, "description": "no such model"}},
)
def get_model(model_id: str, caller: CallerDep) -> OpenAIModel:
    if model_id != MODEL_ID and model_id not in MODEL_ALIASES:
        raise OpenAIError(404, "model_not_found", f"The model `{model_id}` does not exist", param="model")
    return _model()


class TranscriptionFields(BaseModel):
    """OpenAI's form fields besides ``file``."""

    model: str = Field("t-one", examples=["t-one"], description="t-one, t-tech/T-one, tone or whisper-1")
    language: str | None = Field(None, examples=["ru"], description="ru (or none); others are refused")
    prompt: str | None = Field(None, description="accepted and ignored")
    response_format: ResponseFormat = "json"
    temperature: float | None = Field(None, description="accepted and ignored")
    timestamp_granularities: list[Literal["word", "segment"]] | None = Field(
        None, alias="timestamp_granularities[]"
    )


@router.post(
    "/v1/audio/transcriptions",
    summary="Transcribe a file (OpenAI-compatible)",
    openapi_extra=upload_body(TranscriptionFields),
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
    request: Request, caller: CallerDep, db: DbDep, settings: SettingsDep
) -> Response:
    upload, fields = await svc.receive_sync_upload(request, settings, TranscriptionFields, _check_request)
    response_format = fields.response_format
    granularities: list[str] = list(fields.timestamp_granularities or [])
    job, transcript = await svc.transcribe_sync(db, caller, settings, upload, JobOptions())
    shown = svc.shown_phrases(job, transcript)
    if response_format == "json":
        return JSONResponse({"text": display_text(shown), "usage": _usage(_duration(job, transcript))})
    if response_format == "verbose_json":
        return JSONResponse(_verbose(job, transcript, granularities or ["segment"]))
    fmt = {"text": "txt", "srt": "srt", "vtt": "vtt"}[response_format]
    phrases = [svc.phrase_of(p, "display") for p in shown]
    if fmt == "txt":
        return Response(display_text(shown) + "\n", media_type=MEDIA_TYPES["txt"])
    return Response(render(fmt, phrases, channels=transcript.channels), media_type=MEDIA_TYPES[fmt])
