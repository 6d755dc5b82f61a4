"""The FastAPI application: ``uvicorn api.main:app`` (or ``python -m api``)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.telemetry import TelemetryConfig

from api import openapi as openapi_doc
from api.errors import install_error_handlers
from api.request_id import RequestIdMiddleware
from api.routes import (
    batches,
    console,
    docs,
    health,
    jobs,
    legacy,
    metrics,
    openai,
    search,
    streaming,
    vocabulary,
    webhooks,
    websocket,
)
from api.routes.health import NAME, version
from api.routes.metrics import HttpMetricsMiddleware
from api.services import batch_intake
from api.uploads import BodyLimitMiddleware
from shared.platform import gctune, logs
from shared.platform.settings import get_settings

DESCRIPTION = """\
Transcription of Russian telephone speech with T-one, as jobs: submit a recording (upload or URL),
poll `GET /v1/jobs/{id}` or receive a signed webhook, then fetch the transcript as JSON, text, SRT,
WebVTT or TSV. `POST /v1/audio/transcriptions` is OpenAI's call; `POST /transcribe` is the original
service's. Authenticate with `Authorization: Bearer <key>` or `X-API-Key: <key>`.
Errors always look like `{"error": {"code": "...", "message": "..."}}`.
"""


def telemetry() -> TelemetryConfig | None:
    """FastAPI's own OpenTelemetry where the environment sets OpenTelemetry up (any ``OTEL_*``
    variable, as ``opentelemetry-instrument`` and the OTLP exporters read, or
    ``FASTAPI_OTEL_AUTO_CONFIGURE=true``), else off: left on with no provider, FastAPI asks for one
    on every request, a twentieth of the API's CPU on a live piece."""
    if os.getenv("FASTAPI_OTEL_AUTO_CONFIGURE", "").lower() == "true" or any(
        k.startswith("OTEL_") for k in os.environ
    ):
        return None
    return {"tracing": False, "metrics": False, "logs": False}


def warm_up() -> None:
    """What a fresh API process's first requests paid before (py-spy, the first batch upload): the
    ORM's mapper configuration (~40 ms) and the audio readers' import (~50 ms; the API probes
    uploads with them, where they are installed: an API without them skips the probe)."""
    from sqlalchemy.orm import configure_mappers

    importlib.import_module("shared.db.models")  # every mapped class, before they are configured
    configure_mappers()
    with contextlib.suppress(ImportError, OSError):  # soundfile without libsndfile: OSError
        importlib.import_module("shared.asr.audio")


@contextlib.asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    await run_in_threadpool(warm_up)
    gctune.tune()
    gctune.freeze()  # what startup built is left out of every later collection
    sweeps = asyncio.create_task(batch_intake.sweeps(get_settings()))
    try:
        yield
    finally:
        sweeps.cancel()
        batch_intake.stop_readers()


def create_app() -> FastAPI:
    logs.configure(get_settings().log_format)
    # /docs and /redoc come from api.routes.docs (no CDN: they work on a machine with no internet)
    app = FastAPI(
        title=NAME,
        version=version(),
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        telemetry=telemetry(),
        lifespan=lifespan,
    )
    install_error_handlers(app)
    openapi_doc.install(app)
    app.add_middleware(BodyLimitMiddleware, limit=lambda: get_settings().max_upload_bytes)
    app.add_middleware(HttpMetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)  # outermost: every answer, errors too, carries the id
    for module in (
        jobs,
        batches,
        webhooks,
        vocabulary,
        search,
        openai,
        legacy,
        streaming,
        websocket,
        health,
        metrics,
        console,
        docs,
    ):
        app.include_router(module.router)
    return app


app = create_app()
