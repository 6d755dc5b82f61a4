"""``tone-platform``: the command line. Every command group has its module; they are registered here,
in one place. Each is a thin caller: the engine (:mod:`shared.asr`), the platform's API, the local stack."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from shared.cli import batch, bench, dev, keys, transcribe, up

# the command groups, in the order `tone-platform --help` lists them
GROUPS = (transcribe, batch, keys, up, bench, dev)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("tone-platform")
    except PackageNotFoundError:
        return "0.0.0"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tone-platform",
        description="T-one transcription platform. Exit codes: 0 done, 1 some input failed, "
        "2 usage (or a server error in batch), 3 model error, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"tone-platform {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "provider", None) == "auto" and os.environ.get("TONE_PROVIDER"):
        args.provider = os.environ["TONE_PROVIDER"]
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
