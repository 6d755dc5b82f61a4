"""``tone-platform bench`` (``make bench``): the engine, the platform, live streams and batches."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_bench(args: argparse.Namespace) -> int:
    from shared.dev.bench import run_bench

    return run_bench(args)


def register(sub: Any) -> None:
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
    p.add_argument("--platform-poll", type=float, default=None, metavar="SECONDS",
                   help="poll each job this often, ignoring Retry-After (default: as it says)")  # fmt: skip
    p.add_argument(
        "--stream-counts", default="1,4,8,16,32", help="live streams to simulate, rising ('' skips)"
    )
    p.add_argument("--stream-seconds", type=float, default=6.0, help="how long each simulated stream talks")
    p.add_argument("--stream-protocols", default="http,ws,sherpa",
                   help="any of http (HTTP calls), ws (/v1/stream), sherpa (the peer)")  # fmt: skip
    p.add_argument("--stream-starts", default="together,spread",
                   help="together (every stream's pieces in the same instant, the worst case), spread "
                        "(first pieces at random moments within 300 ms, as unrelated calls), or both: "
                        "together,spread")  # fmt: skip
    p.add_argument("--long-session-pieces", type=int, default=1200, metavar="N",
                   help="then long /v1/stream sessions of N pieces on the tones model, each sent once "
                        "the last was answered: Redis bytes per piece early and late (0: skip)")  # fmt: skip
    p.add_argument("--long-sessions", type=int, default=4, help="how many of those sessions at once")
    p.add_argument("--live-workers", type=int, default=1,
                   help="live worker processes in the streaming runs (-c 1 each, as up runs it)")  # fmt: skip
    p.add_argument("--pin-live-workers", action="store_true",
                   help="each live worker on a CPU of its own, 1 ORT thread: one-core machines")  # fmt: skip
    p.add_argument("--batch-run", type=int, default=32, metavar="N",
                   help="then one archive of N recordings as one batch to a new stack (0: skip)")  # fmt: skip
    p.add_argument("--batch-run-seconds", type=float, default=30.0, help="length of each of those recordings")
    p.add_argument("--batch-run-channels", type=int, default=1, choices=(1, 2),
                   help="2: stereo calls, 2 streams each (counted in channel-seconds)")  # fmt: skip
    p.add_argument("--batch-run-source", default="archive,folder",
                   help="archive (one ZIP uploaded with the request), piped (the same ZIP written "
                        "as to a pipe: every entry's sizes after its data, as Go writes them), tar.gz, "
                        "tar.xz (the same recordings as one tar.gz, tar.xz), "
                        "folder (the same files in a server folder under TONE_BATCH_ROOT: nothing "
                        "uploaded), a comma list of them")  # fmt: skip
    p.add_argument("--batch-only", action="store_true",
                   help="only the batch run (after the engine at B=16 and 32, for its ratio)")  # fmt: skip
    p.add_argument("--host-batches", default="1,16,64,256,1024",
                   help="the engine alone on the null model at these B ('' skips)")  # fmt: skip
    p.add_argument("--null-model", default=".cache/test-models/null/model.onnx")
    p.add_argument("--tones-model", default=".cache/test-models/tones/model.onnx")
    p.add_argument("--lm-words", type=int, default=20000,
                   help="beam search vs greedy with an ARPA LM of this many words (0 skips)")  # fmt: skip
    p.add_argument("--decoder-workers", type=int, default=2, help="decoder processes for the pooled beam run")
    p.add_argument("--lm-seconds", type=float, default=30.0, help="each of the 16 tones-model recordings")
    p.add_argument("--lm-cost-seconds", type=float, default=10.0,
                   help="each of the 4 cost-model recordings (flat frames: slow beam search)")  # fmt: skip
    p.add_argument("--sherpa-batches", default="1,16",
                   help="our engine beside sherpa-onnx (the bench extra) at these B ('' skips)")  # fmt: skip
    p.add_argument("--sherpa-seconds", type=float, default=6.0, help="audio per stream for that comparison")
    p.add_argument("--text-only", action="store_true",
                   help="only ITN and redaction per audio hour, beside the engine at B=1 and 16")  # fmt: skip
    p.add_argument("--search-only", action="store_true",
                   help="only the search benchmark (rows built in SQL, own PostgreSQL)")  # fmt: skip
    p.add_argument("--search-phrases", type=int, default=1_000_000, help="phrases of the searched tenant")
    p.add_argument("--skip-processes", action="store_true",
                   help="skip the CPU's processes-per-core comparison (e.g. on a GPU run)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--provider", default="auto")
    p.set_defaults(func=cmd_bench)
