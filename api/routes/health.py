"""Service info (``GET /``) and readiness (``GET /health``); ``/metrics`` is :mod:`api.routes.metrics`.

These need no API key: load balancers, orchestrators and Prometheus call them. An anonymous
``/health`` says only ``status`` (ok | degraded | unavailable, and 503 when unavailable); the
details (database, broker, workers, readers per queue, the model's name — never its path) need a
valid API key or ``TONE_SCRAPE_TOKEN`` (``Authorization: Bearer`` or ``X-API-Key``).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from pathlib import Path
from typing import Any

import redis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import RedisDep, SettingsDep, presented_key
from api.schemas import HealthOut, ServiceInfo
from shared.db.session import engine_for, sessionmaker_for
from shared.platform.keys import verify_key
from shared.platform.model_status import model_health
from shared.platform.settings import Settings
from shared.queue import EVENTS_QUEUE, live_queue
from shared.queue import client as celery_client

log = logging.getLogger("api.health")
router = APIRouter(tags=["service"])

NAME = "tone-platform"
WORKERS_CACHE_SECONDS = 5.0
PRIORITY_STEPS = range(10)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version(NAME)
    except PackageNotFoundError:
        return "0.0.0"


def model_name(settings: Settings) -> str:
    """The model as people know it: its folder or file name, never the server's path."""
    if not settings.model_path:
        return "t-tech/T-one (Hugging Face)"
    path = Path(settings.model_path)
    return path.parent.name if path.name == "model.onnx" and path.parent.name else path.name


def sees_details(request: Request, settings: Settings) -> bool:
    """Whether the caller may see /health's details: the scrape token or a valid API key."""
    if settings.auth_disabled:
        return True
    key = presented_key(request)
    if key is None:
        return False
    if settings.scrape_token and hmac.compare_digest(key.encode(), settings.scrape_token.encode()):
        return True
    try:
        with sessionmaker_for(settings.database_url)() as db:
            return verify_key(db, key) is not None
    except Exception:
        return False


@router.get("/", response_model=ServiceInfo, summary="What this service is")
def service_info() -> ServiceInfo:
    return ServiceInfo(
        name=NAME, version=version(), docs="/docs", redoc="/redoc", openapi="/openapi.json", health="/health"
    )


def _database_ok(settings: Settings) -> bool:
    try:
        with engine_for(settings.database_url).connect() as conn:
            conn.execute(text("SET LOCAL statement_timeout = 1000"))
            conn.execute(text("SELECT 1"))
        return True
    except Exception as exc:
        log.warning("health: database: %s", exc)
        return False


def _broker_ok(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError as exc:
        log.warning("health: broker: %s", exc)
        return False


WORKERS_KEY = "tone:health:workers"


class _Workers:
    """Celery workers answering, and how many read each queue (``active_queues``: one broadcast,
    replies within 1 s), asked at most every few seconds. The answer is kept in Redis for that
    long, not in the process: every API process (``TONE_API_WORKERS``) then tells the same, where
    one that had asked before the workers were up said "degraded" while another said "ok"."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __call__(self, r: redis.Redis) -> tuple[int, dict[str, int]]:
        with self._lock:
            try:
                kept = r.get(WORKERS_KEY)
                if kept is not None:
                    seen = json.loads(kept)
                    return int(seen["workers"]), {str(k): int(v) for k, v in seen["readers"].items()}
            except (redis.RedisError, ValueError, KeyError, TypeError, AttributeError) as exc:
                log.warning("health: kept workers: %s", exc)
            workers, readers = self._ask()
            try:
                value = json.dumps({"workers": workers, "readers": readers})
                r.set(WORKERS_KEY, value, px=int(WORKERS_CACHE_SECONDS * 1000))
            except redis.RedisError as exc:
                log.warning("health: workers not kept: %s", exc)
            return workers, readers

    @staticmethod
    def _ask() -> tuple[int, dict[str, int]]:
        try:
            replies = celery_client().control.inspect(timeout=1.0).active_queues() or {}
        except Exception as exc:
            log.warning("health: workers: %s", exc)
            return 0, {}
        readers: dict[str, int] = {}
        for queues in replies.values():
            for queue in queues or []:
                readers[queue["name"]] = readers.get(queue["name"], 0) + 1
        return len(replies), readers


workers_seen = _Workers()


@router.get(
    "/livez",
    summary="Liveness: the process answers",
    description='200 `{"status": "ok"}` whenever this API process can answer at all; it checks '
    "nothing else (an orchestrator restarts the process when this fails).",
    responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}},
)
def livez() -> dict[str, str]:
    return {"status": "ok"}


def readiness(settings: Settings, client: redis.Redis) -> tuple[bool, dict[str, Any]]:
    """``(ready, checks)``: the database, Redis, the model and a reader on each queue this API sends to."""
    db_ok, broker_ok = _database_ok(settings), _broker_ok(client)
    _, readers = workers_seen(client) if broker_ok else (0, {})
    roles = {
        q: readers.get(q, 0) for q in (settings.worker_queue, live_queue(settings.worker_queue), EVENTS_QUEUE)
    }
    model_state, model_error = model_health(settings, client if broker_ok else None)
    checks: dict[str, Any] = {
        "database": "ok" if db_ok else "down",
        "redis": "ok" if broker_ok else "down",
        "model": model_state if model_error is None else f"{model_state}: {model_error}",
        "queues": {q: ("ok" if n else "no reader") for q, n in roles.items()},
    }
    ready = db_ok and broker_ok and model_state == "ok" and all(roles.values())
    return ready, checks


@router.get(
    "/readyz",
    summary="Readiness: database, Redis, model, a reader on every queue",
    description="200 when this API can take work that will be done: the database and Redis answer, "
    "the model is there, and each queue it sends to (transcription, live, events) has a worker "
    "reading it; else 503. `checks` says which part is missing. Load balancers and compose use it.",
    responses={
        200: {
            "content": {"application/json": {"example": {"status": "ready", "checks": {"database": "ok"}}}}
        },
        503: {
            "content": {"application/json": {"example": {"status": "not_ready", "checks": {"redis": "down"}}}}
        },
    },
)
def readyz(settings: SettingsDep, client: RedisDep) -> JSONResponse:
    ready, checks = readiness(settings, client)
    body = {"status": "ready" if ready else "not_ready", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/health",
    response_model=HealthOut,
    summary="Readiness: database, broker, workers",
    responses={503: {"model": HealthOut, "description": "the database or the broker is down"}},
)
def health(request: Request, settings: SettingsDep, client: RedisDep) -> JSONResponse:
    db_ok, broker_ok = _database_ok(settings), _broker_ok(client)
    workers, readers = workers_seen(client) if broker_ok else (0, {})
    # the roles this API sends work to (worker/celery_app.py), each with the workers reading it
    roles = {
        q: readers.get(q, 0) for q in (settings.worker_queue, live_queue(settings.worker_queue), EVENTS_QUEUE)
    }
    model_state, model_error = model_health(settings, client if broker_ok else None)
    if not (db_ok and broker_ok):
        status, code = "unavailable", 503
    else:
        status, code = ("ok" if all(roles.values()) and model_state == "ok" else "degraded"), 200
    if not sees_details(request, settings):
        return JSONResponse({"status": status}, status_code=code)
    body = HealthOut(
        status=status,
        model=model_name(settings),
        model_status=model_state,
        model_error=model_error,
        database="ok" if db_ok else "down",
        broker="ok" if broker_ok else "down",
        workers=workers,
        queues=roles,
    )
    return JSONResponse(body.model_dump(), status_code=code)
