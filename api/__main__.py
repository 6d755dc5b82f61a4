"""``python -m api``: serve the HTTP API with uvicorn on 0.0.0.0:8000 (``--host``/``--port`` to change)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m api", description="Serve the tone-platform HTTP API.")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    uvicorn.run("api.main:app", host=args.host, port=args.port, workers=args.workers, proxy_headers=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
