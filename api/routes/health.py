"""Service info (``GET /``), readiness (``GET /health``) and Prometheus metrics (``GET /metrics``).

These need no API key: load balancers, orchestrators and Prometheus call them. An anonymous
``/health`` says only ``status`` (ok | degraded | unavailable, and 503 when unavailable); the
details (database, broker, workers, readers per queue, the model's name — never its path) need a
valid API key or ``TONE_SCRAPE_TOKEN`` (``Authorization: Bearer`` or ``X-API-Key``).
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text

from api.deps import RedisDep, SettingsDep, presented_key, redis_for
from api.schemas import HealthOut, ServiceInfo
from shared.db.models import JOB_STATUSES, Job
from shared.db.session import engine_for, sessionmaker_for
from shared.platform.keys import verify_key
from shared.platform.settings import Settings, get_settings
from shared.queue import EVENTS_QUEUE, QUEUES, client, live_queue

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


class _Workers:
    """Celery workers answering, and how many read each queue (``active_queues``: one broadcast,
    replies within 1 s), asked at most every few seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = -1e9
        self._seen: tuple[int, dict[str, int]] = (0, {})

    def __call__(self) -> tuple[int, dict[str, int]]:
        with self._lock:
            if time.monotonic() - self._at > WORKERS_CACHE_SECONDS:
                self._seen = self._ask()
                self._at = time.monotonic()
            return self._seen

    @staticmethod
    def _ask() -> tuple[int, dict[str, int]]:
        try:
            replies = client().control.inspect(timeout=1.0).active_queues() or {}
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
    "/health",
    response_model=HealthOut,
    summary="Readiness: database, broker, workers",
    responses={503: {"model": HealthOut, "description": "the database or the broker is down"}},
)
def health(request: Request, settings: SettingsDep, client: RedisDep) -> JSONResponse:
    db_ok, broker_ok = _database_ok(settings), _broker_ok(client)
    workers, readers = workers_seen() if broker_ok else (0, {})
    # the roles this API sends work to (worker/celery_app.py), each with the workers reading it
    roles = {
        q: readers.get(q, 0) for q in (settings.worker_queue, live_queue(settings.worker_queue), EVENTS_QUEUE)
    }
    if not (db_ok and broker_ok):
        status, code = "unavailable", 503
    else:
        status, code = ("ok" if all(roles.values()) else "degraded"), 200
    if not sees_details(request, settings):
        return JSONResponse({"status": status}, status_code=code)
    body = HealthOut(
        status=status,
        model=model_name(settings),
        database="ok" if db_ok else "down",
        broker="ok" if broker_ok else "down",
        workers=workers,
        queues=roles,
    )
    return JSONResponse(body.model_dump(), status_code=code)


# -- metrics ----------------------------------------------------------------------------------------


def queue_depth(client: redis.Redis, queue: str) -> int:
    """Messages waiting in a Celery queue on Redis (one list per priority step)."""
    names = [queue if p == 0 else f"{queue}:{p}" for p in PRIORITY_STEPS]
    pipe = client.pipeline()
    for name in names:
        pipe.llen(name)
    return sum(int(n) for n in pipe.execute())


class PlatformCollector(Collector):
    """Read at each scrape from Postgres and Redis, so every API replica reports the same numbers."""

    def collect(self) -> Iterator[Metric]:
        settings = get_settings()
        yield from self._jobs(settings)
        yield from self._queues(settings)

    def _jobs(self, settings: Settings) -> Iterator[Metric]:
        try:
            with sessionmaker_for(settings.database_url)() as db:
                by_status = dict(db.execute(select(Job.status, func.count()).group_by(Job.status)).all())
                audio, busy, done = db.execute(
                    select(
                        func.coalesce(func.sum(Job.duration), 0.0),
                        func.coalesce(func.sum(Job.processing_seconds), 0.0),
                        func.count(),
                    ).where(Job.status == "completed")
                ).one()
        except Exception as exc:
            log.warning("metrics: database: %s", exc)
            return
        jobs = GaugeMetricFamily("tone_jobs", "Jobs by status", labels=["status"])
        for status in JOB_STATUSES:
            jobs.add_metric([status], float(by_status.get(status, 0)))
        yield jobs
        yield GaugeMetricFamily(
            "tone_audio_seconds_processed", "Audio seconds of completed jobs", value=float(audio or 0)
        )
        yield GaugeMetricFamily(
            "tone_processing_seconds", "Worker seconds spent on completed jobs", value=float(busy or 0)
        )
        yield GaugeMetricFamily("tone_jobs_completed", "Completed jobs (still stored)", value=float(done))
        yield GaugeMetricFamily(
            "tone_real_time_factor",
            "Processing seconds per audio second over completed jobs (lower is faster)",
            value=float(busy or 0) / float(audio) if audio else 0.0,
        )

    def _queues(self, settings: Settings) -> Iterator[Metric]:
        depth = GaugeMetricFamily("tone_queue_depth", "Messages waiting per queue", labels=["queue"])
        try:
            client = redis_for(settings.redis_url)
            for queue in (*QUEUES, *(live_queue(q) for q in QUEUES), EVENTS_QUEUE):
                depth.add_metric([queue], float(queue_depth(client, queue)))
        except redis.RedisError as exc:
            log.warning("metrics: broker: %s", exc)
            return
        yield depth


REGISTRY = CollectorRegistry()
REGISTRY.register(PlatformCollector())


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(_: Request) -> Any:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
