"""Logs: text (the default) or one JSON object per line (``TONE_LOG_FORMAT=json``), and the request id
that follows a request from the API into the worker's lines and the webhook's payload.

The API takes a caller's ``X-Request-ID`` (or makes ``req_<hex>``), answers it in the same header and
keeps it in :data:`request_id` while it handles the request; a job stores it (``options.request_id``)
and a task sent meanwhile carries it as a message header, so the worker's lines about that job name it.
A JSON line holds ``time``, ``level``, ``logger``, ``message`` and, when known, ``request_id``,
``job_id`` and ``exc``.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections import OrderedDict
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

HEADER = "X-Request-ID"
_VALID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(request_suffix)s"
# loggers that servers configure with handlers of their own (uvicorn's, Celery's)
SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task")


_JOBS: OrderedDict[str, str] = OrderedDict()  # job id -> the request id that made it (a worker's recent)
_JOBS_KEPT = 10_000


def remember_job(job_id: str, rid: str | None) -> None:
    """A worker took a job: its lines will name the job's request id."""
    if rid:
        _JOBS[job_id] = rid
        _JOBS.move_to_end(job_id)
        while len(_JOBS) > _JOBS_KEPT:
            _JOBS.popitem(last=False)


def job_request_id(job_id: str) -> str | None:
    return _JOBS.get(job_id)


def accept_or_make(given: str | None) -> str:
    """The caller's request id when it is a sane token (letters, digits, ``._:-``, ≤ 128), else a new one."""
    if given and _VALID.match(given):
        return given
    return f"req_{uuid.uuid4().hex}"


class RequestIdFilter(logging.Filter):
    """Puts ``request_id`` (the record's own, else the current one) and ``request_suffix`` on records."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = getattr(record, "request_id", None) or request_id.get()
        record.request_id = rid
        record.request_suffix = f" [request_id={rid}]" if rid else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid:
            line["request_id"] = rid
        job = getattr(record, "job_id", None)
        if job and job != "-":
            line["job_id"] = job
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def install(handler: logging.Handler, log_format: str) -> None:
    """Give a handler our filter and, for ``json``, our formatter (text keeps the server's own)."""
    if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
        handler.addFilter(RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())


def configure(log_format: str, level: int = logging.INFO) -> None:
    """The root logger (a stderr handler if it has none) and the servers' own handlers, in one format."""
    root = logging.getLogger()
    if not root.handlers:
        stderr = logging.StreamHandler()
        stderr.setFormatter(formatter(log_format))
        root.addHandler(stderr)
        root.setLevel(level)
    for logger in (root, *(logging.getLogger(n) for n in SERVER_LOGGERS)):
        for handler in logger.handlers:
            install(handler, log_format)
