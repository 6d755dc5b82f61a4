"""The FastAPI application: ``uvicorn api.main:app`` (or ``python -m api``)."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from api import openapi as openapi_doc
from api.errors import install_error_handlers
from api.routes import (
    batches,
    console,
    docs,
    health,
    jobs,
    legacy,
    metrics,
    openai,
    streaming,
    webhooks,
    websocket,
)
from api.routes.health import NAME, version
from api.routes.metrics import HttpMetricsMiddleware
from api.uploads import BodyLimitMiddleware
from shared.platform.settings import get_settings

DESCRIPTION = """\
Transcription of Russian telephone speech with T-one, as jobs: submit a recording (upload or URL),
poll `GET /v1/jobs/{id}` or receive a signed webhook, then fetch the transcript as JSON, text, SRT,
WebVTT or TSV. `POST /v1/audio/transcriptions` is OpenAI's call; `POST /transcribe` is the original
service's. Authenticate with `Authorization: Bearer <key>` or `X-API-Key: <key>`.
Errors always look like `{"error": {"code": "...", "message": "..."}}`.
"""


def create_app() -> FastAPI:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # /docs and /redoc come from api.routes.docs (no CDN: they work on a machine with no internet)
    app = FastAPI(title=NAME, version=version(), description=DESCRIPTION, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    openapi_doc.install(app)
    app.add_middleware(BodyLimitMiddleware, limit=lambda: get_settings().max_upload_bytes)
    app.add_middleware(HttpMetricsMiddleware)
    for module in (
        jobs,
        batches,
        webhooks,
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
