"""``tone-platform up`` and ``down``: the whole platform on this machine (:mod:`shared.localstack`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from shared.localstack.supervisor import HEALTH_TIMEOUT, UpError, down, up


def cmd_up(args: argparse.Namespace) -> int:
    try:
        return up(
            detach=args.detach,
            host=args.host,
            port=args.port,
            flower_port=args.flower_port,
            workers=args.workers,
            health_timeout=args.timeout,
            background=args.background,
        )
    except UpError as exc:
        print(f"tone-platform up: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from shared.localstack.servers import StackError

        if isinstance(exc, StackError):
            print(f"tone-platform up: {exc}", file=sys.stderr)
            return 1
        raise


def cmd_down(args: argparse.Namespace) -> int:
    try:
        return down()
    except UpError as exc:
        print(f"tone-platform down: {exc}", file=sys.stderr)
        return 1


def register(sub: Any) -> None:
    p = sub.add_parser(
        "up",
        help="run the whole platform on this machine: Postgres, Redis, migrations, API, worker, beat, Flower",
        description=(
            "Brings the stack up without Docker. DATABASE_URL / REDIS_URL, when set, name the servers to "
            "use; otherwise local ones are started under TONE_DATA_DIR (default .data). Logs go to "
            "TONE_DATA_DIR/logs. Foreground by default: Ctrl-C stops everything it started."
        ),
    )
    p.add_argument(
        "--detach", action="store_true", help="start in the background, return once /health is 200"
    )
    p.add_argument("--host", default="127.0.0.1", help="address for the API and Flower (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="the API's port (default 8000)")
    p.add_argument("--flower-port", type=int, default=5555, help="Flower's port (default 5555)")
    p.add_argument("--workers", type=int, default=1, help="Celery worker processes, -c N (default 1)")
    p.add_argument(
        "--timeout", type=float, default=HEALTH_TIMEOUT, help="seconds to wait for /health (default 120)"
    )
    p.add_argument("--background", action="store_true", help=argparse.SUPPRESS)  # the --detach supervisor
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("down", help="stop everything `tone-platform up` started (from TONE_DATA_DIR/up.json)")
    p.set_defaults(func=cmd_down)
