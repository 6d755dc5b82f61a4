"""``make bench``: the engine's throughput on the cost-faithful model, B=1 against batched stepping,
and both against this machine's own matrix-multiply rate on the model's shapes (the ceiling).

Every figure comes from one run on one machine; ratios, not absolute numbers, are what to compare.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.asr.types import CHUNK_SAMPLES, SAMPLE_RATE
from shared.platform.statuses import FINAL_STATUSES

CHUNK_SECONDS = CHUNK_SAMPLES / SAMPLE_RATE


# the root of the code this bench runs: the stack's servers start there, since ``python -m`` puts the
# current directory before PYTHONPATH (a `git worktree` A/B from elsewhere would measure the
# current directory's code on both sides)
CODE_ROOT = Path(__file__).resolve().parents[2]


def model_flops(path: Path) -> tuple[float, int]:
    """FLOPs of one 300 ms chunk of one stream (MatMul, Gemm, Conv), and the parameter count."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path))
    for value in [*model.graph.input, *model.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_param")
        dim.dim_value = 1
    inferred = shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        shapes[v.name] = [d.dim_value for d in v.type.tensor_type.shape.dim]
    params = 0
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
        params += int(np.prod(init.dims)) if init.data_type in (1, 10, 16) else 0
    flops = 0.0
    for node in inferred.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
            if a and b:
                flops += float(2.0 * np.prod(a[:-1]) * a[-1] * b[-1])
        elif node.op_type == "Conv":
            w, out = shapes.get(node.input[1]), shapes.get(node.output[0])
            if w and out:
                flops += float(2.0 * np.prod(out) * np.prod(w[1:]))
    return flops, params


def matmul_rate(threads: int | None, rows: int) -> float:
    """FLOP/s of ONNX Runtime's float32 MatMul on the model's feed-forward shapes, same threads."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    shapes = [(384, 3072), (1536, 384), (384, 768)]
    nodes, inits, outputs = [], [], []
    for i, (k, n) in enumerate(shapes):
        inits.append(numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"x{i}", f"w{i}"], [f"y{i}"]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [rows, n]))
    inputs = [
        helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, [rows, k])
        for i, (k, _) in enumerate(shapes)
    ]
    graph = helper.make_graph(nodes, "mm", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {f"x{i}": rng.standard_normal((rows, k)).astype(np.float32) for i, (k, _) in enumerate(shapes)}
    flops = sum(2.0 * rows * k * n for k, n in shapes)
    sess.run(None, feed)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < 2.0:
        sess.run(None, feed)
        runs += 1
    return flops * runs / (time.perf_counter() - started)


def engine_rate(rec: Any, batch: int, min_seconds: float, max_steps: int) -> tuple[float, float]:
    """Audio seconds per wall second of Recognizer.step for B streams, and seconds per step."""
    rng = np.random.default_rng(batch)
    streams = [rec.new_stream() for _ in range(batch)]
    chunks = [rng.normal(0, 2000, CHUNK_SAMPLES).astype(np.int16) for _ in range(batch)]
    last = [False] * batch
    rec.step(streams, chunks, last)  # warm-up
    steps, started = 0, time.perf_counter()
    while steps < max_steps and (steps < 2 or time.perf_counter() - started < min_seconds):
        rec.step(streams, chunks, last)
        steps += 1
    elapsed = time.perf_counter() - started
    return batch * steps * CHUNK_SECONDS / elapsed, elapsed / steps


def speech_audio(seconds: float = 60.0, seed: int = 0) -> np.ndarray:
    """Tone-synthesized speech with pauses (phrases of 1-4 words): the splitter and decoders see
    phrases open and close as in a call, on the tones and the null model alike."""
    import random

    from shared.asr.types import LABELS
    from shared.dev.models.tones import synthesize

    rnd = random.Random(seed)
    letters = LABELS[:-1]
    pieces: list[np.ndarray] = []
    total = 0
    while total < seconds * SAMPLE_RATE:
        words = [
            "".join(rnd.choice(letters) for _ in range(rnd.randint(2, 8))) for _ in range(rnd.randint(1, 4))
        ]
        audio, _ = synthesize([" ".join(words)], lead=rnd.choice([0.3, 0.6, 0.9]), tail=0.3)
        pieces.append(audio)
        total += len(audio)
    return np.concatenate(pieces)[: int(seconds * SAMPLE_RATE)]


@dataclass
class HostRate:
    """One stepping run: wall time and the part spent inside ONNX Runtime's run."""

    batch: int
    steps: int
    wall_s: float
    model_s: float
    phrases: int

    @property
    def audio_rate(self) -> float:
        return self.batch * self.steps * CHUNK_SECONDS / self.wall_s

    @property
    def us_per_stream_chunk(self) -> float:
        return 1e6 * self.wall_s / (self.batch * self.steps)

    @property
    def host_us_per_stream_chunk(self) -> float:
        """The engine's own time per stream and chunk: everything but the model's run."""
        return 1e6 * (self.wall_s - self.model_s) / (self.batch * self.steps)


def host_rate(rec: Any, batch: int, audio: np.ndarray, min_seconds: float, max_steps: int) -> HostRate:
    """Recognizer.step over B streams of speech (each at its own place in ``audio``, wrapping
    around), timing the model's run apart: with the null model the rest is the engine's own cost."""
    model = rec.model
    name = "step" if hasattr(model, "step") else "run"  # "run": engines before the StateBank
    run = getattr(model, name)
    spent = [0.0]

    def timed(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return run(*a, **k)
        finally:
            spent[0] += time.perf_counter() - t

    chunks_in = len(audio) // CHUNK_SAMPLES
    frames = audio[: chunks_in * CHUNK_SAMPLES].reshape(chunks_in, CHUNK_SAMPLES)
    rng = np.random.default_rng(batch)
    starts = rng.integers(0, chunks_in, batch)
    streams = [rec.new_stream() for _ in range(batch)]
    last = [False] * batch
    setattr(model, name, timed)
    try:
        for k in range(2):  # warm-up: the second step is the model's at B (new streams' first
            rec.step(streams, list(frames[(starts - 2 + k) % chunks_in]), last)  # is their opening)
        spent[0] = 0.0
        steps, phrases, started = 0, 0, time.perf_counter()
        while steps < max_steps and (steps < 3 or time.perf_counter() - started < min_seconds):
            steps += 1
            out = rec.step(streams, list(frames[(starts + steps) % chunks_in]), last)
            phrases += sum(len(p) for p in out)
        wall = time.perf_counter() - started
    finally:
        delattr(model, name)
    return HostRate(batch, steps, wall, spent[0], phrases)


def run_host_bench(
    null_path: Path, batches: list[int], threads: int, min_seconds: float, provider: str = "cpu"
) -> list[HostRate]:
    """The engine with the model taken out (the null model): host time per stream-chunk and the
    audio seconds per second one process could feed to an accelerator."""
    from shared.asr.engine import Recognizer

    rec = Recognizer.load(null_path, providers=provider, threads=threads)
    audio = speech_audio(60.0)
    print(
        f"\n[the engine alone: null model {null_path}, speech with pauses, {threads} threads, "
        f"{rec.model.providers[0]}]"
    )
    print(
        f"{'B':>5} {'us/stream-chunk':>16} {'host us':>8} {'in ORT us':>10} {'audio s/s':>10} "
        f"{'host-only s/s':>14}"
    )
    out = []
    for b in batches:
        r = host_rate(rec, b, audio, min_seconds, 100_000)
        host = r.host_us_per_stream_chunk
        print(
            f"{b:>5} {r.us_per_stream_chunk:>16.1f} {host:>8.1f} {r.us_per_stream_chunk - host:>10.1f} "
            f"{r.audio_rate:>10.0f} {CHUNK_SECONDS * 1e6 / host:>14.0f}",
            flush=True,
        )
        out.append(r)
    print("  host: everything but ORT's run (state rows, signal, splitter, decoding, Python per stream);")
    print("  host-only s/s: the audio one process could feed per second if the model cost nothing")
    print(f"  state-row gathers (joins, leaves, reorders): {rec.bank.gathers}")
    return out


# -- the peer: sherpa-onnx (C++, runs T-one natively), the same model, threads and audio -------------


def sherpa_model(path: Path, dest: Path) -> tuple[Path, Path]:
    """A copy of ``path`` with the metadata sherpa-onnx's T-one loader reads (frame_length_ms,
    state_dim, sample_rate; T-one's own export carries them), and its tokens.txt."""
    import onnx

    from shared.asr.types import BLANK_ID, LABELS, SAMPLE_RATE, STATE_SIZE

    model = onnx.load(str(path))
    meta = {"frame_length_ms": "300", "state_dim": str(STATE_SIZE), "sample_rate": str(SAMPLE_RATE)}
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    dest.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dest / "model.onnx"))
    tokens = [f"{'▁' if c == ' ' else c} {i}" for i, c in enumerate(LABELS)] + [f"<blk> {BLANK_ID}"]
    (dest / "tokens.txt").write_text("\n".join(tokens) + "\n")
    return dest / "model.onnx", dest / "tokens.txt"


def _ours_rate(rec: Any, batch: int, audio: np.ndarray) -> float:
    """Audio s/s of B streams fed the whole recording and finished (model, splitter, greedy)."""
    streams = [rec.new_stream() for _ in range(batch)]
    started = time.perf_counter()
    rec.advance([(s, audio, True) for s in streams], max_batch=batch)
    return batch * len(audio) / SAMPLE_RATE / (time.perf_counter() - started)


# sherpa-onnx's own T-one example (python-api-examples/online-t-one-ctc-decode-files.py) pads each
# recording by hand: its recognizer adds nothing, and fed the bare audio it loses the model's last
# output (the tones model: "чем я могу вам помоч", "дом ко"; with this padding, the whole phrases)
SHERPA_PADDING = (0.3, 0.66)  # seconds of zeros before and after, as that example sends


def _sherpa_rate(recognizer: Any, batch: int, audio: np.ndarray, padded: bool = True) -> float:
    """The same with sherpa-onnx's OnlineRecognizer: B streams decoded together (decode_streams);
    ``padded``: with its T-one example's padding (the complete transcript), else the bare audio.
    Audio seconds count the recording only, as ours do."""
    samples = (audio / 32768.0).astype(np.float32)
    if padded:
        before, after = (np.zeros(int(p * SAMPLE_RATE), np.float32) for p in SHERPA_PADDING)
        samples = np.concatenate([before, samples, after])
    started = time.perf_counter()
    streams = []
    for _ in range(batch):
        s = recognizer.create_stream()
        s.accept_waveform(SAMPLE_RATE, samples)
        s.input_finished()
        streams.append(s)
    while True:
        ready = [s for s in streams if recognizer.is_ready(s)]
        if not ready:
            break
        recognizer.decode_streams(ready)
    for s in streams:
        recognizer.get_result(s)
    return batch * len(audio) / SAMPLE_RATE / (time.perf_counter() - started)


SIDE_PAUSE = 0.5  # seconds between our run and the peer's (ORT's intra-op threads spin on after a run)


def run_sherpa_bench(
    path: Path, batches: list[int], threads: int, seconds: float, rounds: int = 3
) -> list[tuple[int, float, float]] | None:
    """Our engine beside sherpa-onnx on the same model file, threads and audio, interleaved runs
    (each keeps its best); sherpa-onnx comes from the `bench` extra and only the bench uses it."""
    import shutil
    import tempfile

    try:
        import sherpa_onnx
    except ImportError:
        print("\n[sherpa-onnx: not installed (pip install -e '.[bench]'); skipped]")
        return None
    from shared.asr.engine import Recognizer

    root = Path(tempfile.mkdtemp(prefix="tone-sherpa-"))
    try:
        model, tokens = sherpa_model(path, root)
        peer = sherpa_onnx.OnlineRecognizer.from_t_one_ctc(
            tokens=str(tokens), model=str(model), num_threads=threads, sample_rate=SAMPLE_RATE
        )
        ours = Recognizer.load(path, providers="cpu", threads=threads)
        audio = speech_audio(seconds, seed=7)
        version = getattr(sherpa_onnx, "__version__", "?")
        print(
            f"\n[ours vs sherpa-onnx {version}: {path.name}, {threads} threads, {seconds:.0f} s per stream; "
            f"each pads as the reference does (the peer as its T-one example: "
            f"{SHERPA_PADDING[0]} s before, {SHERPA_PADDING[1]} s after)]"
        )
        out = []
        for b in batches:
            _ours_rate(ours, b, audio[: 2 * SAMPLE_RATE])  # warm-up, both
            _sherpa_rate(peer, b, audio[: 2 * SAMPLE_RATE])
            mine, theirs, bare = [], [], []
            for _ in range(rounds):
                # each side starts after the other's ORT threads have stopped spinning: without the
                # pause the first calls of either ran at half speed (33-40 ms instead of 19 at B=1)
                time.sleep(SIDE_PAUSE)
                mine.append(_ours_rate(ours, b, audio))
                time.sleep(SIDE_PAUSE)
                theirs.append(_sherpa_rate(peer, b, audio))
                time.sleep(SIDE_PAUSE)
                bare.append(_sherpa_rate(peer, b, audio, padded=False))
            line = " ".join(f"{a:.1f}/{t:.1f}" for a, t in zip(mine, theirs))
            print(
                f"  B={b:<3d} ours {max(mine):6.1f}  sherpa-onnx {max(theirs):6.1f} s audio/s  "
                f"(runs ours/peer: {line}); the peer on the bare audio, last output lost: "
                f"{max(bare):.1f}"
            )
            out.append((b, max(mine), max(theirs)))
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- beam search with a language model of realistic size ----------------------------------------------


def lm_words(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct pseudo-Russian words of 2-9 letters."""
    import random

    from shared.asr.types import LABELS

    rnd = random.Random(seed)
    letters = LABELS[:-1]
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rnd.choice(letters) for _ in range(rnd.randint(2, 9))))
    return sorted(words)


def build_arpa(path: Path, words: list[str], bigrams_per_word: int = 2, seed: int = 0) -> Path:
    """An ARPA bigram model over ``words`` (Zipf-like unigram probabilities, random bigrams):
    KenLM reads ARPA as well as its binary format, so it can stand in for T-one's kenlm.bin."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, len(words) + 1)
    uni = np.log10(1.0 / ranks / np.sum(1.0 / ranks))
    pairs = {
        (int(a), int(b))
        for a, b in zip(
            rng.integers(0, len(words), bigrams_per_word * len(words)),
            rng.zipf(1.3, bigrams_per_word * len(words)) % len(words),
        )
    }
    lines = [
        "\\data\\",
        f"ngram 1={len(words) + 3}",
        f"ngram 2={len(pairs) + len(words)}",
        "",
        "\\1-grams:",
        "-2.0\t<unk>\t0",
        "0\t<s>\t-0.5",
        "-1.5\t</s>",
    ]
    lines += [f"{lp:.4f}\t{w}\t-0.3" for w, lp in zip(words, uni)]
    lines += ["", "\\2-grams:"]
    lines += [f"{lp - 0.2:.4f}\t<s> {w}" for w, lp in zip(words, uni)]
    lines += [f"{-rng.uniform(0.2, 1.5):.4f}\t{words[a]} {words[b]}" for a, b in sorted(pairs)]
    lines += ["", "\\end\\", ""]
    path.write_text("\n".join(lines))
    return path


class _Timed:
    """A decoder that counts its calls and the time they took."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.calls, self.seconds = inner, inner.name, 0, 0.0

    def decode(self, logprobs: np.ndarray, hotwords: Sequence[str] = ()) -> Any:
        started = time.perf_counter()
        try:
            return self.inner.decode(logprobs, hotwords)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1


def compare_flashlight(rec: Any, lm: Path, vocab: list[str], audios: list[np.ndarray], batch: int) -> None:
    """flashlight-text's C++ beam search beside pyctcdecode on the same logits (the same phrases):
    ms per phrase of each decoder itself, and how many phrases come out equal."""
    from shared.asr.decoder import BeamSearchDecoder
    from shared.asr.flashlight_decoder import FlashlightBeamDecoder, flashlight_available

    if not flashlight_available():
        print("  flashlight-text: not installed (the lm extra on cp311 x86-64); skipped")
        return
    results = {}
    for label, dec in (
        ("pyctcdecode", BeamSearchDecoder(lm, fast_path=False)),  # the search itself, every phrase
        ("flashlight", FlashlightBeamDecoder(lm, vocab)),
    ):
        timed = _Timed(dec)
        rec.set_decoder("beam", timed)
        done = dict(rec.transcribe_many(audios, batch=batch, decoder="beam"))
        results[label] = (
            timed,
            {(i, p.channel, p.start_frame): p.text for i, t in done.items() for p in t.phrases},
        )
    rec.set_decoder("beam", BeamSearchDecoder(lm))
    (py_t, py), (fl_t, fl) = results["pyctcdecode"], results["flashlight"]
    same = sum(fl.get(k) == v for k, v in py.items())
    print(
        "  decoders alone, same logits: "
        f"pyctcdecode {1000 * py_t.seconds / max(1, py_t.calls):.2f} ms/phrase, "
        f"flashlight-text {1000 * fl_t.seconds / max(1, fl_t.calls):.2f} ms/phrase; "
        f"{same} of {len(py)} phrases equal"
    )


@dataclass
class DecodeRun:
    label: str
    audio_s: float
    wall_s: float
    phrases: int
    texts: list[str]
    pool_wait_s: float = 0.0  # of wall_s, the time the model waited for the decoder pool
    drain_wait_s: float = 0.0  # of wall_s, waiting for the pool's last phrases, the model done

    @property
    def rate(self) -> float:
        return self.audio_s / self.wall_s


def _decode_run(rec: Any, label: str, audios: list[np.ndarray], decoder: str, batch: int) -> DecodeRun:
    waited, drained = rec.pool_wait_s, rec.drain_wait_s
    started = time.perf_counter()
    done = dict(rec.transcribe_many(audios, batch=batch, decoder=decoder))
    wall = time.perf_counter() - started
    texts = [p.text for i in range(len(audios)) for p in done[i].phrases]
    audio_s = sum(len(a) for a in audios) / SAMPLE_RATE
    return DecodeRun(
        label, audio_s, wall, len(texts), texts, rec.pool_wait_s - waited, rec.drain_wait_s - drained
    )


def run_lm_bench(
    model: Path,
    kind: str,
    words: int,
    recordings: int,
    seconds: float,
    workers: int,
    threads: int,
    rounds: int = 2,
    batch: int | None = None,
) -> list[DecodeRun]:
    """Greedy against beam search (pyctcdecode, beam 200, KenLM over ``words`` words), inline and
    with ``workers`` decoder processes, in one run: audio s/s and ms per phrase. ``batch``
    (default: every recording at once) below ``recordings`` lets the model step the later
    recordings while the pool decodes the first ones' phrases."""
    import shutil
    import tempfile

    from shared.asr.decoder import BeamSearchDecoder
    from shared.asr.engine import Recognizer
    from shared.dev.models.tones import synthesize

    vocab = lm_words(words)
    batch = batch or recordings
    root = Path(tempfile.mkdtemp(prefix="tone-lm-"))
    try:
        shutil.copy(model, root / "model.onnx")
        started = time.perf_counter()
        build_arpa(root / "kenlm.bin", vocab)
        size = (root / "kenlm.bin").stat().st_size
        rng = np.random.default_rng(1)
        audios = []
        for _ in range(recordings):
            if kind == "tones":  # phrases of LM words, as the tones model hears them
                pieces, total = [], 0
                while total < seconds * SAMPLE_RATE:
                    phrase = " ".join(
                        vocab[int(rng.zipf(1.3)) % len(vocab)] for _ in range(rng.integers(2, 6))
                    )
                    a, _ = synthesize([phrase], lead=0.6, tail=0.3)
                    pieces.append(a)
                    total += len(a)
                audios.append(np.concatenate(pieces)[: int(seconds * SAMPLE_RATE)])
            else:
                audios.append(speech_audio(seconds, seed=int(rng.integers(1 << 30))))
        inline = Recognizer.load(root, providers="cpu", threads=threads)
        print(
            f"\n[beam search vs greedy: {kind} model, LM of {len(vocab)} words ({size / 1e6:.1f} MB ARPA, "
            f"built and loaded in {time.perf_counter() - started:.1f} s); {recordings} recordings of "
            f"{seconds:.0f} s, batch {batch}, {threads} threads]"
        )
        _decode_run(inline, "warm-up", [a[: 5 * SAMPLE_RATE] for a in audios], "greedy", batch)
        pooled = None
        if workers:
            pooled = Recognizer.load(root, providers="cpu", threads=threads, decoder_workers=workers)
        # the default beam decoder spells single-path phrases without the search; the same
        # decoder with that rule off shows what the search itself costs, in the same run
        ruled = BeamSearchDecoder(root / "kenlm.bin")
        searched = BeamSearchDecoder(root / "kenlm.bin", fast_path=False)
        plan: list[tuple[str, Any, str, Any]] = [
            ("greedy", inline, "greedy", None),
            ("beam, inline", inline, "beam", ruled),
            ("beam, inline, every phrase searched", inline, "beam", searched),
        ]
        if pooled is not None:
            plan.append((f"beam, {workers} decoder processes", pooled, "beam", None))
        best: dict[str, DecodeRun] = {}
        single = 0
        try:
            for _ in range(rounds):  # interleaved: the machine drifts, each label keeps its best
                for label, rec, decoder, beam_decoder in plan:
                    if beam_decoder is not None:
                        rec.set_decoder("beam", beam_decoder)
                    before = ruled.single_paths
                    r = _decode_run(rec, label, audios, decoder, batch)
                    if beam_decoder is ruled:
                        single = ruled.single_paths - before
                    if label not in best or r.rate > best[label].rate:
                        best[label] = r
        finally:
            if pooled is not None:
                pooled.close()
        inline.set_decoder("beam", ruled)
        runs = [best[label] for label, _, _, _ in plan]
        compare_flashlight(inline, root / "kenlm.bin", vocab, audios, batch)
        greedy, beam, full = runs[0], runs[1], runs[2]
        extra = 1000 * (full.wall_s - greedy.wall_s) / max(1, full.phrases)
        print(f"  the search costs {extra:.1f} ms per phrase more than greedy, inline (one core)")
        print(
            f"  {single} of {beam.phrases} phrases had a single path through the search "
            "(every frame one candidate token) and were spelled without it"
        )
        for r in runs:
            same = sum(a == b for a, b in zip(r.texts, beam.texts))
            waited = (
                f", the model waited {r.pool_wait_s:.2f} s for the pool with audio to step, then "
                f"{r.drain_wait_s:.2f} s for the last phrases"
                if r is runs[-1] and pooled
                else ""
            )
            print(
                f"  {r.label:<36} {r.rate:8.1f} s audio/s {100 * r.rate / greedy.rate:5.0f} % of greedy, "
                f"{r.phrases} phrases in {r.wall_s:.1f} s, {same} as inline beam{waited}"
            )
        return runs
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _process_rate(path: str, batch: int, start_at: float, seconds: float, out: Any) -> None:
    """One single-threaded engine process, for the processes-per-core comparison."""
    from shared.asr.engine import Recognizer

    rec = Recognizer.load(path, threads=1, providers="cpu")
    engine_rate(rec, batch, 0.0, 1)  # load and warm up before the common start
    time.sleep(max(0.0, start_at - time.time()))
    out.put(engine_rate(rec, batch, seconds, 10_000)[0])


def processes_rate(path: Path, processes: int, batch: int, seconds: float) -> float:
    """Total audio s/s of ``processes`` single-threaded engine processes running at once."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 15.0
    procs = [
        ctx.Process(target=_process_rate, args=(str(path), batch, start_at, seconds, out))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    rates = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    return float(sum(rates))


WORDS_PER_HOUR = 9000  # telephone speech: about 2.5 words a second, both sides together


def hour_of_phrases(words_per_hour: int = WORDS_PER_HOUR) -> list[dict[str, Any]]:
    """An hour of transcript as the engine writes it: the ITN test set's spoken phrases (number-heavy,
    so pessimistic) repeated until ``words_per_hour`` words, each word 0.4 s."""
    from shared.dev.itn_eval import load_cases

    spoken = [s for _, s, _ in load_cases()]
    phrases: list[dict[str, Any]] = []
    words = 0
    t = 0.0
    while words < words_per_hour:
        text = spoken[len(phrases) % len(spoken)]
        spoken_words = text.split()
        ws = [{"text": w, "start": t + 0.4 * i, "end": t + 0.4 * i + 0.3} for i, w in enumerate(spoken_words)]
        end = t + 0.4 * (len(spoken_words) - 1) + 0.3
        phrases.append({"text": text, "start_time": t, "end_time": end, "channel": 0, "words": ws})
        words += len(ws)
        t = end + 0.5
    return phrases


def text_seconds_per_hour(redact: bool, repeat: int = 3) -> float:
    """Seconds of CPU the written form (ITN, and all redaction kinds with ``redact``) takes for an
    hour of audio's transcript; the best of ``repeat`` runs."""
    from shared.text.display import display_phrases
    from shared.text.options import REDACT_KINDS, TextOptions

    phrases = hour_of_phrases()
    options = TextOptions(redact=REDACT_KINDS if redact else ())
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        display_phrases(phrases, options)
        best = min(best, time.perf_counter() - started)
    return best


def report_text_cost(engine: dict[int, float]) -> None:
    """ITN and redaction per hour of audio beside the engine's time for that hour (``engine``: audio
    seconds per second by B)."""
    itn = text_seconds_per_hour(redact=False)
    both = text_seconds_per_hour(redact=True)
    print(f"\nwritten form: an hour of transcript ({WORDS_PER_HOUR} words, the ITN test set's phrases)")
    print(f"  ITN                   {itn:7.3f} s per audio hour")
    print(f"  ITN + every redaction {both:7.3f} s per audio hour")
    for b, rate in sorted(engine.items()):
        per_hour = 3600 / rate
        print(
            f"  engine B={b:<3d} {per_hour:7.1f} s per audio hour: ITN {100 * itn / per_hour:.2f} %, "
            f"with redaction {100 * both / per_hour:.2f} %"
        )


def run_bench(args: argparse.Namespace) -> int:
    if getattr(args, "search_only", False):
        run_search_bench(args.search_phrases)
        return 0
    # the lists are read first: a typo fails now, not after the engine's tables
    starts = stream_starts(getattr(args, "stream_starts", "together"))
    batch_sources = batch_sources_of(args)
    import onnxruntime as ort

    from shared.asr.engine import Recognizer

    path = Path(args.model) if args.model else None
    if path is None or not path.exists():
        from shared.dev.models.cost import build_cost_model

        path = build_cost_model(path or Path(".cache/test-models/cost/model.onnx"))
    threads = args.threads or os.cpu_count() or 1
    if args.batch_only:
        return run_batch_only(args, path, threads)
    if args.text_only:
        rec = Recognizer.load(path, providers=args.provider, threads=threads)
        rates = {b: engine_rate(rec, b, args.min_seconds, args.max_steps)[0] for b in (1, 16)}
        report_text_cost(rates)
        return 0
    batches = [int(b) for b in args.batches.split(",")]
    flops, params = model_flops(path)
    print(f"model: {path} ({params / 1e6:.1f} M parameters, {flops / 1e9:.2f} GFLOP per 300 ms chunk)")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"onnxruntime {ort.__version__}; threads {threads}"
    )
    rows: list[tuple[str, int, float, float]] = []
    precisions = args.precisions.split(",")
    for precision in precisions:
        started = time.perf_counter()
        rec = Recognizer.load(path, providers=args.provider, threads=threads, precision=precision)
        load = time.perf_counter() - started
        print(f"\n[{precision}] providers {rec.model.providers}, loaded in {load:.1f} s")
        for b in batches if precision == precisions[0] else [1, max(batches)]:
            rate, per_step = engine_rate(rec, b, args.min_seconds, args.max_steps)
            rows.append((precision, b, rate, per_step))
            print(f"  B={b:<3d} {rate:8.1f} s audio/s   {per_step * 1000:8.1f} ms per step", flush=True)
    best_b = max(batches)
    cores = os.cpu_count() or 1
    if cores > 1 and not args.skip_processes:
        print(f"\n[{cores} processes x 1 thread, float16]", flush=True)
        for b in (1, best_b):
            rate = processes_rate(path, cores, b, args.min_seconds)
            rows.append((f"{cores}proc x1", b, rate, 0.0))
            print(f"  B={b:<3d} {rate:8.1f} s audio/s in total", flush=True)
    peak = matmul_rate(threads, rows=best_b * 10)
    ceiling = peak / (flops / CHUNK_SECONDS) if flops else float("inf")  # the null model: no FLOPs
    print(f"\nceiling: float32 MatMul on the model's shapes at {best_b * 10} rows: {peak / 1e9:.1f} GFLOP/s")
    print(f"         = {ceiling:.1f} s of audio per second if the model were nothing but those MatMuls\n")
    print(f"{'run':<10} {'B':>4} {'audio s/s':>10} {'x B=1':>7} {'% ceiling':>10} {'s per s':>8}")
    base = {p: r for p, b, r, _ in rows if b == 1}
    for precision, b, rate, _ in rows:
        print(
            f"{precision:<10} {b:>4} {rate:>10.1f} {rate / base.get(precision, float('nan')):>7.2f} "
            f"{100 * rate / ceiling:>9.1f}% {1 / rate:>8.4f}"
        )
    report_text_cost({b: r for p, b, r, _ in rows if p == precisions[0] and b in (1, best_b)})
    if args.sherpa_batches:
        batches_peer = [int(b) for b in args.sherpa_batches.split(",")]
        run_sherpa_bench(path, batches_peer, threads, args.sherpa_seconds)
    if args.host_batches:
        null = Path(args.null_model)
        if not null.exists():
            from shared.dev.models.null import build_null_model

            null = build_null_model(null)
        host_batches = [int(b) for b in args.host_batches.split(",")]
        run_host_bench(null, host_batches, threads, min(args.min_seconds, 3.0), args.provider)
    if args.lm_words:
        tones = Path(args.tones_model)
        if not tones.exists():
            from shared.dev.models.tones import build_tone_model

            tones = build_tone_model(tones)
        # the cost model's 4 recordings in batches of 2: the model steps the last two while the
        # pool decodes the first two's phrases
        plan = (("tones", tones, 16, args.lm_seconds, 2, 16), ("cost", path, 4, args.lm_cost_seconds, 1, 2))
        for kind, model, n, secs, rounds, batch in plan:
            run_lm_bench(model, kind, args.lm_words, n, secs, args.decoder_workers, threads, rounds, batch)
    if args.platform_recordings:
        first = precisions[0]
        engine_b = next((r for p, b, r, _ in rows if p == first and b == args.platform_batch), None)
        if engine_b is None:
            rec = Recognizer.load(path, providers=args.provider, threads=threads, precision=first)
            engine_b = engine_rate(rec, args.platform_batch, args.min_seconds, args.max_steps)[0]
        run_platform_bench(
            path,
            recordings=args.platform_recordings,
            seconds=args.platform_seconds,
            batch=args.platform_batch,
            engine_rate_b=engine_b,
            poll=args.platform_poll,
        )
    if args.stream_counts:
        step_ms = {b: per_step * 1000 for p, b, _, per_step in rows if p == precisions[0]}
        counts = [int(n) for n in args.stream_counts.split(",")]
        protocols = tuple(args.stream_protocols.split(","))
        run_stream_bench(
            path,
            counts=counts,
            seconds=args.stream_seconds,
            step_ms=step_ms,
            protocols=protocols,
            live_workers=args.live_workers,
            pin_live=args.pin_live_workers,
            starts=starts,
        )
    if args.long_session_pieces:
        run_long_session_bench(Path(args.tones_model), args.long_sessions, args.long_session_pieces)
    if args.batch_run:
        best_rate, best_at = max((r, b) for p, b, r, _ in rows if p == precisions[0])
        batch_runs(args, path, threads, args.batch_run, (best_at, best_rate), batch_sources)
    return 0


def batch_runs(
    args: argparse.Namespace,
    path: Path,
    threads: int,
    recordings: int,
    engine_best: tuple[int, float],
    sources: tuple[str, ...],
) -> None:
    """The batch run once per source (an archive uploaded, a server folder), as the options say."""
    for source in sources:
        run_batch_bench(
            path,
            recordings=recordings,
            seconds=args.batch_run_seconds,
            batch=args.platform_batch,
            engine_best=engine_best,
            remeasure=engine_meter(path, args, threads),
            on_files=files_meter(path, args, threads),
            channels=args.batch_run_channels,
            source=source,
        )


def run_batch_only(args: argparse.Namespace, path: Path, threads: int) -> int:
    """``--batch-only``: the engine at B=16 and 32 (its best batched rate on this machine), then the
    batch run, so that the batch figures can be had without the whole table."""
    from shared.asr.engine import Recognizer

    precision = args.precisions.split(",")[0]
    rec = Recognizer.load(path, providers=args.provider, threads=threads, precision=precision)
    print(f"engine ({precision}, {threads} threads), for the batch run's ratio:")
    rates = []
    for b in (16, 32):
        rate, per_step = engine_rate(rec, b, args.min_seconds, args.max_steps)
        rates.append((rate, b))
        print(f"  B={b:<3d} {rate:8.1f} s audio/s   {per_step * 1000:8.1f} ms per step", flush=True)
    del rec
    best_rate, best_at = max(rates)
    batch_runs(args, path, threads, args.batch_run or 32, (best_at, best_rate), batch_sources_of(args))
    return 0


# -- the platform: recordings submitted at once to the running stack ----------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _p95(values: list[float]) -> float:
    return float(np.percentile(values, 95)) if values else float("nan")


STREAM_STARTS = ("together", "spread")
BATCH_SOURCES = ("archive", "folder", "tar.gz", "tar.xz", "piped")


def comma_choices(option: str, given: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """A comma list of ``allowed`` values given to ``option``; anything else ends the bench at once
    with the allowed values."""
    chosen = tuple(x.strip() for x in given.split(",") if x.strip())
    bad = [x for x in chosen if x not in allowed]
    if bad or not chosen:
        raise SystemExit(f"{option}: {', '.join(bad) or given!r}: use any of {', '.join(allowed)}")
    return chosen


def stream_starts(given: str) -> tuple[str, ...]:
    """``--stream-starts``: a comma list of :data:`STREAM_STARTS`, each run in turn on one stack."""
    return comma_choices("--stream-starts", given, STREAM_STARTS)


def batch_sources_of(args: argparse.Namespace) -> tuple[str, ...]:
    """``--batch-run-source``: a comma list of :data:`BATCH_SOURCES`, each a batch run of its own."""
    return comma_choices("--batch-run-source", getattr(args, "batch_run_source", "archive"), BATCH_SOURCES)


def start_offsets(n: int, starts: str, seed: int = 0) -> list[float]:
    """When each of ``n`` simulated streams sends its first piece, in seconds after the run's start:
    ``together``, all at once, so every piece of a round arrives in the same instant (the worst case:
    a burst of N pieces every 300 ms); ``spread``, at seeded random moments within one piece's
    300 ms, as calls that began at unrelated times (a call center's traffic). Every protocol's
    client, the peer's included, gets the same offsets for the same N."""
    if starts == "together":
        return [0.0] * n
    if starts == "spread":
        return [float(x) for x in np.random.default_rng(seed).uniform(0.0, CHUNK_SECONDS, n)]
    raise ValueError(f"starts must be one of {STREAM_STARTS}, not {starts!r}")


@contextlib.contextmanager
def bench_stack(
    path: Path,
    batch: int,
    live_workers: int = 1,
    pin_live: bool = False,
    extra_env: dict[str, str] | None = None,
) -> Iterator[tuple[str, str, dict[str, str]]]:
    """A whole stack (``tone-platform up --detach``) on the model in a temporary data directory;
    yields (API URL, an API key, the stack's environment); ``down`` and cleanup afterwards.
    ``live_workers`` > 1: that many live worker processes in all (the stack's one and more of the
    same command beside it, logging to ``logs/worker-live-<i>.log``). ``pin_live``: each live
    worker process (with its children and threads) on a CPU of its own, one ORT thread each: live
    workers on separate one-core machines, emulated (the API, the servers and the clients share
    every CPU). ``extra_env``: settings of the stack's own (e.g. ``TONE_BATCH_ROOT``)."""
    import shutil
    import subprocess
    import sys
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="tone-bench-"))
    root.chmod(0o755)  # as root the servers run as the user "tone"
    cli = str(Path(sys.executable).parent / "tone-platform")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        TONE_DATA_DIR=str(root / "data"),
        TONE_MODEL_PATH=str(path),
        TONE_WORKER_BATCH=str(batch),
        TONE_RATE_LIMIT_PER_MINUTE="1000000",  # the bench's requests are load, not abuse
    )
    env.update(extra_env or {})
    if pin_live:
        env["TONE_THREADS"] = "1"
    port = _free_port()
    up = [cli, "up", "--detach", "--port", str(port), "--flower-port", str(_free_port())]
    extra: list[Any] = []
    try:
        subprocess.run(up, env=env, check=True, capture_output=True, text=True, timeout=300, cwd=CODE_ROOT)
        key = subprocess.run(
            [cli, "keys", "create", "--tenant", "bench"], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        from shared.localstack.supervisor import read_env_file

        env.update(read_env_file(root / "data" / "env"))
        for i in range(1, live_workers):  # each one is stopped below, even when a later one fails
            extra.append(_extra_live_worker(env, root / "data" / "logs", i))
        if pin_live:
            _pin_live_workers(root / "data", [p.pid for p in extra])
        yield f"http://127.0.0.1:{port}", key, env
    finally:
        for proc in extra:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            proc.kill()
        subprocess.run([cli, "down"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def _extra_live_worker(env: dict[str, str], logs: Path, i: int) -> Any:
    """One more live worker process for the stack in ``env`` (the command ``up`` runs its live
    worker with, under a node name of its own); returns its Popen once it is ready with its model
    loaded."""
    import subprocess
    import sys

    from shared.queue import live_queue

    log = logs / f"worker-live-{i}.log"
    queue = live_queue(env.get("TONE_WORKER_QUEUE", "cpu"))
    cmd = [sys.executable, "-m", "celery", "-A", "worker.celery_app:app", "worker", "-Q", queue, "-c", "1",
           "-n", f"bench-live-{i}-{os.getpid()}@%h", "--loglevel", "INFO"]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd,
            env={**env, "TONE_ORT_SPINNING": "steps"},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=CODE_ROOT,
        )
    deadline = time.monotonic() + 120
    while "model loaded from" not in log.read_text(errors="replace"):  # ready, and the model warm
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the extra live worker did not start: {log}")
        time.sleep(0.2)
    return proc


def _pin_live_workers(data_dir: Path, extra: list[int]) -> None:
    """Pin the stack's live worker (from ``up.json``) and the ``extra`` ones, each with its
    children and every thread, to a CPU of its own (round robin over the CPUs allowed here)."""
    import json

    doc = json.loads((data_dir / "up.json").read_text())
    leaders = [doc["processes"]["worker-live"]["pid"], *extra]
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    cpus = sorted(os.sched_getaffinity(0))
    for i, leader in enumerate(leaders):
        tree, grew = {leader}, True
        while grew:
            more = {pid for pid, parent in parents.items() if parent in tree} - tree
            tree |= more
            grew = bool(more)
        for pid in tree:
            for task in Path(f"/proc/{pid}/task").glob("*"):
                with contextlib.suppress(OSError):  # a thread that ended meanwhile
                    os.sched_setaffinity(int(task.name), {cpus[i % len(cpus)]})


def _replays(logs: Path) -> int:
    """Replays in the live workers' logs so far: sessions' states reloaded from their checkpoints
    by a worker that did not hold them."""
    import re

    return sum(
        len(re.findall(r"stream replay of \d+ sessions", log.read_text(errors="replace")))
        for log in logs.glob("worker-live*.log")
    )


@dataclass
class JobsRun:
    """What one run of separate jobs measured: wall seconds (to the last job's server-side end) and
    the request latencies."""

    wall_s: float
    post_ms: list[float]
    get_ms: list[float]


def jobs_run(url: str, key: str, files: list[Path], poll: float | None = None) -> JobsRun:
    """Submit ``files`` at once (one ``POST /v1/jobs`` each, in parallel) and poll every job until it
    is final. Each job is polled again when its ``Retry-After`` says (as SDK pollers do), or every
    ``poll`` seconds regardless; the wall time ends at the last job's ``finished_at`` on the server,
    not at the poll that saw it."""
    import threading
    from datetime import datetime

    import httpx

    headers = {"Authorization": f"Bearer {key}"}
    post_ms: list[float] = []
    get_ms: list[float] = []
    ids: list[str] = []
    lock = threading.Lock()

    def submit(f: Path) -> None:
        with httpx.Client(timeout=60) as client:
            t = time.perf_counter()
            r = client.post(f"{url}/v1/jobs", headers=headers, files={"file": (f.name, f.read_bytes())})
            r.raise_for_status()
            with lock:
                post_ms.append((time.perf_counter() - t) * 1000)
                ids.append(r.json()["id"])

    started, started_at = time.perf_counter(), time.time()
    senders = [threading.Thread(target=submit, args=(f,)) for f in files]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    if len(ids) != len(files):
        raise RuntimeError(f"{len(files) - len(ids)} uploads failed")
    due = dict.fromkeys(ids, 0.0)
    ended = 0.0
    with httpx.Client(timeout=60) as client:
        while due:
            for job_id in [j for j, at in due.items() if at <= time.perf_counter()]:
                t = time.perf_counter()
                response = client.get(f"{url}/v1/jobs/{job_id}", headers=headers)
                response.raise_for_status()
                doc = response.json()
                get_ms.append((time.perf_counter() - t) * 1000)
                if doc["status"] in FINAL_STATUSES:
                    if doc["status"] != "completed":
                        raise RuntimeError(f"job {job_id} ended {doc['status']}: {doc.get('error')}")
                    del due[job_id]
                    ended = max(ended, datetime.fromisoformat(doc["finished_at"]).timestamp())
                else:
                    wait = poll if poll is not None else float(response.headers.get("Retry-After", 0.2))
                    due[job_id] = time.perf_counter() + wait
            time.sleep(0.05)
    return JobsRun(min(time.perf_counter() - started, ended - started_at), post_ms, get_ms)


def run_platform_bench(
    path: Path,
    *,
    recordings: int,
    seconds: float,
    batch: int,
    engine_rate_b: float,
    poll: float | None = None,
) -> None:
    """Submit ``recordings`` files at once over HTTP to a stack on the model, poll them to
    completion (:func:`jobs_run`), and compare with the bare engine's batched rate."""
    import soundfile as sf

    with bench_stack(path, batch) as (url, key, env):
        root = Path(env["TONE_DATA_DIR"])
        rng = np.random.default_rng(0)
        files = []
        for i in range(recordings):
            f = root / f"rec{i}.wav"
            sf.write(f, rng.normal(0, 2000, int(seconds * SAMPLE_RATE)).astype(np.int16), SAMPLE_RATE)
            files.append(f)
        run = jobs_run(url, key, files, poll)
    audio = recordings * seconds
    rate = audio / run.wall_s
    how = f"every {poll:g} s" if poll is not None else "as Retry-After says"
    print(
        f"\nplatform: {recordings} recordings of {seconds:.0f} s submitted at once, worker batch {batch}, "
        f"polled {how}"
    )
    print(f"  {rate:.1f} s of audio per wall second ({run.wall_s:.1f} s for {audio:.0f} s of audio)")
    print(f"  = {100 * rate / engine_rate_b:.0f} % of the bare engine's B={batch} rate ({engine_rate_b:.1f})")
    print(f"  POST /v1/jobs p95 {_p95(run.post_ms):.0f} ms ({len(run.post_ms)} requests)")
    print(f"  GET /v1/jobs/{{id}} p95 {_p95(run.get_ms):.0f} ms ({len(run.get_ms)} requests, during the run)")


# -- a batch: one archive of recordings, submitted as one batch ---------------------------------------


@dataclass
class BatchRun:
    """What one batch run measured; times are from the start of the upload."""

    recordings: int
    audio_seconds: float
    archive_bytes: int
    upload_s: float  # until POST /v1/batches answered (the archive checked, extracted, jobs created)
    first_result_s: float  # until the batch's status first counted a completed job
    wall_s: float  # until no job of the batch was open
    completed: int
    poll_ms: list[float]

    @property
    def rate(self) -> float:
        return self.audio_seconds / self.wall_s


def _batch_recordings(
    recordings: int, seconds: float, seed: int, channels: int
) -> Iterator[tuple[str, bytes]]:
    """``recordings`` 8 kHz PCM WAVs of ``seconds`` each, as (name under ``calls/``, bytes): noise,
    since for the cost-faithful model content does not matter, and every file differs, so the
    server's dedupe merges none."""
    import io

    import soundfile as sf

    rng = np.random.default_rng(seed)
    for i in range(recordings):
        buf = io.BytesIO()
        audio = rng.normal(0, 2000, (int(seconds * SAMPLE_RATE), channels)).astype(np.int16)
        sf.write(buf, audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
        yield f"calls/rec{i:04d}.wav", buf.getvalue()


def batch_archive(dest: Path, recordings: int, seconds: float, seed: int = 0, channels: int = 1) -> float:
    """A ZIP of the bench's recordings (:func:`_batch_recordings`), or a tar.gz or tar.xz when
    ``dest`` is named so (as a Linux call recorder's export is); returns the audio seconds in it,
    per channel (a stereo call is two streams to the engine: the batch's default ``channels=split``)."""
    import io
    import tarfile
    import zipfile

    packed = {".tar.gz": ("w:gz", {"compresslevel": 1}), ".tar.xz": ("w:xz", {"preset": 1})}
    suffix = next((s for s in packed if dest.name.endswith(s)), None)
    if suffix is not None:
        mode, level = packed[suffix]
        with tarfile.open(dest, mode, **level) as tf:  # type: ignore[call-overload]
            for name, data in _batch_recordings(recordings, seconds, seed, channels):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        return recordings * seconds * channels
    with dest.open("wb") as out:
        # ``*.piped.zip``: written as to a pipe (no ``tell``), every entry's sizes after its data, as
        # Go's archive/zip and ``tone-platform batch`` write theirs
        sink = _Unseekable(out) if dest.name.endswith(".piped.zip") else out
        with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as zf:  # type: ignore[call-overload]
            for name, data in _batch_recordings(recordings, seconds, seed, channels):
                zf.writestr(name, data)
    return recordings * seconds * channels


class _Unseekable:
    """A file ``zipfile`` can only write to, as to a pipe."""

    def __init__(self, f: Any) -> None:
        self.f = f

    def write(self, data: bytes) -> int:
        return int(self.f.write(data))

    def flush(self) -> None:
        self.f.flush()


def batch_folder(root: Path, recordings: int, seconds: float, seed: int = 0, channels: int = 1) -> float:
    """The same recordings as files under ``root/calls`` (a server folder for a batch: the archive a
    call center already keeps on a disk the platform mounts); returns the audio seconds, per
    channel."""
    for name, data in _batch_recordings(recordings, seconds, seed, channels):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return recordings * seconds * channels


def _first_result(
    url: str,
    headers: dict[str, str],
    started: float,
    uploading: threading.Event,
    seen: list[float],
    older: str | None = None,
) -> None:
    """While ``uploading`` is set, the moment (since ``started``) a new batch of the tenant (not
    ``older``, its newest before) first has a completed job, appended to ``seen``."""
    import httpx

    with httpx.Client(base_url=url, headers=headers, timeout=10.0) as client:
        while uploading.is_set():
            try:
                data = client.get("/v1/batches", params={"limit": 1}).json().get("data") or []
            except (httpx.HTTPError, ValueError):
                data = []
            if data and data[0]["id"] != older and data[0]["counts"].get("completed", 0) > 0:
                seen.append(time.perf_counter() - started)
                return
            time.sleep(0.1)


def batch_run(
    url: str, key: str, archive: Path, audio_seconds: float, poll: float = 0.5, directory: str | None = None
) -> BatchRun:
    """Upload ``archive`` as one batch (``POST /v1/batches``), or with ``directory`` submit that
    folder under the server's batch root (``archive`` then names it on this machine), and poll its
    status until no job is open: the platform's throughput for the case it is built for, archives
    of call recordings."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"}
    poll_ms: list[float] = []
    with httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(60.0, read=1800.0)) as client:
        # the tenant's newest batch so far: not the one the watcher below waits for
        newest = client.get("/v1/batches", params={"limit": 1}).json().get("data") or [{}]
        started, started_clock = time.perf_counter(), time.time()
        # a ZIP's first jobs are transcribed while it uploads: a second client lists the tenant's
        # batches meanwhile, as a user watching the console would, for the first result's moment
        uploading = threading.Event()
        early: list[float] = []
        watcher = threading.Thread(
            target=_first_result, args=(url, headers, started, uploading, early, newest[0].get("id"))
        )
        uploading.set()
        watcher.start()
        try:
            if directory is not None:
                answer = client.post("/v1/batches", json={"directory": directory})
            else:
                with archive.open("rb") as f:
                    kind = "application/gzip" if archive.name.endswith(".gz") else "application/zip"
                    answer = client.post("/v1/batches", files={"file": (archive.name, f, kind)})
        finally:
            uploading.clear()
            watcher.join()
        if answer.status_code >= 300:
            raise RuntimeError(f"POST /v1/batches answered {answer.status_code}: {answer.text[:300]}")
        upload = time.perf_counter() - started
        batch = answer.json()
        first = early[0] if early else None
        while True:
            t = time.perf_counter()
            response = client.get(f"/v1/batches/{batch['id']}")
            response.raise_for_status()
            view = response.json()
            now = time.perf_counter()
            poll_ms.append((now - t) * 1000)
            counts = view["counts"]
            if first is None and counts.get("completed", 0) > 0:
                first = now - started
            if view["status"] != "preparing" and counts.get("queued", 0) + counts.get("processing", 0) == 0:
                break  # (a large batch answers "preparing" and gets its jobs as the server reads it)
            time.sleep(poll)
        wall = time.perf_counter() - started
        # the server's own end (the last job's), not the poll that saw it: a poll every 0.5 s
        # added up to 0.5 s to a batch the tones model finishes in 3 s
        ended = view.get("finished_at")
        if ended:
            from datetime import datetime

            end = datetime.fromisoformat(ended)
            since = end.timestamp() - started_clock  # a server on this machine: the same clock
            if 0 < since <= wall:
                wall = max(upload, since)
            else:  # another machine's clock: its span from the batch's creation, after the answer
                # (this counts the moments between the batch's creation and the answer twice)
                wall = min(wall, upload + (end - datetime.fromisoformat(view["created_at"])).total_seconds())
            first = min(first, wall) if first is not None else None  # seen by a poll, after the end
    if counts.get("completed", 0) != view["jobs"]:
        raise RuntimeError(f"batch {batch['id']} ended with {counts} of {view['jobs']} jobs")
    return BatchRun(
        recordings=int(view["items"]),
        audio_seconds=audio_seconds,
        archive_bytes=(
            sum(f.stat().st_size for f in archive.rglob("*") if f.is_file())
            if archive.is_dir()
            else archive.stat().st_size
        ),
        upload_s=upload,
        first_result_s=first if first is not None else wall,
        wall_s=wall,
        completed=int(counts["completed"]),
        poll_ms=poll_ms,
    )


def run_batch_bench(
    path: Path,
    *,
    recordings: int,
    seconds: float,
    batch: int,
    engine_best: tuple[int, float],
    remeasure: Callable[[int], float] | None = None,
    channels: int = 1,
    source: str = "archive",
    on_files: Callable[[list[Path], int], float] | None = None,
) -> BatchRun:
    """A stack on the model; ``recordings`` recordings as one batch, uploaded as one archive
    (``source="archive"``) or read from a server folder under the stack's ``TONE_BATCH_ROOT``
    (``"folder"``: nothing uploaded); its rate beside the bare engine's best batched rate of the
    same run (``engine_best``: (B, audio s/s)). On a shared machine the engine's rate drifts between
    its table and this run, so ``remeasure`` takes the engine's rate at that B again right after,
    and the ratio is to the better of the two. ``on_files(files, streams)``: the bare engine's wall
    seconds on the same recordings (read from disk, channels split, ``streams`` at a time: what the
    worker does with them, without the platform), measured right after, once the stack is down."""
    import tempfile

    if source not in BATCH_SOURCES:
        raise ValueError(f"source must be one of {BATCH_SOURCES}, not {source!r}")
    with tempfile.TemporaryDirectory(prefix="tone-bench-batch-") as tmp:  # the archive, or the batch root
        root = Path(tmp)
        root.chmod(0o755)  # as root the servers run as the user "tone"
        extra = {"TONE_BATCH_ROOT": str(root)} if source == "folder" else {}
        with bench_stack(path, batch, extra_env=extra) as (url, key, _):
            if source == "folder":
                audio = batch_folder(root, recordings, seconds, channels=channels)
                run = batch_run(url, key, root / "calls", audio, directory="calls")
            else:
                suffix = {"archive": "zip", "piped": "piped.zip"}.get(source, source)
                archive = root / f"bench-batch.{suffix}"
                audio = batch_archive(archive, recordings, seconds, channels=channels)
                run = batch_run(url, key, archive, audio)
        if on_files is not None:
            if source != "folder":  # the archive's recordings as files, as the worker reads them
                batch_folder(root, recordings, seconds, channels=channels)
            same = audio / on_files(sorted((root / "calls").glob("*.wav")), batch * channels)
    best_b, best_rate = engine_best
    how = {
        "archive": "one archive",
        "folder": "one server folder",
        "piped": "one ZIP written as to a pipe",
    }.get(source, f"one {source}")
    print(
        f"\nbatch: {how} of {run.recordings} {'stereo ' if channels == 2 else ''}recordings "
        f"of {seconds:.0f} s "
        f"({run.archive_bytes / 1e6:.1f} MB) as one batch, worker batch {batch}"
    )
    per = " (channel-seconds: each channel is a stream)" if channels == 2 else ""
    print(f"  {run.rate:.1f} s of audio per wall second ({run.wall_s:.1f} s for {audio:.0f} s of audio{per})")
    reference = best_rate
    if remeasure is not None:
        again = remeasure(best_b)
        print(f"  the bare engine at B={best_b}: {best_rate:.1f} s/s in its table, {again:.1f} right after")
        reference = max(best_rate, again)
    share = 100 * run.rate / reference
    print(f"  = {share:.0f} % of the bare engine's best batched rate (B={best_b}: {reference:.1f})")
    if on_files is not None:
        print(
            f"  the bare engine on these recordings (read from disk, channels split, "
            f"{batch * channels} streams at a time): {same:.1f} s/s right after; "
            f"the batch = {100 * run.rate / same:.0f} % of it"
        )
    what = "POST /v1/batches" if source == "folder" else "upload"
    print(f"  {what} answered after {run.upload_s:.1f} s; first result after {run.first_result_s:.1f} s")
    print(f"  GET /v1/batches/{{id}} p95 {_p95(run.poll_ms):.0f} ms ({len(run.poll_ms)} polls)")
    return run


def _fresh_recognizer(path: Path, args: argparse.Namespace, threads: int) -> Any:
    """The model loaded afresh with the run's provider and its first precision."""
    from shared.asr.engine import Recognizer

    precision = args.precisions.split(",")[0]
    return Recognizer.load(path, providers=args.provider, threads=threads, precision=precision)


def engine_meter(path: Path, args: argparse.Namespace, threads: int) -> Callable[[int], float]:
    """Measures the bare engine's audio s/s at a B, loading the model afresh (the first precision)."""

    def measure(batch: int) -> float:
        return engine_rate(_fresh_recognizer(path, args, threads), batch, args.min_seconds, args.max_steps)[0]

    return measure


def files_meter(path: Path, args: argparse.Namespace, threads: int) -> Callable[[list[Path], int], float]:
    """The bare engine's wall seconds on recordings (``Recognizer.transcribe_many``, channels
    split, ``streams`` at a time), loading the model afresh (the first precision)."""

    def measure(files: list[Path], streams: int) -> float:
        rec = _fresh_recognizer(path, args, threads)
        rec.warm_up(streams)  # as the worker's model is, before its first job
        started = time.perf_counter()
        done = dict(rec.transcribe_many(files, batch=streams, channels="split"))
        if len(done) != len(files):
            raise RuntimeError(f"the engine transcribed {len(done)} of {len(files)} recordings")
        return time.perf_counter() - started

    return measure


def _redis_input_bytes(redis_url: str) -> int:
    import redis

    return int(redis.Redis.from_url(redis_url).info("stats")["total_net_input_bytes"])


def run_streams(n: int, starts: str, stream: Callable[[int, float], Awaitable[None]]) -> None:
    """``stream(i, start_at)`` for ``n`` simulated live streams in one event loop, stream ``i``'s
    first piece at ``start_at`` (:func:`start_offsets`; every connection is open by then: 2 s and
    10 ms per stream from now)."""
    import asyncio

    async def main() -> None:
        start_at = time.time() + 2.0 + n * 0.01
        offsets = start_offsets(n, starts)
        await asyncio.gather(*(stream(i, start_at + offsets[i]) for i in range(n)))

    asyncio.run(main())


def _live_streams(
    url: str, key: str, n: int, pieces: int, starts: str = "together"
) -> tuple[list[float], list[str]]:
    """``n`` live streams in one event loop (as the WebSocket clients), each sending 300 ms of audio
    every 300 ms over the HTTP calls on a connection of its own, first pieces as ``starts`` says
    (:func:`start_offsets`); returns every piece's latency in ms and the error answers. (A thread
    per stream with a blocking client, as before, took more CPU than the API it measured: 22 % of
    a core against the API's 14 % at 24 streams, on the same two cores.)"""
    import asyncio

    import aiohttp

    headers = {"Authorization": f"Bearer {key}"}
    latencies: list[float] = []
    errors: list[str] = []

    def form(state_id: str, k: int, audio: bytes) -> aiohttp.FormData:
        data = aiohttp.FormData()
        data.add_field("state_id", state_id)
        data.add_field("seq", str(k))
        data.add_field("file", audio, filename="piece.raw", content_type="application/octet-stream")
        return data

    async def stream(i: int, start_at: float) -> None:
        rng = np.random.default_rng(i)
        try:
            timeout = aiohttp.ClientTimeout(total=60)
            async with aiohttp.ClientSession(timeout=timeout, headers=headers) as client:
                async with client.post(f"{url}/transcribe/streaming") as opened:
                    if opened.status != 200:  # e.g. 503 over_capacity: admission refused the session
                        errors.append((await opened.text())[:200])
                        return
                    state_id = (await opened.json())["state_id"]
                for k in range(pieces):
                    await asyncio.sleep(max(0.0, start_at + k * CHUNK_SECONDS - time.time()))
                    audio = rng.normal(0, 2000, CHUNK_SAMPLES).astype(np.int16).tobytes()
                    t = time.perf_counter()
                    async with client.post(
                        f"{url}/transcribe/streaming/chunk", data=form(state_id, k, audio)
                    ) as r:
                        body = await r.read()
                    latencies.append((time.perf_counter() - t) * 1000)
                    if r.status != 200:
                        errors.append(body.decode(errors="replace")[:200])
                async with client.post(
                    f"{url}/transcribe/streaming/finalize", data={"state_id": state_id}
                ) as r:
                    await r.read()
        except Exception as exc:  # a refused or broken connection is an error of the run
            errors.append(f"{type(exc).__name__}: {exc}"[:200])

    run_streams(n, starts, stream)
    return latencies, errors


def _ws_streams(
    url: str, key: str, n: int, pieces: int, starts: str = "together"
) -> tuple[list[float], list[str]]:
    """``n`` live streams over ``/v1/stream`` in one event loop, each sending a 300 ms frame every
    300 ms with ``"acks": true``, first frames as ``starts`` says; a piece's latency is from its
    frame's sending to its ack."""
    import asyncio
    import json

    from websockets.asyncio.client import connect

    latencies: list[float] = []
    errors: list[str] = []
    ws_url = url.replace("http://", "ws://") + "/v1/stream"

    async def stream(i: int, start_at: float) -> None:
        rng = np.random.default_rng(i)
        try:
            async with connect(ws_url, additional_headers={"Authorization": f"Bearer {key}"},
                               open_timeout=60, max_queue=None) as ws:  # fmt: skip
                await ws.send(json.dumps({"sample_rate": SAMPLE_RATE, "acks": True}))
                for k in range(pieces):
                    await asyncio.sleep(max(0.0, start_at + k * CHUNK_SECONDS - time.time()))
                    audio = rng.normal(0, 2000, CHUNK_SAMPLES).astype(np.int16).tobytes()
                    t = time.perf_counter()
                    await ws.send(audio)
                    while True:
                        message = json.loads(await asyncio.wait_for(ws.recv(), 60))
                        if message["type"] == "error":
                            errors.append(str(message)[:200])
                            return
                        if message["type"] == "ack":
                            break
                    latencies.append((time.perf_counter() - t) * 1000)
                await ws.send(json.dumps({"type": "end"}))
                while json.loads(await asyncio.wait_for(ws.recv(), 60))["type"] != "final":
                    pass
        except Exception as exc:  # a refused or broken connection is an error of the run
            errors.append(f"{type(exc).__name__}: {exc}"[:200])

    run_streams(n, starts, stream)
    return latencies, errors


SHERPA_SERVER = "sherpa-onnx-online-websocket-server"  # from the PyPI package sherpa-onnx-bin (bench extra)


@contextlib.contextmanager
def sherpa_server(path: Path, threads: int, batch: int) -> Iterator[str | None]:
    """sherpa-onnx's C++ streaming WebSocket server (the peer, run only here) on ``path``: its T-one
    loader, 8 kHz in, ``threads`` ORT threads, up to ``batch`` streams per model call. Yields its
    ws:// URL on loopback, or None when the binary is not installed."""
    import shutil
    import subprocess
    import sys
    import tempfile

    from shared.localstack.servers import wait_ready

    here = str(Path(sys.executable).parent)
    exe = shutil.which(SHERPA_SERVER, path=here + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        print(f"  {SHERPA_SERVER}: not installed (pip install -e '.[bench]'); skipped")
        yield None
        return
    root = Path(tempfile.mkdtemp(prefix="tone-sherpa-live-"))
    port = _free_port()
    model, tokens = sherpa_model(path, root)
    cmd = [exe, f"--t-one-ctc-model={model}", f"--tokens={tokens}", f"--port={port}",
           f"--input-sample-rate={SAMPLE_RATE}", f"--sample-rate={SAMPLE_RATE}", "--num-work-threads=1",
           f"--num-threads={threads}", f"--max-batch-size={batch}", "--loop-interval-ms=10"]  # fmt: skip
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root)  # it writes log.txt
    try:
        wait_ready("127.0.0.1", port, timeout=60, name=SHERPA_SERVER, log=root / "server.log", pid=proc.pid)
        yield f"ws://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _sherpa_streams(
    ws_url: str, n: int, pieces: int, starts: str = "together"
) -> tuple[list[float], list[str]]:
    """``n`` live streams to sherpa-onnx's server in one event loop, each a 300 ms frame (float32
    samples, its protocol) every 300 ms, first frames as ``starts`` says. The server sends one
    result per 300 ms chunk it decodes (the first piece's comes with the second: its model call
    waits for the next chunk), so a piece's latency is from its sending to the result that follows
    it, pieces and results paired in order from the second piece on; then "Done" and the final
    result."""
    import asyncio

    from websockets.asyncio.client import connect

    latencies: list[float] = []
    errors: list[str] = []

    async def stream(i: int, start_at: float) -> None:
        rng = np.random.default_rng(i)
        sent: list[float] = []
        try:
            async with connect(ws_url, open_timeout=60, max_queue=None) as ws:

                async def receive() -> None:
                    got = 0
                    while got < pieces - 1:
                        await asyncio.wait_for(ws.recv(), 60)
                        latencies.append((time.perf_counter() - sent[got + 1]) * 1000)
                        got += 1

                receiver = asyncio.create_task(receive())
                for k in range(pieces):
                    await asyncio.sleep(max(0.0, start_at + k * CHUNK_SECONDS - time.time()))
                    audio = (rng.normal(0, 2000, CHUNK_SAMPLES) / 32768.0).astype(np.float32).tobytes()
                    sent.append(time.perf_counter())
                    await ws.send(audio)
                await receiver
                await ws.send("Done")
                with contextlib.suppress(Exception):  # the last results, then the server closes
                    while True:
                        await asyncio.wait_for(ws.recv(), 10)
        except Exception as exc:  # a refused or broken connection is an error of the run
            errors.append(f"{type(exc).__name__}: {exc}"[:200])

    run_streams(n, starts, stream)
    return latencies, errors


@dataclass
class LongRun:
    """Long live sessions: at every ``marks`` entry (piece index, perf_counter, Redis's
    total_net_input_bytes), each piece's latency in ms (per piece index, one per session), the
    phrases the sessions released, and the errors."""

    sessions: int
    marks: list[tuple[int, float, int]]
    latencies: list[list[float]]
    phrases: int
    errors: list[str]

    def rows(self) -> list[tuple[int, int, float, float, float]]:
        """(first piece, last piece, KiB into Redis per piece and session, pieces/s, mean latency ms)
        per interval between two marks."""
        out = []
        for (a, t0, b0), (b, t1, b1) in zip(self.marks, self.marks[1:]):
            ms = [x for k in range(a, b) for x in self.latencies[k]]
            per_piece = (b1 - b0) / ((b - a) * self.sessions) / 1024
            out.append(
                (a, b, per_piece, (b - a) * self.sessions / (t1 - t0), float(np.mean(ms)) if ms else 0.0)
            )
        return out


def long_sessions(
    url: str, key: str, redis_url: str, sessions: int, pieces: int, every: int = 200
) -> LongRun:
    """``sessions`` ``/v1/stream`` sessions of ``pieces`` 300 ms pieces of speech-like audio (the
    tones model closes its phrases), each piece sent as soon as the last was acknowledged, so that
    minutes of a call pass in seconds; Redis's input bytes noted every ``every`` pieces of the
    first session: what a piece costs the store early and late in a long call."""
    import asyncio
    import json

    from websockets.asyncio.client import connect

    audio = speech_audio(pieces * CHUNK_SECONDS + 1, seed=1)
    run = LongRun(sessions, [], [[] for _ in range(pieces)], 0, [])

    def mark(k: int) -> None:
        run.marks.append((k, time.perf_counter(), _redis_input_bytes(redis_url)))

    async def stream(i: int) -> None:
        try:
            async with connect(url.replace("http://", "ws://") + "/v1/stream", open_timeout=60,
                               additional_headers={"Authorization": f"Bearer {key}"}) as ws:  # fmt: skip
                await ws.send(json.dumps({"sample_rate": SAMPLE_RATE, "acks": True}))
                for k in range(pieces):
                    if i == 0 and k % every == 0:
                        mark(k)
                    t = time.perf_counter()
                    await ws.send(audio[k * CHUNK_SAMPLES : (k + 1) * CHUNK_SAMPLES].tobytes())
                    while (message := json.loads(await asyncio.wait_for(ws.recv(), 60)))["type"] != "ack":
                        if message["type"] == "error":
                            raise RuntimeError(str(message)[:200])
                        run.phrases += message["type"] == "phrase"
                    run.latencies[k].append((time.perf_counter() - t) * 1000)
                if i == 0:
                    mark(pieces)
                await ws.send(json.dumps({"type": "end"}))
                while json.loads(await asyncio.wait_for(ws.recv(), 60))["type"] != "final":
                    pass
        except Exception as exc:  # a refused or broken session is an error of the run
            run.errors.append(f"{type(exc).__name__}: {exc}"[:200])

    async def main() -> None:
        await asyncio.gather(*(stream(i) for i in range(sessions)))

    asyncio.run(main())
    return run


def run_long_session_bench(path: Path, sessions: int, pieces: int) -> None:
    """What a piece costs late in a long call against early in it (``long_sessions``)."""
    minutes = pieces * CHUNK_SECONDS / 60
    print(
        f"\nlong live sessions ({path.parent.name} model): {sessions} /v1/stream sessions of"
        f" {minutes:.0f} min ({pieces} pieces of 300 ms), each piece sent once the last was answered"
    )
    with bench_stack(path, 64) as (url, key, env):
        long_sessions(url, key, env["REDIS_URL"], 1, 10)  # the worker's model and first round: warm
        run = long_sessions(url, key, env["REDIS_URL"], sessions, pieces)
    print(f"  {'pieces':>11s}  {'KiB into Redis per piece':>24s}  {'pieces/s':>8s}  {'latency mean ms':>15s}")
    for a, b, kib, rate, ms in run.rows():
        print(f"  {a:5d}-{b:5d}  {kib:24.1f}  {rate:8.1f}  {ms:15.1f}")
    print(
        f"  {run.phrases} phrases released; errors: {len(run.errors)} {run.errors[:2] if run.errors else ''}"
    )


def run_stream_bench(
    path: Path,
    *,
    counts: list[int],
    seconds: float,
    step_ms: dict[int, float],
    protocols: tuple[str, ...] = ("http", "ws"),
    live_workers: int = 1,
    pin_live: bool = False,
    starts: tuple[str, ...] = ("together",),
) -> None:
    """N simulated live streams (300 ms pieces at real-time pace, over the HTTP streaming calls and
    over ``/v1/stream``) against a stack on the model: latency from a piece's sending to its
    answer, for rising N, once per way of starting the streams in ``starts`` (see
    :func:`start_offsets`); with ``live_workers`` live worker processes (``pin_live``: each on a
    CPU of its own, see :func:`bench_stack`)."""
    if step_ms:  # issue 17's yardstick: N against the engine's best batched rate of this run
        capacity = max(b * CHUNK_SECONDS / (ms / 1000) for b, ms in step_ms.items())
        print(
            f"\ncapacity: the engine's best batched rate in this run, {capacity:.1f} s of audio per second"
            f" = {capacity:.1f} real-time streams; 80 % of it: {0.8 * capacity:.1f} streams"
        )
    for protocol in protocols:
        if protocol == "sherpa":
            _sherpa_table(path, counts, seconds, starts)
        else:
            _stream_table(path, protocol, counts, seconds, step_ms, live_workers, pin_live, starts)


def _sherpa_table(
    path: Path, counts: list[int], seconds: float, starts: tuple[str, ...] = ("together",)
) -> None:
    """The peer at the same N, pace, starts and audio: sherpa-onnx's streaming server on the same
    model, the whole machine's cores as its ORT threads, up to 64 streams per model call (our live
    worker's MAX_SESSIONS)."""
    pieces = int(seconds / CHUNK_SECONDS)
    threads = os.cpu_count() or 1
    print(
        f"\nstreaming to the peer, sherpa-onnx's {SHERPA_SERVER} (C++; {threads} ORT threads, batches "
        f"of up to 64): N live streams, 300 ms pieces at real-time pace for {seconds:.0f} s each"
    )
    print(f"{'starts':>8} {'N':>4} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    best = dict.fromkeys(starts, 0)
    with sherpa_server(path, threads, 64) as url:
        if url is None:
            return
        for how in starts:
            for n in counts:
                latencies, errors = _sherpa_streams(url, n, pieces, how)
                if errors or not latencies:
                    first = errors[0] if errors else "no results"
                    print(f"{how:>8} {n:>4} errors: {len(errors)} (first: {first})")
                    continue
                p50, p95, p99 = (float(np.percentile(latencies, q)) for q in (50, 95, 99))
                print(f"{how:>8} {n:>4} {p50:>8.0f} {p95:>8.0f} {p99:>8.0f}")
                if p95 < 300:
                    best[how] = max(best[how], n)
    for how in starts:
        print(f"  largest N with p95 under 300 ms, streams started {how}: {best[how]}")


WARM_STREAMS, WARM_PIECES = 8, 4  # the live tables' warm-up, before their first N


def _stream_table(
    path: Path,
    protocol: str,
    counts: list[int],
    seconds: float,
    step_ms: dict[int, float],
    live_workers: int = 1,
    pin_live: bool = False,
    starts: tuple[str, ...] = ("together",),
) -> None:
    pieces = int(seconds / CHUNK_SECONDS)
    over = "the HTTP streaming calls" if protocol == "http" else "/v1/stream (WebSocket)"
    workers = f", {live_workers} live worker processes" if live_workers > 1 else ""
    if pin_live:
        workers += ", each on a CPU of its own with 1 ORT thread"
    print(
        f"\nstreaming over {over}: N live streams, 300 ms pieces at real-time pace for {seconds:.0f} s "
        f"each{workers}"
    )
    print(
        f"{'starts':>8} {'N':>4} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'outside model':>14}"
        f" {'Redis KiB/s/stream':>19} {'replays':>8}"
    )
    best = dict.fromkeys(starts, 0)
    run = _live_streams if protocol == "http" else _ws_streams
    with bench_stack(path, max(counts), live_workers, pin_live) as (url, key, env):
        logs = Path(env["TONE_DATA_DIR"]) / "logs"
        # a few pieces first, not counted: the live worker loads its model on its first session, and
        # that (seconds) fell on the first N's pieces, a start-up cost, not the capacity measured here
        _, errors = run(url, key, min(WARM_STREAMS, max(counts)), WARM_PIECES, "together")
        if errors:
            print(f"  (warm-up: {len(errors)} errors, first: {errors[0]})")
        for how in starts:
            for n in counts:
                before = _redis_input_bytes(env["REDIS_URL"])
                replays_before = _replays(logs)
                latencies, errors = run(url, key, n, pieces, how)
                redis_rate = (_redis_input_bytes(env["REDIS_URL"]) - before) / n / seconds / 1024
                if errors:
                    print(f"{how:>8} {n:>4} errors: {len(errors)} (first: {errors[0]})")
                    continue
                time.sleep(0.2)  # the logs' last lines
                replays = _replays(logs) - replays_before
                p50, p95, p99 = (float(np.percentile(latencies, q)) for q in (50, 95, 99))
                model = step_ms[min(step_ms, key=lambda b: abs(b - n))]  # a model step of ~N streams
                outside = max(0.0, 1 - model / p50) if p50 else float("nan")
                print(f"{how:>8} {n:>4} {p50:>8.0f} {p95:>8.0f} {p99:>8.0f} {100 * outside:>13.0f}%"
                      f" {redis_rate:>19.0f} {replays:>8}")  # fmt: skip
                if p95 < 300:
                    best[how] = max(best[how], n)
    for how in starts:
        print(f"  largest N with p95 under 300 ms, streams started {how}: {best[how]}")
    print("  replays: a worker reloaded sessions from their checkpoints and replayed their journals")


# -- search: 1 000 000 phrases in one tenant, built in SQL ----------------------------------------------

# real words the queries use, spread over the frequency ranks of a synthetic vocabulary
SEARCH_WORDS = (
    "договор", "расторгнуть", "оператор", "тариф", "перезвонить", "жалоба", "возврат", "подключить",
    "интернет", "счет", "оплата", "менеджер", "претензия", "скидка", "отказаться", "заявка",
)  # fmt: skip
SEARCH_QUERIES = ("расторгнуть договор", "тариф скидка", "возврат оплата", "жалоба оператор",
                  "подключить интернет", "перезвонить менеджер", "отказаться заявка",
                  "счет претензия")  # fmt: skip
SYLLABLES = ("ба", "ве", "го", "ду", "жи", "зо", "ка", "ли", "му", "но", "пе", "ро", "су", "ти", "фа",
             "хо", "це", "чу", "ша", "ям")  # fmt: skip


def search_vocabulary(size: int) -> list[str]:
    """``size`` words by frequency rank: the query words at ranks 8, 16, ..., 128, syllable words between."""
    words = []
    for r in range(1, size + 1):
        if r % 8 == 0 and r // 8 <= len(SEARCH_WORDS):
            words.append(SEARCH_WORDS[r // 8 - 1])
        else:
            words.append(SYLLABLES[r % 20] + SYLLABLES[(r // 20) % 20] + SYLLABLES[(r // 400) % 20])
    return words


def _build_search_rows(conn: Any, tenant: str, jobs: int, per_job: int, vocab: int, offset: int) -> None:
    """``jobs`` completed jobs of ``per_job`` 8-word phrases each, words drawn log-uniformly by rank
    (Zipf-like) from ``search_vocabulary(vocab)``, with metadata ``agent`` (50 agents) and ``region``
    (4). The phrases are written with COPY; their tsvector is PostgreSQL's generated column."""
    import uuid

    from sqlalchemy import text

    conn.execute(
        text(
            "INSERT INTO jobs (id, tenant_id, kind, status, priority, queue, options, source, progress,"
            " attempts, cancel_requested, duration, filename, client_metadata, created_at)"
            " SELECT md5(:tenant || g)::uuid, CAST(:tenant AS uuid), 'job', 'completed', 2, 'cpu',"
            " jsonb_build_object('channels', 'split', 'batch_name', 'calls/' || g || '.wav'), 'upload', 1,"
            " 1, false, :per_job * 6.0, g || '.wav',"
            " jsonb_build_object('agent', 'agent' || (g % 50), 'region', 'region' || (g % 4)),"
            " now() - make_interval(secs => g + :offset)"
            " FROM generate_series(1, :jobs) g"
        ),
        {"tenant": tenant, "jobs": jobs, "per_job": per_job, "offset": offset},
    )
    ids = [
        str(r[0])
        for r in conn.execute(
            text("SELECT md5(:tenant || g)::uuid FROM generate_series(1, :jobs) g"),
            {"tenant": tenant, "jobs": jobs},
        )
    ]
    words = np.array(search_vocabulary(vocab), dtype=object)
    rng = np.random.default_rng(offset)
    ranks = np.minimum(vocab, np.floor(np.exp(rng.random((jobs * per_job, 8)) * np.log(vocab))).astype(int))
    drawn = words[ranks - 1]
    raw = conn.connection.dbapi_connection
    with (
        raw.cursor() as cur,
        cur.copy(
            "COPY transcript_phrases (job_id, idx, tenant_id, channel, start_time, end_time, text) FROM STDIN"
        ) as copy,
    ):
        n = 0
        for job in ids:
            for p in range(per_job):
                copy.write_row(
                    (uuid.UUID(job), p, uuid.UUID(tenant), p % 2, p * 6.0, p * 6.0 + 5.0, " ".join(drawn[n]))
                )
                n += 1


def run_search_bench(phrases: int = 1_000_000, other: int = 250_000, rounds: int = 12) -> dict[str, Any]:
    """``tone-platform bench --search-only``: a PostgreSQL of its own, the schema at head, ``phrases``
    phrases of one tenant and ``other`` of another built in SQL; then every query of SEARCH_QUERIES
    ``rounds`` times through the API's own search code (``shared.platform.search_query``), plain and with a
    metadata filter, interleaved; p50/p95 and the plan of one query."""
    import shutil
    import tempfile
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    from shared.db.migrate import alembic_upgrade
    from shared.localstack import servers
    from shared.platform.search_query import SearchFilter, hits_query, search

    root = Path(tempfile.mkdtemp(prefix="tone-search-bench-"))
    root.chmod(0o755)
    pg = servers.start_postgres(root / "postgres")
    try:
        alembic_upgrade(pg.url)
        engine = create_engine(pg.url)
        tenant, neighbour = uuid.uuid4(), uuid.uuid4()
        per_job = 50
        started = time.perf_counter()
        with engine.begin() as conn:
            for t, name in ((tenant, "bench"), (neighbour, "neighbour")):
                conn.execute(
                    text("INSERT INTO tenants (id, name, webhook_secret) VALUES (:t, :n, 'whsec_x')"),
                    {"t": t, "n": name},
                )
            conn.execute(text("DROP INDEX ix_transcript_phrases_tsv"))  # built once, after the rows
            _build_search_rows(conn, str(tenant), phrases // per_job, per_job, 5000, 0)
            _build_search_rows(conn, str(neighbour), other // per_job, per_job, 5000, 10**6)
            conn.execute(text("CREATE INDEX ix_transcript_phrases_tsv ON transcript_phrases USING gin (tsv)"))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE transcript_phrases"))
            conn.execute(text("VACUUM ANALYZE jobs"))
            size = conn.execute(
                text("SELECT pg_size_pretty(pg_total_relation_size('transcript_phrases'))")
            ).scalar()
        print(f"search: {phrases} + {other} phrases built in {time.perf_counter() - started:.0f} s ({size})")
        caller = tenant  # the searched tenant, as GET /v1/search passes its caller's
        timings: dict[str, list[float]] = {"two words": [], "two words + metadata.agent": []}
        hits: dict[str, list[int]] = {k: [] for k in timings}
        with Session(engine) as db:
            for q in SEARCH_QUERIES:  # warm the cache once
                search(db, caller, SearchFilter(q=q))
            for r in range(rounds):
                for q in SEARCH_QUERIES:
                    for kind, meta in (
                        ("two words", {}),
                        ("two words + metadata.agent", {"agent": f"agent{r % 50}"}),
                    ):
                        t0 = time.perf_counter()
                        page = search(db, caller, SearchFilter(q=q, metadata=meta))
                        timings[kind].append((time.perf_counter() - t0) * 1000)
                        hits[kind].append(len(page["data"]))
                db.rollback()
            counts = {
                q: db.execute(
                    text(
                        "SELECT count(*) FROM transcript_phrases"
                        " WHERE tsv @@ (websearch_to_tsquery('russian', :q) && CAST(:tq AS tsquery))"
                    ),
                    {"q": q, "tq": f"'@{tenant.hex}'"},
                ).scalar()
                for q in SEARCH_QUERIES
            }
            sql, params = hits_query(caller, SearchFilter(q=SEARCH_QUERIES[0], metadata={"agent": "agent7"}))
            plan = db.execute(
                text("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + sql), params
            ).scalars()
            plan_text = "\n".join(plan)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"load average during the run: {load} ({os.cpu_count()} cores; other work skews p95)")
        print("matching phrases per query (all pages):", ", ".join(f"{q}: {n}" for q, n in counts.items()))
        result: dict[str, Any] = {"counts": counts, "plan": plan_text}
        for kind, values in timings.items():
            p50, p95 = float(np.percentile(values, 50)), _p95(values)
            result[kind] = (p50, p95)
            print(f"  {kind:<28} p50 {p50:6.1f} ms   p95 {p95:6.1f} ms   ({len(values)} queries, first page)")
            n = len(SEARCH_QUERIES)
            per_query = {q: _p95(values[i::n]) for i, q in enumerate(SEARCH_QUERIES)}
            print("    p95 per query: " + ", ".join(f"{q} {ms:.1f}" for q, ms in per_query.items()))
        print("plan (EXPLAIN ANALYZE) of the first query with metadata.agent=agent7:\n" + plan_text)
        engine.dispose()
        return result
    finally:
        servers.stop(pg)
        shutil.rmtree(root, ignore_errors=True)
