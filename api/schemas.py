"""Request and response models of the HTTP API, with the examples shown at /docs and /redoc."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from api.jsonbody import check_metadata
from shared.platform.statuses import BatchStatus, JobStatus
from shared.text.options import OPTION_NAMES, TextOptionError, TextOptions, parse_text_options

MAX_URL_LENGTH = 2048


def http_url(value: str | None, field: str) -> str | None:
    """An absolute http(s) URL of at most ``MAX_URL_LENGTH`` characters (``file:``, ``javascript:``
    and the like are refused at the door); the SSRF guard checks its address separately."""
    if value is None:
        return None
    value = value.strip()
    if len(value) > MAX_URL_LENGTH:
        raise ValueError(f"{field} may hold at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (a bad port raises)
    except ValueError:
        raise ValueError(f"{field} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{field} must be an absolute http or https URL")
    return value


Channels = Literal["mix", "split"]
Decoder = Literal["auto", "greedy", "beam"]
TranscriptText = Literal["display", "raw"]

_M = TypeVar("_M", bound=BaseModel)

JOB_ID_EXAMPLE = "7b0c2f4e-8f0e-4a53-9d0b-0d6f3f0f2a11"


class TextFields(BaseModel):
    """The text options of a job, batch or live session (:mod:`shared.text.options`)."""

    normalize: bool = Field(True, description="add the written form (`display`: numbers as digits)")
    vocabulary: list[str] | None = Field(
        None, description="words to boost in beam search (hot words; needs decoder beam or auto)"
    )
    replacements: dict[str, str] | None = Field(None, description="spellings to rewrite in `display`")
    redact: list[str] | None = Field(
        None, description="mask in `display`: card, phone, passport, inn, snils, email, profanity"
    )
    redact_raw: bool = Field(False, description="mask the spoken `text` and `words` too")
    redact_audio: bool = Field(False, description="replace the redacted words with a 1 kHz tone in the audio")

    def text_options(self) -> TextOptions:
        return parse_text_options(self.model_dump())


class JobOptions(TextFields):
    """Options of ``POST /v1/jobs`` (form fields with an upload, or a JSON body with ``audio_url``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "audio_url": "https://example.com/calls/2024-05-01/1234.wav",
                    "channels": "split",
                    "decoder": "greedy",
                    "webhook_url": "https://example.com/hooks/tone",
                    "metadata": {"call_id": "1234"},
                    "priority": 5,
                }
            ]
        },
    )

    audio_url: str | None = Field(None, description="http(s) URL the worker downloads (instead of a file)")
    channels: Channels = Field("mix", description="mix: average the channels; split: one stream per channel")
    decoder: Decoder = Field("auto", description="greedy, beam, or auto (beam with an LM when present)")
    webhook_url: str | None = Field(None, description="POSTed a signed event when the job ends")
    metadata: dict[str, Any] | None = Field(
        None, description="any JSON object, returned as is (at most 16 KiB as JSON, 32 levels deep)"
    )
    priority: int = Field(5, ge=0, le=9, description="0 (lowest) .. 9 (highest)")

    @field_validator("audio_url", "webhook_url")
    @classmethod
    def _http_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        return http_url(value, str(info.field_name))

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return check_metadata(value)


def validated_options(model: type[_M], fields: dict[str, Any]) -> _M:
    """``model`` from request fields, the text options checked first: a bad one raises
    :class:`TextOptionError`, 422 ``invalid_<option>`` (other bad fields: 422 ``invalid_request``)."""
    text = parse_text_options(fields)
    if text.vocabulary and fields.get("decoder") == "greedy":
        raise TextOptionError("vocabulary", "vocabulary needs beam search: decoder beam or auto, not greedy")
    cleaned = {k: v for k, v in fields.items() if k not in OPTION_NAMES}
    cleaned.update(text.to_dict())
    return model.model_validate(cleaned)


class ErrorInfo(BaseModel):
    code: str = Field(examples=["unsupported_format"])
    message: str = Field(examples=["neither libsndfile nor FFmpeg recognises the input as audio"])


class ErrorResponse(BaseModel):
    error: ErrorInfo


class JobLinks(BaseModel):
    self: str
    transcript: str
    cancel: str
    webhooks: str


class FlagOut(BaseModel):
    """A rule that matched the job's transcript (``/v1/rules``), with what matched."""

    rule_id: str
    name: str
    kind: str
    details: dict[str, Any]
    created_at: datetime


class AudioOut(BaseModel):
    """What the recording is, as the worker found it (null until a worker opened it)."""

    format: str | None = Field(None, examples=["WAV"])
    codec: str | None = Field(None, examples=["ULAW"])
    sample_rate: int | None = Field(None, examples=[8000])
    channels: int = Field(examples=[2], description="the file's channels (whatever `channels` asked)")


class JobOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": JOB_ID_EXAMPLE,
                    "status": "completed",
                    "kind": "job",
                    "priority": 5,
                    "progress": 1.0,
                    "created_at": "2024-05-01T12:00:00Z",
                    "started_at": "2024-05-01T12:00:01Z",
                    "finished_at": "2024-05-01T12:00:03Z",
                    "duration": 13.02,
                    "processing_seconds": 1.7,
                    "options": {"channels": "split", "decoder": "greedy"},
                    "metadata": {"call_id": "1234"},
                    "source": "upload",
                    "filename": "call.wav",
                    "size_bytes": 208324,
                    "audio_url": None,
                    "webhook_url": "https://example.com/hooks/tone",
                    "error": None,
                    "links": {
                        "self": f"/v1/jobs/{JOB_ID_EXAMPLE}",
                        "transcript": f"/v1/jobs/{JOB_ID_EXAMPLE}/transcript",
                        "cancel": f"/v1/jobs/{JOB_ID_EXAMPLE}/cancel",
                        "webhooks": f"/v1/jobs/{JOB_ID_EXAMPLE}/webhooks",
                    },
                }
            ]
        }
    )

    id: str
    status: JobStatus
    kind: str
    priority: int
    progress: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration: float | None = Field(description="audio seconds, once known")
    processing_seconds: float | None
    options: dict[str, Any]
    audio: AudioOut | None = None
    request_id: str | None = Field(None, description="the X-Request-ID of the request that made the job")
    metadata: dict[str, Any] | None
    source: str
    filename: str | None
    size_bytes: int | None
    audio_url: str | None
    webhook_url: str | None
    error: ErrorInfo | None
    links: JobLinks
    analytics: dict[str, Any] | None = Field(
        None, description="conversation analytics of a completed job (README, Conversation analytics)"
    )
    flags: list[FlagOut] = Field(default_factory=list, description="rules its transcript matched")


class JobList(BaseModel):
    data: list[JobOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null at the end")


class WordOut(BaseModel):
    text: str
    start: float
    end: float


class PhraseOut(BaseModel):
    text: str
    start_time: float
    end_time: float
    channel: int
    words: list[WordOut]
    display: str | None = Field(None, description="the written form (numbers as digits, masks)")
    display_words: list[WordOut] | None = Field(
        None, description="its spans, each with the times of its words"
    )


class TranscriptOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": JOB_ID_EXAMPLE,
                    "phrases": [
                        {
                            "text": "чем я могу вам помочь",
                            "start_time": 3.3,
                            "end_time": 5.49,
                            "channel": 0,
                            "words": [{"text": "чем", "start": 3.3, "end": 3.69}],
                            "display": "чем я могу вам помочь",
                            "display_words": [{"text": "чем", "start": 3.3, "end": 3.69}],
                        }
                    ],
                    "full_text": "чем я могу вам помочь",
                    "display_text": "чем я могу вам помочь",
                    "duration": 10.5,
                    "processing_time": 0.4,
                    "channels": 1,
                }
            ]
        }
    )

    job_id: str
    phrases: list[PhraseOut]
    full_text: str
    display_text: str
    duration: float
    processing_time: float | None
    channels: int
    analytics: dict[str, Any] | None = None


class DeliveryOut(BaseModel):
    id: str
    event_id: str
    event_type: str
    url: str
    attempt: int
    created_at: datetime
    status_code: int | None
    latency_ms: float | None
    error: str | None
    success: bool
    next_attempt_at: datetime | None


class DeliveryList(BaseModel):
    data: list[DeliveryOut]

    @classmethod
    def of(cls, rows: Iterable[Any]) -> DeliveryList:
        """From ``WebhookDelivery`` rows."""
        names = [name for name in DeliveryOut.model_fields if name != "id"]
        return cls(data=[DeliveryOut(id=str(r.id), **{n: getattr(r, n) for n in names}) for r in rows])


class RedeliverOut(BaseModel):
    job_id: str
    event_type: str
    status: Literal["queued"] = "queued"


class WebhookSecretOut(BaseModel):
    """The tenant's Standard Webhooks signing secret (``whsec_`` + base64 key)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                    "created_at": "2026-12-02T18:00:00Z",
                    "previous_secret_expires_at": "2026-12-03T18:00:00Z",
                }
            ]
        }
    )

    secret: str
    created_at: datetime | None = Field(None, description="when this secret was made")
    previous_secret_expires_at: datetime | None = Field(
        None,
        description="after a rotation: until then deliveries carry a second signature made with the "
        "previous secret (Standard Webhooks allows several, space-separated); null when none",
    )


class BatchRedeliverOut(BaseModel):
    batch_id: str
    event_type: str
    status: Literal["queued"] = "queued"


class LegacyPhrase(BaseModel):
    text: str
    start_time: float | None = None
    end_time: float | None = None
    channel: int | None = None
    words: list[WordOut] | None = None


class LegacyTranscription(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "phrases": [{"text": "чем я могу вам помочь", "start_time": 3.3, "end_time": 5.49}],
                    "full_text": "чем я могу вам помочь",
                    "duration": 10.5,
                    "processing_time": 0.4,
                }
            ]
        }
    )

    phrases: list[LegacyPhrase]
    full_text: str
    duration: float = Field(description="the audio's length in seconds")
    processing_time: float


class ServiceInfo(BaseModel):
    name: str
    version: str
    docs: str
    redoc: str
    openapi: str
    health: str


class HealthOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ok",
                    "model": "t-one",
                    "model_status": "ok",
                    "model_error": None,
                    "database": "ok",
                    "broker": "ok",
                    "workers": 3,
                    "queues": {"cpu": 1, "cpu.live": 1, "events": 1},
                }
            ]
        }
    )

    """Anonymous callers get ``status`` alone; the rest needs an API key or the scrape token."""

    status: Literal["ok", "degraded", "unavailable"]
    model: str | None = Field(None, description="the model's name (never its path)")
    model_status: Literal["ok", "missing", "error"] | None = Field(
        None, description="missing: no model files; error: a worker could not load it (status is degraded)"
    )
    model_error: str | None = Field(None, description="why, and how to get a model")
    database: str | None = None
    broker: str | None = None
    workers: int | None = None
    queues: dict[str, int] | None = Field(
        None,
        description="workers reading each queue this API sends to: transcription, live, events "
        "(status is degraded while one has none)",
    )


class OpenAIUsage(BaseModel):
    type: Literal["duration"] = "duration"
    seconds: float = Field(examples=[17.7], description="the audio's duration")


class OpenAITranscription(BaseModel):
    text: str = Field(examples=["чем я могу вам помочь"])
    usage: OpenAIUsage | None = None


class OpenAIModel(BaseModel):
    id: str = Field(examples=["t-one"])
    object: Literal["model"] = "model"
    created: int = Field(examples=[1750000000])
    owned_by: str = Field(examples=["t-tech"])


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class OpenAISegment(BaseModel):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class OpenAIWord(BaseModel):
    word: str
    start: float
    end: float


class OpenAIVerboseTranscription(BaseModel):
    task: Literal["transcribe"] = "transcribe"
    language: str
    duration: float
    text: str
    segments: list[OpenAISegment] | None = None  # absent when only word timestamps were asked
    words: list[OpenAIWord] | None = None
    usage: OpenAIUsage | None = None


# -- batches ---------------------------------------------------------------------------------------

BATCH_ID_EXAMPLE = "3f9d7c1a-2b4e-4f6a-9c8d-1e2f3a4b5c6d"


class BatchOptions(TextFields):
    """Options of ``POST /v1/batches``: form fields beside an archive, or fields of the JSON body."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=500, description="a label for people (lists, the console)")
    webhook_url: str | None = Field(None, description="POSTed one signed batch.completed/cancelled event")
    channels: Channels = Field("split", description="mix or split (call recordings: agent, client)")
    decoder: Decoder = Field("auto", description="greedy, beam, or auto")
    priority: int = Field(
        2, ge=0, le=4, description="the jobs' priority, 0..4: always below interactive jobs (5 by default)"
    )
    item_webhooks: bool = Field(
        False, description="also send each recording's job.* event to webhook_url (off: only the batch's)"
    )

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        """A plain format check here; the SSRF guard checks the address on every delivery."""
        return http_url(value, "webhook_url")


class BatchItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    audio_url: str = Field(description="http(s) URL the worker downloads; checked by the SSRF guard first")
    metadata: dict[str, Any] | None = Field(None, description="any JSON object, returned with the item")
    name: str | None = Field(
        None, max_length=500, description="the item's name (a relative path); default: from the URL"
    )

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return check_metadata(value)


class BatchRequest(BatchOptions):
    """The JSON body of ``POST /v1/batches``: exactly one of ``items`` and ``directory``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "May calls",
                    "items": [
                        {"audio_url": "https://example.com/calls/1234.wav", "metadata": {"agent": "ivan"}},
                        {"audio_url": "https://example.com/calls/1235.wav", "name": "calls/1235.wav"},
                    ],
                    "webhook_url": "https://example.com/hooks/tone",
                },
                {"directory": "2024-05/line-1", "name": "line 1, May"},
            ]
        },
    )

    items: list[BatchItemIn] | None = Field(None, description="recordings by URL (a manifest)")
    directory: str | None = Field(
        None, description="a folder under the server's TONE_BATCH_ROOT, relative to it (when configured)"
    )


class BatchLinks(BaseModel):
    self: str
    items: str
    results: str
    cancel: str


class SkippedEntry(BaseModel):
    name: str
    reason: str


class BatchOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": BATCH_ID_EXAMPLE,
                    "name": "May calls",
                    "source": "archive",
                    "status": "processing",
                    "created_at": "2024-05-01T12:00:00Z",
                    "finished_at": None,
                    "items": 3,
                    "jobs": 2,
                    "counts": {"queued": 1, "processing": 0, "completed": 1, "failed": 0, "cancelled": 0},
                    "audio_seconds_done": 61.2,
                    "audio_seconds_left": 45.0,
                    "progress": 0.5,
                    "eta_seconds": 12.5,
                    "skipped": [
                        {"name": "notes.txt", "reason": "not_audio: the extension is not an audio one"}
                    ],
                    "webhook_url": None,
                    "links": {
                        "self": f"/v1/batches/{BATCH_ID_EXAMPLE}",
                        "items": f"/v1/batches/{BATCH_ID_EXAMPLE}/items",
                        "results": f"/v1/batches/{BATCH_ID_EXAMPLE}/results",
                        "cancel": f"/v1/batches/{BATCH_ID_EXAMPLE}/cancel",
                    },
                }
            ]
        }
    )

    id: str
    name: str | None
    source: Literal["archive", "manifest", "directory"]
    status: BatchStatus = Field(description="cancelled as soon as a cancel was asked for")
    created_at: datetime
    finished_at: datetime | None = Field(description="set once, when the last job ended")
    items: int = Field(description="recordings (names); the same content twice is one job")
    jobs: int
    counts: dict[str, int] = Field(description="jobs per status")
    audio_seconds_done: float
    audio_seconds_left: float | None = Field(description="null while some open job's length is unknown")
    progress: float = Field(description="final jobs / jobs")
    eta_seconds: float | None
    skipped: list[SkippedEntry]
    webhook_url: str | None
    links: BatchLinks


class BatchList(BaseModel):
    data: list[BatchOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null at the end")


class BatchItemOut(BaseModel):
    name: str
    job_id: str
    status: JobStatus
    error: ErrorInfo | None
    duration: float | None
    metadata: dict[str, Any] | None


class BatchItems(BaseModel):
    items: list[BatchItemOut]
    next_cursor: str | None = Field(description="the last name shown; pass as ?cursor= for the next page")


class BatchCancelOut(BatchOut):
    cancelled: int = Field(description="jobs cancelled or asked to stop by this call")


class VocabularyIn(BaseModel):
    """The body of ``PUT /v1/vocabulary``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"words": ["Тинькофф", "ипотека"], "replacements": {"тинькоф": "Тинькофф"}}]
        },
    )

    words: list[str] = Field(default_factory=list, description="hot words for every job and batch")
    replacements: dict[str, str] = Field(default_factory=dict, description="spellings to rewrite in display")


class VocabularyOut(BaseModel):
    words: list[str]
    replacements: dict[str, str]
    updated_at: datetime | None


# -- search, rules, analytics -------------------------------------------------------------------------


class SearchHit(BaseModel):
    job_id: str
    name: str | None = Field(
        description="the recording's name: its path in the batch, or the upload's filename"
    )
    metadata: dict[str, Any] | None
    phrase_index: int
    channel: int = Field(description="0 agent (left), 1 client (right); 0 for mono")
    start: float
    end: float
    text: str = Field(description="the phrase's text (its display text when it has one)")
    highlight: str = Field(description="the text, HTML-escaped, with the matched words in <mark>")
    marks: list[list[int]] = Field(description="[start, end) character offsets of the matched words in text")
    rank: float


class SearchPage(BaseModel):
    data: list[SearchHit]
    next_cursor: str | None


class SearchJobGroup(BaseModel):
    job_id: str
    name: str | None
    metadata: dict[str, Any] | None
    count: int = Field(description="how many of the job's phrases match")
    rank: float = Field(description="its best hit's rank")
    hits: list[SearchHit] = Field(description="its best hits (up to 3)")


class SearchGroupPage(BaseModel):
    data: list[SearchJobGroup]
    next_cursor: str | None


class RuleIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"name": "threat to leave", "kind": "phrase_contains",
                 "params": {"words": ["расторгнуть договор", "уйду"], "channel": 1}},
                {"name": "no greeting", "kind": "missing_in_first",
                 "params": {"words": ["здравствуйте"], "seconds": 10, "channel": 0}},
            ]
        }
    )  # fmt: skip

    name: str = Field(min_length=1, max_length=200)
    kind: Literal["phrase_contains", "missing_in_first", "silence_over", "overtalk_share_over"]
    params: dict[str, Any] = Field(default_factory=dict)
    apply_to_existing: bool = Field(
        False, description="also flag the tenant's already completed jobs it matches (no webhooks for those)"
    )


class RuleOut(BaseModel):
    id: str
    name: str
    kind: str
    params: dict[str, Any]
    created_at: datetime
    matches: int = Field(0, description="jobs it flagged")


class RuleList(BaseModel):
    data: list[RuleOut]
