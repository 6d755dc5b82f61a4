"""``tone-platform transcribe``, ``model check`` and ``demo``: the engine from the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from shared.asr.errors import ToneError
from shared.asr.formats import FORMATS, render
from shared.asr.types import LABELS, SAMPLE_RATE, Phrase, Word

EXIT_USAGE = 2  # bad arguments (argparse's own code)
EXIT_MODEL = 3  # no model, or one that breaks T-one's contract
DEFAULT_CACHE = Path(os.environ.get("TONE_CACHE_DIR", Path.home() / ".cache" / "tone-platform"))


def _load(args: argparse.Namespace) -> Any:
    """The Recognizer the options ask for; a model problem ends the command with exit code 3."""
    from shared.asr.engine import Recognizer

    path = args.model or os.environ.get("TONE_MODEL_PATH") or None
    precision = getattr(args, "precision", None) or os.environ.get("TONE_PRECISION", "auto")
    try:
        return Recognizer.load(
            path, providers=args.provider, threads=args.threads, decoder=args.decoder, precision=precision
        )
    except ToneError as exc:
        print(f"tone-platform: {exc.message} [{exc.code}]", file=sys.stderr)
        raise SystemExit(EXIT_MODEL) from None


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


def _text_options(args: argparse.Namespace) -> Any:
    """The written-form options of the command line; a bad value ends the command with exit code 2."""
    from shared.text.options import TextOptionError, parse_text_options

    try:
        return parse_text_options(
            {
                "normalize": args.normalize,
                "redact": args.redact,
                "replacements": args.replacements,
                "vocabulary": [w for w in (args.vocabulary or "").split(",") if w.strip()] or None,
            }
        )
    except TextOptionError as exc:
        print(f"tone-platform: {exc.message} [{exc.code}]", file=sys.stderr)
        raise SystemExit(2) from None


def _written(doc: dict[str, Any], options: Any) -> tuple[dict[str, Any], list[Phrase]]:
    """The transcript with ``display``/``display_words``/``display_text``, and its phrases as the
    written form for txt/srt/vtt/tsv."""
    from shared.text.display import display_phrases, display_text

    phrases, _ = display_phrases(doc["phrases"], options)
    doc = {**doc, "phrases": phrases, "display_text": display_text(phrases)}
    shown = [
        Phrase(
            p["display"],
            p["start_time"],
            p["end_time"],
            p["channel"],
            tuple(Word(w["text"], w["start"], w["end"]) for w in p["display_words"]),
        )
        for p in phrases
    ]
    return doc, shown


def _emit(args: argparse.Namespace, name: str, transcript: Any, many: bool) -> None:
    doc, shown = _written(transcript.to_dict(), args.text_options)
    if args.format == "json":
        print(render("json", shown, document={"file": name, **doc} if many else doc))
    else:
        if many:
            print(f"==> {name} <==")
        sys.stdout.write(render(args.format, shown, channels=transcript.channels))
    sys.stdout.flush()


def _fail(name: str, exc: Exception, args: argparse.Namespace) -> None:
    code = getattr(exc, "code", "file_not_found" if isinstance(exc, FileNotFoundError) else "error")
    message = getattr(exc, "message", None) or str(exc)
    shown = message if message.startswith(name) else f"{name}: {message}"
    print(f"tone-platform: {shown} [{code}]", file=sys.stderr)
    if args.format == "json":
        print(json.dumps({"file": name, "error": {"code": code, "message": message}}, ensure_ascii=False))


def cmd_transcribe(args: argparse.Namespace) -> int:
    args.text_options = _text_options(args)
    hotwords = args.text_options.hotwords(LABELS)
    decoder = None
    if hotwords:  # a vocabulary is boosted by beam search (with the LM when there is one, else alone)
        if args.decoder == "greedy":
            print(
                "tone-platform: --vocabulary needs beam search: --decoder beam or auto [invalid_vocabulary]",
                file=sys.stderr,
            )
            return EXIT_USAGE
        decoder = "beam"
    rec = _load(args)
    limits = {"max_duration": args.max_duration, "max_bytes": args.max_bytes}
    many = len(args.files) > 1
    failed = 0
    chunk = int(args.stream_chunk_ms * SAMPLE_RATE / 1000) if args.stream_chunk_ms else None
    if chunk is not None and chunk < 1:
        print("tone-platform: --stream-chunk-ms must be at least 0.125 (one sample)", file=sys.stderr)
        return EXIT_USAGE
    if args.batch > 1 and many and not chunk:
        results: dict[int, Any] = {}
        errors: dict[int, Exception] = {}
        next_out = 0
        for index, transcript in rec.transcribe_many(
            args.files,
            batch=args.batch,
            channels=args.channels,
            decoder=decoder,
            on_error=errors.__setitem__,
            hotwords=hotwords,
            **limits,
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
                decoder=decoder,
                hotwords=hotwords,
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


def cmd_demo(args: argparse.Namespace) -> int:
    """Transcribe a demo recording with T-one, or with the tone test model when T-one can't be had."""
    from shared.asr.engine import Recognizer

    path = args.model or os.environ.get("TONE_MODEL_PATH") or None
    kit = Path(__file__).resolve().parents[2].parent / "shared" / "audio" / "tone_example_short.flac"
    try:
        rec = Recognizer.load(path, threads=args.threads)
        recording = args.file or (str(kit) if kit.is_file() else None)
        if recording is None:
            print("tone-platform: give a recording to transcribe: make run FILE=path", file=sys.stderr)
            return EXIT_USAGE
        print(f"T-one model: {rec.model.path}\nrecording: {recording}", file=sys.stderr)
    except ToneError as exc:
        print(f"tone-platform: {exc.message} [{exc.code}]", file=sys.stderr)
        from shared.dev.models.tones import build_tone_model, synthesize

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
        sf.write(recording, audio, SAMPLE_RATE, subtype="ULAW")
        rec = Recognizer.load(model, threads=args.threads)
        print(f"test model: {model}\nrecording: {recording} (8 kHz u-law WAV)", file=sys.stderr)
    transcript = rec.transcribe_file(recording)
    print(json.dumps(transcript.to_dict(), ensure_ascii=False, indent=2))
    return 0


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
    p.add_argument("--precision", choices=["auto", "float16", "float32"], default=None,
                   help="auto/float16: the file as is; float32: rewritten (env TONE_PRECISION)")  # fmt: skip


def register(sub: Any) -> None:
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
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                   help="digits in display (default); --no-normalize: the spoken words")  # fmt: skip
    p.add_argument("--redact", metavar="LIST", default=None,
                   help="mask in display: card,phone,passport,inn,snils,email,profanity")  # fmt: skip
    p.add_argument("--vocabulary", metavar="LIST", default=None,
                   help="comma-separated hot words for beam search, e.g. Тинькофф,ипотека")  # fmt: skip
    p.add_argument("--replacements", metavar="JSON", default=None,
                   help='spellings to rewrite in display, e.g. \'{"тинькоф": "Тинькофф"}\'')  # fmt: skip
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
