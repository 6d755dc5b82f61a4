"""The OpenAPI document, finished after FastAPI made it: what the routes can't say by themselves.

- the body schemas routes read by hand (``JobOptions``, ``BatchRequest``, ``VocabularyIn``) are
  added to the components, so that every ``$ref`` resolves;
- the security schemes (``Authorization: Bearer`` and ``X-API-Key``) and each authenticated
  operation's ``security``, so Swagger UI shows an Authorize button and "Try it out" works;
- the one error shape everywhere: 422 is ``ErrorResponse`` (what the server answers), not FastAPI's
  ``{"detail": [...]}``; every error response has an example with a code of its own status;
- a description and a success example on every operation (examples are the models' own, else made
  from the schema);
- the WebSocket endpoints, which OpenAPI can't describe, in the document's description.

``tests/api/test_openapi.py`` validates the result (openapi-spec-validator) and checks each point.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.schemas import BatchRequest, JobOptions, VocabularyIn

SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <key>`"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "`X-API-Key: <key>`"},
}

# status -> (code, message): the example of an error response with that status
ERROR_EXAMPLES: dict[str, tuple[str, str]] = {
    "400": ("corrupt_audio", "the file could not be decoded as audio"),
    "401": ("unauthorized", "an API key is required: Authorization: Bearer <key> or X-API-Key: <key>"),
    "403": ("directory_not_allowed", "server folders are not enabled (TONE_BATCH_ROOT is unset)"),
    "404": ("not_found", "no such job"),
    "409": ("not_ready", "the job is not completed yet"),
    "410": ("session_expired", "the streaming session expired"),
    "413": ("file_too_large", "the upload is over the limit of 1073741824 bytes"),
    "415": ("unsupported_format", "the file is not audio in a supported format"),
    "422": ("invalid_request", "channels: Input should be 'mix' or 'split'"),
    "429": ("rate_limited", "over 600 requests per minute for this key"),
    "503": ("model_not_found", "no T-one model: set TONE_MODEL_PATH (see the README)"),
    "504": ("timeout", "no answer within the synchronous call's time limit"),
}

# (method, path) -> description, for operations whose route has no docstring
DESCRIPTIONS: dict[tuple[str, str], str] = {
    ("post", "/v1/jobs"): "Upload a recording (multipart `file`) or give an `audio_url` (JSON or form); "
    "the job is queued and answered at once (202) with its links. Poll `GET /v1/jobs/{id}` or give a "
    "`webhook_url`. With `Idempotency-Key`, the same key and body within 24 h answer the first job (200).",
    ("get", "/v1/jobs"): "The tenant's jobs, newest first, filtered by `status` and creation time; "
    "`next_cursor` pages on.",
    ("get", "/v1/jobs/{job_id}"): "Status (queued, processing, completed, failed, cancelled), progress "
    "0–1, times, the audio's duration and, for a failed job, its error.",
    ("delete", "/v1/jobs/{job_id}"): "Removes the job with its stored audio, transcript and webhook "
    "deliveries; a running job stops first.",
    ("get", "/v1/jobs/{job_id}/transcript"): "The phrases with times (and per-word times in json), or a "
    "rendering as plain text, SRT, WebVTT or TSV. 409 `not_ready` until the job is completed.",
    ("get", "/v1/jobs/{job_id}/audio"): "The stored recording, decoded, for playback in a browser; 404 "
    "`audio_not_available` for live sessions or when retention removed it.",
    ("post", "/v1/jobs/{job_id}/cancel"): "A queued job is cancelled at once; a processing one stops "
    "within seconds. 409 when the job has already ended.",
    ("get", "/v1/jobs/{job_id}/webhooks"): "Every attempt to deliver the job's webhook events: time, "
    "HTTP status, latency, error and when the next attempt is due.",
    ("post", "/v1/jobs/{job_id}/webhooks/redeliver"): "Sends the job's final event again as a new event "
    "(a new `webhook-id`), retried on the usual schedule. 409 while the job has not ended.",
    ("post", "/v1/batches"): "A ZIP or tar(.gz) archive (multipart `file`), a JSON manifest of URLs "
    "(`items`), or a folder under `TONE_BATCH_ROOT` (`directory`): one job per distinct recording. "
    "Refused whole, with nothing created, when over the limits.",
    ("get", "/v1/batches"): "The tenant's batches, newest first, with a cursor.",
    ("get", "/v1/batches/{batch_id}"): "The batch's view: counts per status, audio seconds done and left, "
    "progress, ETA and skipped entries.",
    ("delete", "/v1/batches/{batch_id}"): "Removes the batch with its jobs, transcripts, deliveries and "
    "stored audio (a server folder's files stay).",
    ("get", "/v1/batches/{batch_id}/items"): "One row per name in the batch, by name; `?status=failed` "
    "lists only those; a cursor pages on.",
    ("get", "/v1/batches/{batch_id}/webhooks"): "Every attempt to deliver the batch's event.",
    ("post", "/v1/batches/{batch_id}/webhooks/redeliver"): "Sends the batch's final event again as a new "
    "event with a new `webhook-id`.",
    ("post", "/v1/batches/{batch_id}/cancel"): "Queued jobs are cancelled at once, processing ones within "
    "seconds; the batch ends `cancelled`.",
    ("get", "/v1/batches/{batch_id}/results"): "Streamed: `jsonl` (one line per recording), `csv` (one "
    "row per phrase, with a UTF-8 BOM for Excel) or `zip` (`<path>.<format>` per recording and format, "
    "`results.jsonl`, `errors.csv`).",
    ("post", "/v1/audio/transcriptions"): "OpenAI's call, answered when the transcript is ready (through "
    'the queue, like every job): `openai.OpenAI(base_url=".../v1", api_key=KEY).audio.transcriptions.'
    'create(model="t-one", file=f)`.',
    ("post", "/transcribe"): "The original service's call: the whole transcript of one file, answered "
    "when it is ready (through the queue).",
    ("get", "/"): "The service's name, version and model.",
    ("get", "/health"): "The model, database, broker, workers and how many read each queue; `degraded` "
    "while a part is missing, 503 when the database or Redis is down.",
    ("get", "/metrics"): "Prometheus text exposition.",
}

# (method, path) -> {content type: example}, for success responses that are not JSON models
MEDIA_EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    ("get", "/v1/batches/{batch_id}/results"): {
        "application/x-ndjson": '{"name": "calls/001.wav", "job_id": "…", "status": "completed", '
        '"duration": 17.7, "text": "добрый день"}\n',
        "text/csv": "\ufeffname,job_id,channel,start,end,text\ncalls/001.wav,…,0,0.42,1.86,добрый день\n",
    },
    ("get", "/metrics"): {"text/plain": "# TYPE tone_jobs_finished_total counter\n"},
}

WEBSOCKETS = """

## WebSocket endpoints

OpenAPI does not describe WebSockets; these are the three (see the README for every field):

- **`/v1/stream`** — auth by header or an `api_key` field in the first message. First message: the
  config `{"sample_rate", "encoding", "channels", "decoder", "store"}`; then binary frames of audio;
  then `{"type": "end"}`. The server sends `{"type": "phrase", ...}` per closed phrase,
  `{"type": "partial", "text", "channel"}` for the open one, `{"type": "final", "phrases", "job_id"?}`
  and closes 1000. Errors: `{"type": "error", "code", "message"}` and a close (1008 auth, 1003 bad
  config or message, 1011 internal, 1013 try again later: `over_capacity` or `timeout`, 4408 idle).
- **`/api/ws`** — T-one's demo protocol: `{"event": "ready"}`, raw int16 8 kHz frames, an empty
  message ends; `{"event": "transcript", "phrase"}` per phrase.
- **`/vosk`** — the Vosk server protocol: `{"config": {"sample_rate"}}`, PCM16 frames, `{"eof": 1}`;
  `{"partial"}` or `{"result", "text"}` per frame.
"""

_PLACEHOLDERS: dict[str, Any] = {"string": "string", "integer": 0, "number": 0.0, "boolean": True}


def example_of(schema: dict[str, Any], components: dict[str, Any], depth: int = 0) -> Any:
    """An example value for a JSON schema: its own example, else one built from its parts."""
    if "$ref" in schema:
        return example_of(components[schema["$ref"].rsplit("/", 1)[-1]], components, depth)
    if schema.get("examples"):
        return copy.deepcopy(schema["examples"][0])
    if "example" in schema:
        return copy.deepcopy(schema["example"])
    if "default" in schema and schema["default"] is not None:
        return copy.deepcopy(schema["default"])
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return example_of(options[0], components, depth)
    kind = schema.get("type")
    if depth > 6:
        return None
    if kind == "object" or "properties" in schema:
        return {
            name: example_of(part, components, depth + 1)
            for name, part in schema.get("properties", {}).items()
        }
    if kind == "array":
        return [example_of(schema.get("items", {}), components, depth + 1)]
    if schema.get("format") == "date-time":
        return "2026-12-02T18:00:00Z"
    return _PLACEHOLDERS.get(str(kind))


def _add_model(components: dict[str, Any], model: Any) -> None:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, part in schema.pop("$defs", {}).items():
        components.setdefault(name, part)
    components[model.__name__] = schema


def _error_content(status: str, path: str) -> dict[str, Any]:
    code, message = ERROR_EXAMPLES.get(status, ("error", "what went wrong"))
    if status == "404" and path.startswith("/v1/batches"):
        message = "no such batch"
    return {
        "application/json": {
            "schema": {"$ref": "#/components/schemas/ErrorResponse"},
            "example": {"error": {"code": code, "message": message}},
        }
    }


def finish(doc: dict[str, Any]) -> dict[str, Any]:
    """The document FastAPI made, completed (see the module's docstring)."""
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for model in (JobOptions, BatchRequest, VocabularyIn):
        _add_model(schemas, model)
    components["securitySchemes"] = SECURITY_SCHEMES
    for path, operations in doc.get("paths", {}).items():
        for method, op in operations.items():
            responses = op.setdefault("responses", {})
            if "401" in responses:
                op["security"] = [{"bearer": []}, {"apiKey": []}]
            if not op.get("description"):
                op["description"] = DESCRIPTIONS.get((method, path), op.get("summary", ""))
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    response["content"] = _error_content(status, path)
                    if status == "422":
                        response["description"] = "the request's fields are invalid"
                elif status.startswith("2"):
                    media_types = response.get("content", {})
                    if len(media_types) > 1 and media_types.get("application/json") == {"schema": {}}:
                        del media_types["application/json"]  # FastAPI's default beside the real ones
                    for media, content in media_types.items():
                        extra = MEDIA_EXAMPLES.get((method, path), {})
                        if media in extra:
                            content["example"] = extra[media]
                        elif "example" not in content and "examples" not in content and content.get("schema"):
                            content["example"] = example_of(content["schema"], schemas)
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    doc["info"]["description"] = doc["info"].get("description", "") + WEBSOCKETS
    return doc


def install(app: FastAPI) -> None:
    """``app.openapi()`` answers the finished document (made once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = finish(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend it
