"""``tone-platform``: the command line. A thin caller of the engine in :mod:`shared.asr`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.asr.errors import ToneError
from shared.asr.formats import FORMATS, render

DEFAULT_CACHE = Path(os.environ.get("TONE_CACHE_DIR", Path.home() / ".cache" / "tone-platform"))


def _load(args: argparse.Namespace) -> Any:
    """The Recognizer the options ask for; a model problem ends the command with exit code 2."""
    from shared.asr.engine import Recognizer

    path = args.model or os.environ.get("TONE_MODEL_PATH") or None
    precision = getattr(args, "precision", None) or os.environ.get("TONE_PRECISION", "auto")
    try:
        return Recognizer.load(
            path, providers=args.provider, threads=args.threads, decoder=args.decoder, precision=precision
        )
    except ToneError as exc:
        print(f"tone-platform: {exc.message} [{exc.code}]", file=sys.stderr)
        raise SystemExit(2) from None


def _progress(path: str) -> Any:
    """A tqdm bar on stderr for long files when stderr is a terminal; else None."""
    if not sys.stderr.isatty():
        return None
    try:
        from shared.asr.audio import probe

        total = probe(path).duration
    except Exception:
        return None
    if total < 60:
        return None
    from tqdm import tqdm

    return tqdm(total=round(total, 1), unit="s", desc=Path(path).name, file=sys.stderr, leave=False)


def _emit(args: argparse.Namespace, name: str, transcript: Any, many: bool) -> None:
    if args.format == "json":
        doc = {"file": name, **transcript.to_dict()} if many else transcript.to_dict()
        print(render("json", transcript.phrases, document=doc))
    else:
        if many:
            print(f"==> {name} <==")
        sys.stdout.write(render(args.format, transcript.phrases, channels=transcript.channels))
    sys.stdout.flush()


def _fail(name: str, exc: Exception, args: argparse.Namespace) -> None:
    code = getattr(exc, "code", "file_not_found" if isinstance(exc, FileNotFoundError) else "error")
    message = getattr(exc, "message", None) or str(exc)
    shown = message if message.startswith(name) else f"{name}: {message}"
    print(f"tone-platform: {shown} [{code}]", file=sys.stderr)
    if args.format == "json":
        print(json.dumps({"file": name, "error": {"code": code, "message": message}}, ensure_ascii=False))


def cmd_transcribe(args: argparse.Namespace) -> int:
    rec = _load(args)
    limits = {"max_duration": args.max_duration, "max_bytes": args.max_bytes}
    many = len(args.files) > 1
    failed = 0
    chunk = int(args.stream_chunk_ms * 8) if args.stream_chunk_ms else None
    if chunk is not None and chunk < 1:
        print("tone-platform: --stream-chunk-ms must be at least 0.125 (one sample)", file=sys.stderr)
        return 2
    if args.batch > 1 and many and not chunk:
        results: dict[int, Any] = {}
        errors: dict[int, Exception] = {}
        next_out = 0
        for index, transcript in rec.transcribe_many(
            args.files, batch=args.batch, channels=args.channels, on_error=errors.__setitem__, **limits
        ):
            results[index] = transcript
            while next_out in results or next_out in errors:  # print in the order given
                if next_out in results:
                    _emit(args, args.files[next_out], results.pop(next_out), many)
                else:
                    failed += 1
                    _fail(args.files[next_out], errors.pop(next_out), args)
                next_out += 1
        for index in range(next_out, len(args.files)):  # an error came after later files' results
            if index in results:
                _emit(args, args.files[index], results.pop(index), many)
                continue
            failed += 1
            _fail(args.files[index], errors.get(index, RuntimeError("not transcribed")), args)
        return 1 if failed else 0
    for name in args.files:
        bar = _progress(name)
        try:
            transcript = rec.transcribe_file(
                name,
                channels=args.channels,
                stream_chunk_samples=chunk,
                progress=(lambda s, b=bar: b.update(round(s, 1) - b.n)) if bar else None,
                **limits,
            )
        except Exception as exc:  # one bad file never stops the others
            failed += 1
            _fail(name, exc, args)
            continue
        finally:
            if bar:
                bar.close()
        _emit(args, name, transcript, many)
    return 1 if failed else 0


def cmd_model_check(args: argparse.Namespace) -> int:
    rec = _load(args)
    model = rec.model
    info = {
        "model": str(model.path),
        "contract": "ok",
        "providers": model.providers,
        "float16_rewritten_to_float32": model.converted,
        "language_model": str(rec.lm_path) if rec.lm_path else None,
        "default_decoder": rec.default_decoder,
    }
    print(json.dumps(info, indent=2))
    return 0


def cmd_make_model(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.kind == "tones":
        from shared.devmodels.tones import build_tone_model

        path = build_tone_model(args.out)
    else:
        from shared.devmodels.cost import build_cost_model

        path = build_cost_model(args.out, seed=args.seed)
    print(
        f"{path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - started:.1f} s)", file=sys.stderr
    )
    print(path)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    import numpy as np
    import soundfile as sf

    from shared.devmodels.tones import synthesize

    audio, expected = synthesize(args.phrases, pause=args.pause)
    if args.stereo_with:
        other, _ = synthesize(args.stereo_with, lead=len(audio) / 8000 + 0.6)
        n = max(len(audio), len(other))
        audio = np.stack([np.pad(audio, (0, n - len(audio))), np.pad(other, (0, n - len(other)))], axis=1)
    sf.write(args.out, audio, 8000, subtype=args.subtype)
    print(json.dumps([e.__dict__ for e in expected], ensure_ascii=False), file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Transcribe a demo recording with T-one, or with the tone test model when T-one can't be had."""
    from shared.asr.engine import Recognizer

    path = args.model or os.environ.get("TONE_MODEL_PATH") or None
    kit = Path(__file__).resolve().parents[1].parent / "shared" / "audio" / "tone_example_short.flac"
    try:
        rec = Recognizer.load(path, threads=args.threads)
        recording = args.file or (str(kit) if kit.is_file() else None)
        if recording is None:
            print("tone-platform: give a recording to transcribe: make run FILE=path", file=sys.stderr)
            return 2
        print(f"T-one model: {rec.model.path}\nrecording: {recording}", file=sys.stderr)
    except ToneError as exc:
        print(f"tone-platform: {exc.message} [{exc.code}]", file=sys.stderr)
        from shared.devmodels.tones import build_tone_model, synthesize

        print(
            "\nFalling back to the project's tone test model (NOT T-one: it hears pure tones, not speech)"
            " on a synthesized recording, so that you can see the pipeline work.\n",
            file=sys.stderr,
        )
        import soundfile as sf

        demo_dir = DEFAULT_CACHE / "demo"
        model = build_tone_model(demo_dir / "tones")
        audio, _ = synthesize(["здравствуйте вы позвонили в банк", "чем я могу вам помочь"])
        recording = str(demo_dir / "demo.wav")
        sf.write(recording, audio, 8000, subtype="ULAW")
        rec = Recognizer.load(model, threads=args.threads)
        print(f"test model: {model}\nrecording: {recording} (8 kHz u-law WAV)", file=sys.stderr)
    transcript = rec.transcribe_file(recording)
    print(json.dumps(transcript.to_dict(), ensure_ascii=False, indent=2))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from shared.bench import run_bench

    return run_bench(args)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", help="model.onnx or a directory with model.onnx [kenlm.bin] (env TONE_MODEL_PATH)"
    )
    p.add_argument(
        "--provider", default="auto", help="auto (CUDA when available), cpu, cuda (env TONE_PROVIDER)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)"
    )
    p.add_argument("--decoder", choices=["auto", "greedy", "beam"], default="auto",
                   help="auto: beam search when kenlm.bin and kenlm are present, else greedy")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tone-platform", description="T-one transcription platform")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("transcribe", help="transcribe recordings, one result per file on stdout")
    p.add_argument("files", nargs="+", metavar="FILE")
    _model_args(p)
    p.add_argument("--channels", choices=["mix", "split"], default="mix",
                   help="mix to mono, or split: each channel (agent, client) its own stream")  # fmt: skip
    p.add_argument("--format", choices=FORMATS, default="json")
    p.add_argument("--stream-chunk-ms", type=float, default=None, metavar="N",
                   help="feed the audio through the streaming path in pieces of N ms")  # fmt: skip
    p.add_argument("--batch", type=int, default=16, metavar="N",
                   help="streams advanced together per model call when several files are given")  # fmt: skip
    p.add_argument("--max-duration", type=float, default=None, metavar="SECONDS")
    p.add_argument("--max-bytes", type=int, default=None, metavar="BYTES")
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("model", help="model utilities")
    msub = p.add_subparsers(dest="model_command", required=True, metavar="SUBCOMMAND")
    p = msub.add_parser("check", help="load the model, check its contract, print what was found")
    _model_args(p)
    p.set_defaults(func=cmd_model_check)

    p = sub.add_parser("demo", help="transcribe a demo recording (make run)")
    p.add_argument("file", nargs="?")
    p.add_argument("--model")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="engine benchmark on the cost-faithful model (make bench)")
    p.add_argument("--model", help="model to benchmark (default: build the cost-faithful model)")
    p.add_argument("--batches", default="1,8,16,32,64", help="stream counts to advance together")
    p.add_argument("--precisions", default="float16,float32",
                   help="precisions to compare (float16: the file as is; float32: rewritten)")  # fmt: skip
    p.add_argument("--min-seconds", type=float, default=4.0, help="measure each point this long")
    p.add_argument("--max-steps", type=int, default=30)
    p.add_argument("--platform-recordings", type=int, default=16,
                   help="then submit this many recordings at once to a new stack (0: skip)")  # fmt: skip
    p.add_argument("--platform-seconds", type=float, default=30.0, help="length of each of those recordings")
    p.add_argument("--platform-batch", type=int, default=16, help="the worker's batch (TONE_WORKER_BATCH)")
    p.add_argument(
        "--stream-counts", default="1,4,8,16,32", help="live streams to simulate, rising ('' skips)"
    )
    p.add_argument("--stream-seconds", type=float, default=6.0, help="how long each simulated stream talks")
    p.add_argument("--batch-run", type=int, default=32, metavar="N",
                   help="then one archive of N recordings as one batch to a new stack (0: skip)")  # fmt: skip
    p.add_argument("--batch-run-seconds", type=float, default=30.0, help="length of each of those recordings")
    p.add_argument("--batch-only", action="store_true",
                   help="only the batch run (after the engine at B=16 and 32, for its ratio)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--provider", default="auto")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("dev", help="developer tools: test models and test audio")
    dsub = p.add_subparsers(dest="dev_command", required=True, metavar="SUBCOMMAND")
    p = dsub.add_parser("make-model", help="build a model of T-one's contract")
    p.add_argument("--kind", choices=["tones", "cost"], required=True,
                   help="tones: hears synthesized tones; cost: T-one's compute, random weights")  # fmt: skip
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
    from shared.batch_cli import register as register_batch
    from shared.platform_cli import register

    register(sub)
    register_batch(sub)
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
