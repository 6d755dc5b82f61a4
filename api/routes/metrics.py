"""``GET /metrics``: Prometheus, protected, and the API's HTTP metrics per route.

What it shows: the platform's counters and histograms (``shared.platform.metrics``: jobs finished by
status, audio seconds processed, queue wait, job latency, live piece latency), updated by the workers
and the API when things happen and read back from Redis; the depth of every queue; and the API
processes' requests per route template (``tone_http_requests_total{method,route,status}``,
``tone_http_request_duration_seconds{method,route}``; all the processes of one ``python -m api``).

Who may read it: with ``TONE_METRICS_TOKEN`` set, a scraper sending ``Authorization: Bearer <token>``
(Prometheus' ``authorization`` setting); without it, only clients on this machine (loopback). Anyone
else gets 401 ``unauthorized`` (or 403 ``forbidden``).
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Iterator
from ipaddress import ip_address
from typing import Any

import redis
from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import SettingsDep, redis_for
from api.errors import ApiError
from api.services import live
from shared.platform import metrics as platform_metrics
from shared.platform.settings import Settings, get_settings
from shared.queue import EVENTS_QUEUE, QUEUES, live_queue

log = logging.getLogger("api.metrics")
router = APIRouter(tags=["service"])
PRIORITY_STEPS = range(10)


def queue_depth(client: redis.Redis, queue: str) -> int:
    """Messages waiting in a Celery queue on Redis (one list per priority step)."""
    names = [queue if p == 0 else f"{queue}:{p}" for p in PRIORITY_STEPS]
    pipe = client.pipeline()
    for name in names:
        pipe.llen(name)
    return sum(int(n) for n in pipe.execute())


class PlatformCollector(Collector):
    """Read at each scrape from Redis (a few hashes and list lengths; never the jobs table)."""

    def collect(self) -> Iterator[Metric]:
        settings = get_settings()
        client = redis_for(settings.redis_url)
        try:
            families = list(platform_metrics.collect(client))
            depth = GaugeMetricFamily("tone_queue_depth", "Messages waiting per queue", labels=["queue"])
            for queue in (*QUEUES, *(live_queue(q) for q in QUEUES), EVENTS_QUEUE):
                depth.add_metric([queue], float(queue_depth(client, queue)))
        except redis.RedisError as exc:
            log.warning("metrics: broker: %s", exc)
            return
        yield from families
        yield depth


REGISTRY = CollectorRegistry()
REGISTRY.register(PlatformCollector())
HTTP_REQUESTS = Counter(
    "tone_http_requests",
    "HTTP requests answered by this API (all its processes), by route template",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_SECONDS = Histogram(
    "tone_http_request_duration_seconds",
    "Seconds to answer an HTTP request, by route template (streamed bodies: to the last byte)",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0),
    registry=REGISTRY,
)


class HttpMetricsMiddleware:
    """Counts each HTTP request under its route's template (``/v1/jobs/{job_id}``, never the id, so
    the label set stays small); requests that match no route count as ``unmatched``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = str(scope.get("method", ""))
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_SECONDS.labels(method, route).observe(time.perf_counter() - started)


def _allowed(request: Request, settings: Settings) -> None:
    token = settings.metrics_token
    if token:
        scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(
                401,
                "unauthorized",
                "metrics need Authorization: Bearer <TONE_METRICS_TOKEN>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return
    host = request.client.host if request.client else ""
    try:
        local = ip_address(host).is_loopback
    except ValueError:
        local = False
    if not local:
        raise ApiError(403, "forbidden", "metrics are served to this machine only; set TONE_METRICS_TOKEN")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        401: {"description": "TONE_METRICS_TOKEN is set and the request does not carry it"},
        403: {"description": "no TONE_METRICS_TOKEN and the client is not on this machine"},
    },
)
def metrics(request: Request, settings: SettingsDep) -> Any:
    _allowed(request, settings)
    live.flush_piece_metrics(redis_for(settings.redis_url))  # this process's tally, before reading
    return Response(generate_latest(_registry()), media_type=CONTENT_TYPE_LATEST)


def _registry() -> CollectorRegistry:
    """The registry to scrape: with several API processes on one port (``python -m api`` sets
    ``PROMETHEUS_MULTIPROC_DIR``), the HTTP counts of all of them, from prometheus_client's files,
    beside the platform's own (those live in Redis and are the same from any process)."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(PlatformCollector())
    return registry
