"""``python -m api``: serve the HTTP API with uvicorn on 0.0.0.0:8000 (``--host``/``--port`` to change).

The one way the API is started (``tone-platform up``, the API image, the tests), so its serving
options live here: proxy headers (X-Forwarded-For from a trusted proxy), and no permessage-deflate
on WebSockets: live audio does not compress, and negotiating it (browsers and the ``websockets``
client ask for it) cost the API a twentieth of its CPU at 200 live streams, the client as much again;
and its processes: ``--workers`` / ``TONE_API_WORKERS`` (unset: 1), with
Prometheus' multiprocess mode so that ``/metrics`` adds up every process's counts.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import tempfile
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def default_workers() -> int:
    """``TONE_API_WORKERS``, else 1 (2 processes on 2 cores measured better tails, but the
    database outage test failed once with them in a full run: not the default until that is
    understood)."""
    from shared.platform.settings import get_settings

    configured = get_settings().api_workers
    return configured if configured is not None else 1


def log_config() -> dict[str, Any]:
    """uvicorn's logging, with every line one JSON object under ``TONE_LOG_FORMAT=json``: the
    parent of several processes logs too (the application configures each process's own)."""
    from uvicorn.config import LOGGING_CONFIG

    from shared.platform.settings import get_settings

    config = copy.deepcopy(LOGGING_CONFIG)
    if get_settings().log_format == "json":
        config["formatters"] = {
            name: {"()": "shared.platform.logs.JsonFormatter"} for name in config["formatters"]
        }
    return config


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m api", description="Serve the tone-platform HTTP API.")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--workers", type=int, default=None, help="processes (default: TONE_API_WORKERS, else 1)"
    )
    parser.add_argument("--no-access-log", action="store_true", help="no line per request in the log")
    args = parser.parse_args(argv)
    workers = args.workers if args.workers is not None else default_workers()
    if workers < 1:
        parser.error("--workers must be at least 1")
    # Several processes answer on one port, so /metrics must count every process's requests
    # whichever one a scrape reaches: prometheus_client's multiprocess mode, in a folder of our own
    # (emptied now: counts of an earlier run must not add up) unless the environment names one.
    made = None
    if workers > 1 and not os.environ.get(MULTIPROC_ENV):
        made = tempfile.mkdtemp(prefix="tone-api-metrics-")
        os.environ[MULTIPROC_ENV] = made
    try:
        uvicorn.run(
            "api.main:app",
            host=args.host,
            port=args.port,
            workers=workers,
            proxy_headers=True,
            ws_per_message_deflate=False,
            access_log=not args.no_access_log,
            log_config=log_config(),
        )
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
