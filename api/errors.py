"""One error shape everywhere: ``{"error": {"code", "message"}}``.

Routes and services raise any :class:`shared.errors.CodedError` (:class:`ApiError`, the engine's
``ToneError``, the SSRF guard's ``UrlError``, live sessions' ``SessionError``): ONE handler renders
them, with the error's own HTTP status or else its code's row in :data:`ERROR_STATUS`. FastAPI's own
HTTP errors, request validation errors and anything unexpected are rendered in the same shape
(unexpected ones as a 500 without a stack trace). :data:`ERRORS` documents the common ones in OpenAPI.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.schemas import ErrorResponse
from shared.errors import CodedError

log = logging.getLogger("api")

# HTTP status -> code for errors raised by FastAPI/Starlette themselves
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "file_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}
# error code -> HTTP status, for coded errors that carry none (the engine's, the SSRF guard's): a
# request refused (or a sync job failed) because of its audio or its URL; no model is a 503
ERROR_STATUS = {
    "empty_audio": 400,
    "corrupt_audio": 400,
    "unsupported_format": 415,
    "file_too_large": 413,
    "audio_too_long": 413,
    "audio_error": 400,
    "download_failed": 400,
    "url_not_allowed": 400,
    "url_forbidden": 400,
    "invalid_url": 400,
    "request_failed": 400,
    "model_not_found": 503,
    "model_contract_mismatch": 503,
    "bad_stream_state": 400,
    "model_error": 503,
}
# OpenAPI: the errors every authenticated route may answer
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "missing, unknown or revoked API key"},
    404: {"model": ErrorResponse, "description": "no such job for this tenant"},
    429: {"model": ErrorResponse, "description": "over the per-key request limit"},
}


# paths whose errors are rendered in OpenAI's shape (their clients parse that one)
OPENAI_PATHS = ("/v1/audio/", "/v1/models")


class ApiError(CodedError):
    """An error with an HTTP status, a machine-readable code and a message for people."""

    status: int

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message, code=code, status=status, headers=headers)


class OpenAIError(ApiError):
    """An error of OpenAI's calls, naming the request field at fault (``param``)."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(status, code, message)
        self.param = param


def openai_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def status_of(exc: CodedError) -> int:
    """The HTTP status a coded error is answered with."""
    return exc.status or ERROR_STATUS.get(exc.code, 500)


def not_found(what: str = "job") -> ApiError:
    return ApiError(404, "not_found", f"no such {what}")


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    request: Request | None = None,
    param: str | None = None,
) -> JSONResponse:
    """The error's answer: ``{"error": {"code", "message"}}``, or on OpenAI's paths its superset
    ``{"error": {"message", "type", "param", "code"}}``."""
    body = error_body(code, message)
    if request is not None and request.url.path.startswith(OPENAI_PATHS):
        body["error"].update(type=openai_type(status), param=param)
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


_LOCATIONS = ("body", "query", "path", "header")


def _validation_message(errors: Sequence[Any]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in _LOCATIONS)
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


async def _coded_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CodedError)
    status = status_of(exc)
    if status >= 500:
        log.warning("%s %s: %s (%s)", request.method, request.url.path, exc.code, exc.message)
    return error_response(status, exc.code, exc.message, exc.headers, request, getattr(exc, "param", None))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, exc.headers, request)


def invalid_request(exc: ValidationError) -> RequestValidationError:
    """A model's validation errors of request fields the route read itself, as FastAPI raises its
    own (the same 422 ``invalid_request`` through :func:`_validation_error`)."""
    return RequestValidationError(exc.errors(include_url=False, include_context=False))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    param = next((str(p) for p in (errors[0].get("loc", ()) if errors else ()) if p not in _LOCATIONS), None)
    return error_response(422, "invalid_request", _validation_message(errors), request=request, param=param)


DB_RETRY_AFTER_SECONDS = 5


def _nul_text(exc: DBAPIError) -> bool:
    """A string with a NUL character (U+0000) on its way to PostgreSQL, which holds none in text or
    JSONB: refused by psycopg (a text parameter) or by the server (a JSON string, SQLSTATE 22P05)."""
    orig = exc.orig
    return isinstance(orig, psycopg.errors.UntranslatableCharacter) or (
        isinstance(orig, psycopg.DataError) and "NUL (0x00)" in str(orig)
    )


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """PostgreSQL unreachable (refused, restarting, a dropped connection): 503 with Retry-After, not
    a 500; a NUL character in a text the request gave: 400 ``invalid_text`` (a 500 before, from a
    job's vocabulary, a search). Other database errors (a bug, a constraint) stay unexpected errors."""
    assert isinstance(exc, DBAPIError)
    if _nul_text(exc):
        message = "a text field holds the NUL character (\\u0000), which no text may hold: remove it"
        return error_response(400, "invalid_text", message, request=request)
    if not (isinstance(exc, OperationalError) or exc.connection_invalidated):
        return await _unexpected_error(request, exc)
    log.warning("%s %s: the database is unavailable: %s", request.method, request.url.path, exc.orig)
    return error_response(
        503,
        "database_unavailable",
        "the database is unavailable; retry shortly",
        {"Retry-After": str(DB_RETRY_AFTER_SECONDS)},
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error", request=request)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(CodedError, _coded_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(Exception, _unexpected_error)
