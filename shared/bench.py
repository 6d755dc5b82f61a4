"""``make bench``: the engine's throughput on the cost-faithful model, B=1 against batched stepping,
and both against this machine's own matrix-multiply rate on the model's shapes (the ceiling).

Every figure comes from one run on one machine; ratios, not absolute numbers, are what to compare.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from shared.asr.types import CHUNK_SAMPLES, SAMPLE_RATE

CHUNK_SECONDS = CHUNK_SAMPLES / SAMPLE_RATE


def model_flops(path: Path) -> tuple[float, int]:
    """FLOPs of one 300 ms chunk of one stream (MatMul, Gemm, Conv), and the parameter count."""
    import onnx
    from onnx import numpy_helper, shape_inference

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
                flops += 2.0 * np.prod(a[:-1]) * a[-1] * b[-1]
        elif node.op_type == "Conv":
            w, out = shapes.get(node.input[1]), shapes.get(node.output[0])
            if w and out:
                flops += 2.0 * np.prod(out) * np.prod(w[1:])
    del numpy_helper
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


def run_bench(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    from shared.asr.engine import Recognizer

    path = Path(args.model) if args.model else None
    if path is None or not path.exists():
        from shared.devmodels.cost import build_cost_model

        path = build_cost_model(path or Path(".cache/test-models/cost/model.onnx"))
    threads = args.threads or os.cpu_count() or 1
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
    if cores > 1:
        print(f"\n[{cores} processes x 1 thread, float16]", flush=True)
        for b in (1, best_b):
            rate = processes_rate(path, cores, b, args.min_seconds)
            rows.append((f"{cores}proc x1", b, rate, 0.0))
            print(f"  B={b:<3d} {rate:8.1f} s audio/s in total", flush=True)
    peak = matmul_rate(threads, rows=best_b * 10)
    ceiling = peak / (flops / CHUNK_SECONDS)
    print(f"\nceiling: float32 MatMul on the model's shapes at {best_b * 10} rows: {peak / 1e9:.1f} GFLOP/s")
    print(f"         = {ceiling:.1f} s of audio per second if the model were nothing but those MatMuls\n")
    print(f"{'run':<10} {'B':>4} {'audio s/s':>10} {'x B=1':>7} {'% ceiling':>10} {'s per s':>8}")
    base = {p: r for p, b, r, _ in rows if b == 1}
    for precision, b, rate, _ in rows:
        print(
            f"{precision:<10} {b:>4} {rate:>10.1f} {rate / base[precision]:>7.2f} "
            f"{100 * rate / ceiling:>9.1f}% {1 / rate:>8.4f}"
        )
    return 0
