"""``python -m api``: serve the HTTP API with uvicorn on 0.0.0.0:8000 (``--host``/``--port`` to change).

The one way the API is started (``tone-platform up``, the API image, the tests), so its serving
options live here: proxy headers (X-Forwarded-For from a trusted proxy), and no permessage-deflate
on WebSockets: live audio does not compress, and negotiating it (browsers and the ``websockets``
client ask for it) cost the API a twentieth of its CPU at 200 live streams, the client as much again.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m api", description="Serve the tone-platform HTTP API.")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-access-log", action="store_true", help="no line per request in the log")
    args = parser.parse_args(argv)
    uvicorn.run(
        "api.main:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        proxy_headers=True,
        ws_per_message_deflate=False,
        access_log=not args.no_access_log,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
