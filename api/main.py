"""The FastAPI application: ``uvicorn api.main:app`` (or ``python -m api``)."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from api.errors import install_error_handlers
from api.routes import batches, console, health, jobs, legacy, openai, search, streaming, websocket
from api.routes.health import NAME, version
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
    app = FastAPI(title=NAME, version=version(), description=DESCRIPTION)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, limit=lambda: get_settings().max_upload_bytes)
    for module in (jobs, batches, search, openai, legacy, streaming, websocket, health, console):
        app.include_router(module.router)
    return app


app = create_app()
