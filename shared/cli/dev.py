"""``tone-platform dev``: build the test models, synthesize test audio."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from shared.asr.types import SAMPLE_RATE


def cmd_make_model(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.kind == "tones":
        from shared.dev.models.tones import build_tone_model

        path = build_tone_model(args.out)
    elif args.kind == "null":
        from shared.dev.models.null import build_null_model

        path = build_null_model(args.out)
    else:
        from shared.dev.models.cost import build_cost_model

        path = build_cost_model(args.out, seed=args.seed)
    print(
        f"{path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - started:.1f} s)", file=sys.stderr
    )
    print(path)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    import numpy as np
    import soundfile as sf

    from shared.dev.models.tones import synthesize

    try:
        audio, expected = synthesize(args.phrases, pause=args.pause)
        other = (
            synthesize(args.stereo_with, lead=len(audio) / SAMPLE_RATE + 0.6)[0] if args.stereo_with else None
        )
    except ValueError as exc:
        print(f"tone-platform dev synth: {exc}", file=sys.stderr)
        return 2
    if other is not None:
        n = max(len(audio), len(other))
        audio = np.stack([np.pad(audio, (0, n - len(audio))), np.pad(other, (0, n - len(other)))], axis=1)
    sf.write(args.out, audio, SAMPLE_RATE, subtype=args.subtype)
    print(json.dumps([e.__dict__ for e in expected], ensure_ascii=False), file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("dev", help="developer tools: test models and test audio")
    dsub = p.add_subparsers(dest="dev_command", required=True, metavar="SUBCOMMAND")
    p = dsub.add_parser("make-model", help="build a model of T-one's contract")
    p.add_argument("--kind", choices=["tones", "null", "cost"], required=True,
                   help="tones: hears synthesized tones; null: the model taken out (state passes through); "
                        "cost: T-one's compute, random weights")  # fmt: skip
    p.add_argument("--out", required=True, help="directory (model.onnx is written inside) or .onnx path")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_model)
    p = dsub.add_parser("synth", help="synthesize a recording that the tones model transcribes")
    p.add_argument("phrases", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--pause", type=float, default=1.2)
    p.add_argument("--subtype", default="PCM_16", help="libsndfile subtype, e.g. PCM_16, ULAW, ALAW, GSM610")
    p.add_argument("--stereo-with", nargs="+", metavar="PHRASE", help="a second channel, after the first")
    p.set_defaults(func=cmd_synth)
