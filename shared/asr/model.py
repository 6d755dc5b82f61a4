"""The acoustic model: locate, check the contract, adapt float16 for the CPU, run a batch.

T-one's released ``model.onnx`` stores float16 weights and computes in float16. ONNX Runtime's CPU
kernels for float16 are few; where one is missing, ORT inserts casts and computes that node in
float32. That is how the reference pipeline runs the file, so it is our default: the same numbers
as the reference, phrase for phrase. ``precision="float32"`` instead rewrites the graph once at
load to compute in float32 throughout (initializers, constants and casts), keeping the float16
``state`` input and ``state_next`` output: one cast of the state in, one out. ``make bench``
compares the two; see the README's performance section.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from .errors import ModelContractError, ModelNotFoundError
from .state_bank import Lanes, StateBank
from .types import CHUNK_SAMPLES, FRAMES_PER_CHUNK, STATE_SIZE, VOCAB_SIZE

if TYPE_CHECKING:
    from .stream import StreamState

HF_REPO = "t-tech/T-one"
MODEL_FILE = "model.onnx"
LM_FILE = "kenlm.bin"

# name -> (ONNX element type name, shape without the batch axis)
CONTRACT_INPUTS = {"signal": ("int32", (CHUNK_SAMPLES, 1)), "state": ("float16", (STATE_SIZE,))}
CONTRACT_OUTPUTS = {
    "logprobs": ("float32", (FRAMES_PER_CHUNK, VOCAB_SIZE)),
    "state_next": ("float16", (STATE_SIZE,)),
}
_HOW_TO = (
    "Set TONE_MODEL_PATH (or pass --model) to T-one's model.onnx, or to a directory holding model.onnx "
    "and optionally kenlm.bin (download them from https://huggingface.co/t-tech/T-one on a machine "
    "with internet), or let the engine download t-tech/T-one from Hugging Face on a machine that can "
    "reach it."
)


@dataclass(frozen=True)
class ModelFiles:
    model: Path
    lm: Path | None


def locate_model(path: str | os.PathLike[str] | None, *, download: bool = True) -> ModelFiles:
    """A model file (and kenlm.bin beside it), from a path or, when None, from Hugging Face."""
    if path:
        p = Path(path).expanduser()
        if p.is_dir():
            model, lm = p / MODEL_FILE, p / LM_FILE
            if not model.is_file():
                raise ModelNotFoundError(f"the directory {p} holds no {MODEL_FILE}. {_HOW_TO}")
            return ModelFiles(model, lm if lm.is_file() else None)
        if p.is_file():
            lm = p.with_name(LM_FILE)
            return ModelFiles(p, lm if lm.is_file() else None)
        raise ModelNotFoundError(f"no model at {p}: no such file or directory. {_HOW_TO}")
    if not download:
        raise ModelNotFoundError(f"no model path was given. {_HOW_TO}")
    return _download()


def _reachable(endpoint: str) -> None:
    """Fail fast (instead of the hub client's minute of retries) when the hub's host can't resolve."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(endpoint).hostname or endpoint
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        raise ConnectionError(f"cannot resolve {host}: {exc}") from exc


def _download() -> ModelFiles:
    try:
        from huggingface_hub import constants, hf_hub_download

        try:  # the hub's cache first: no network needed once downloaded
            model = Path(hf_hub_download(HF_REPO, MODEL_FILE, local_files_only=True))
        except Exception:
            if not constants.HF_HUB_OFFLINE:
                _reachable(constants.ENDPOINT)
            model = Path(hf_hub_download(HF_REPO, MODEL_FILE))
    except Exception as exc:  # any failure of the hub client means "no model here"
        raise ModelNotFoundError(
            f"no model path was given and downloading {HF_REPO}/{MODEL_FILE} from Hugging Face failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}). {_HOW_TO}"
        ) from exc
    lm: Path | None = None
    for local_only in (True, False):
        try:
            lm = Path(hf_hub_download(HF_REPO, LM_FILE, local_files_only=local_only))
            break
        except Exception:
            continue
    return ModelFiles(model, lm)


def _type_name(elem_type: int) -> str:
    import onnx

    return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def check_contract(model: object) -> None:
    """Raise ModelContractError naming every difference from T-one's I/O contract."""
    graph = model.graph  # type: ignore[attr-defined]
    initializers = {i.name for i in graph.initializer}
    problems: list[str] = []
    for kind, values, contract in (
        ("input", [v for v in graph.input if v.name not in initializers], CONTRACT_INPUTS),
        ("output", list(graph.output), CONTRACT_OUTPUTS),
    ):
        found = {v.name: v for v in values}
        if set(found) != set(contract):
            problems.append(f"{kind}s are {sorted(found)}, expected {sorted(contract)}")
        for name, (dtype, shape) in contract.items():
            if name not in found:
                continue
            t = found[name].type.tensor_type
            got_dtype = _type_name(t.elem_type)
            if got_dtype != dtype:
                problems.append(f"{kind} '{name}' is {got_dtype}, expected {dtype}")
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            if len(dims) != len(shape) + 1 or any(g is not None and g != w for g, w in zip(dims[1:], shape)):
                shown = ["B" if d is None else d for d in dims]
                problems.append(
                    f"{kind} '{name}' has shape {shown}, expected [B, {', '.join(map(str, shape))}]"
                )
    if problems:
        raise ModelContractError(
            "the model does not honour T-one's contract (signal int32 [B,2400,1], state float16 "
            f"[B,{STATE_SIZE}] -> logprobs float32 [B,10,{VOCAB_SIZE}], state_next float16 "
            f"[B,{STATE_SIZE}]): " + "; ".join(problems)
        )


def float16_to_float32(model: object) -> bool:
    """Rewrite the graph in place to compute in float32, keeping float16 graph inputs and outputs.

    Returns True when anything was changed.
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    fp16, fp32 = TensorProto.FLOAT16, TensorProto.FLOAT
    changed = False

    def tensor32(t: onnx.TensorProto) -> onnx.TensorProto:
        return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name)

    def walk(graph: onnx.GraphProto) -> None:
        nonlocal changed
        for i, init in enumerate(graph.initializer):
            if init.data_type == fp16:
                graph.initializer[i].CopyFrom(tensor32(init))
                changed = True
        for node in graph.node:
            for attr in node.attribute:
                if node.op_type == "Cast" and attr.name == "to" and attr.i == fp16:
                    attr.i = fp32
                    changed = True
                elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == fp16:
                    attr.t.CopyFrom(tensor32(attr.t))
                    changed = True
                elif attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        walk(g)
        for vi in graph.value_info:
            if vi.type.tensor_type.elem_type == fp16:
                vi.type.tensor_type.elem_type = fp32

    g = model.graph  # type: ignore[attr-defined]
    walk(g)
    # Graph inputs and outputs keep float16: cast inputs up right after entry, outputs down at exit.
    for inp in g.input:
        if inp.type.tensor_type.elem_type == fp16:
            inner = inp.name + "__fp32"
            for node in g.node:
                node.input[:] = [inner if x == inp.name else x for x in node.input]
            g.node.insert(0, onnx.helper.make_node("Cast", [inp.name], [inner], to=fp32))
            changed = True
    for out in g.output:
        if out.type.tensor_type.elem_type == fp16:
            inner = out.name + "__fp32"
            for node in g.node:
                node.output[:] = [inner if x == out.name else x for x in node.output]
                node.input[:] = [inner if x == out.name else x for x in node.input]
            g.node.append(onnx.helper.make_node("Cast", [inner], [out.name], to=fp16))
            changed = True
    return changed


def runtime_clash() -> str | None:
    """Why CUDA may be missing although onnxruntime-gpu is installed: both runtimes are, and they
    ship the same module (the one installed last wins). None when only one is installed."""
    from importlib import metadata

    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    if len(found) < 2:
        return None
    return (
        f"both {found[0]} and {found[1]} are installed; they ship the same module and the one "
        "installed last wins: uninstall both, then install only the 'gpu' extra (or only 'cpu')"
    )


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def resolve_providers(providers: str | Sequence[str] | None) -> list[str]:
    """ "cpu", "cuda", "auto" (CUDA when onnxruntime-gpu offers it), or a list of ORT provider names."""
    have = available_providers()
    if providers is None or providers == "auto":
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]
    if isinstance(providers, str):
        name = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}.get(providers, providers)
        providers = [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]
    missing = [p for p in providers if p not in have]
    if missing:
        clash = runtime_clash()
        raise ModelNotFoundError(
            f"execution provider(s) {missing} are not available in this onnxruntime (it offers {have}); "
            + (clash or "install the 'gpu' extra (onnxruntime-gpu, not with 'cpu') on a machine with CUDA")
        )
    return list(providers)


# default lanes at most: each lane is a session of its own, the model's weights again (~400 MB for
# T-one), and a worker holds one more for small batches; more lanes were never measured here
MAX_LANES = 2


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask; os.cpu_count() where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


SPINNING = ("always", "steps", "never")


def spinning_mode(spinning: bool | str) -> str:
    """ONNX Runtime's intra-op threads between two ops: they spin ("always", True: ORT's default),
    spin only while a step runs and sleep once it returns ("steps"), or sleep ("never", False)."""
    if isinstance(spinning, bool):
        return "always" if spinning else "never"
    if spinning not in SPINNING:
        raise ValueError(f"unknown spinning {spinning!r}: use {', '.join(SPINNING)}")
    return spinning


def lane_count(lanes: int | None, threads: int | None, device: str) -> int:
    """How many sessions step a batch's slices at once: ``lanes`` as asked (at most one per thread),
    else one per thread up to ``MAX_LANES``; always 1 off the CPU (a GPU runs one call at a time).

    Why lanes: ORT's intra-op threads meet at a barrier after every operator, so when another
    process (the API, PostgreSQL, a client on the same cores) takes one core for a moment, every
    thread waits for it. Measured on this project's 2-core machine with another process using
    40 % of one core: one session with 2 threads fell from ~30 to ~15 s of audio per second,
    two 1-thread sessions on half the batch each kept ~22 (the README has the figures)."""
    if device != "cpu":
        return 1
    threads = threads or usable_cores()
    if lanes is None:
        return max(1, min(threads, MAX_LANES))
    if lanes < 1:
        raise ValueError(f"lanes must be at least 1, not {lanes}")
    return min(lanes, threads)


class AcousticModel:
    """An ONNX Runtime session over a model of T-one's contract."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        providers: str | Sequence[str] | None = None,
        threads: int | None = None,
        precision: str = "auto",
        spinning: bool | str = True,
        lanes: int | None = None,
    ) -> None:
        """``precision``: "auto" and "float16" run the file as it is (as the reference pipeline
        does: ONNX Runtime computes in float32 where its CPU lacks a float16 kernel), "float32"
        rewrites float16 compute to float32 at load, keeping the float16 state I/O.
        ``spinning`` (:func:`spinning_mode`): ``False`` / "never": ORT's intra-op threads sleep
        between ops instead of spinning; "steps": they spin while a step runs and sleep as soon as
        it returns (a live worker shares its cores with the API and Redis, which spinning between
        rounds starved, while sleeping between ops slowed its small steps: the README has both).
        ``lanes``: on the CPU, a batch of at least ``LANE_ROWS`` rows per lane is split into that many
        contiguous slices, each run by a session of its own with ``threads // lanes`` threads, all at
        once (:func:`lane_count`; None: one lane per thread, at most ``MAX_LANES``)."""
        import onnx
        import onnxruntime as ort

        self.path = Path(path)
        try:
            proto = onnx.load(str(self.path))
        except Exception as exc:
            raise ModelContractError(f"{self.path} is not a readable ONNX model: {exc}") from exc
        check_contract(proto)
        self.providers = resolve_providers(providers)
        if precision not in ("auto", "float32", "float16"):
            raise ValueError(f"unknown precision {precision!r}: use auto, float32 or float16")
        self.converted = precision == "float32" and float16_to_float32(proto)
        spin = spinning_mode(spinning)
        serialized = proto.SerializeToString()
        del proto

        def session(n_threads: int | None) -> ort.InferenceSession:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if n_threads:
                options.intra_op_num_threads = n_threads
            options.inter_op_num_threads = 1
            if spin == "never":
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            elif spin == "steps":  # spin inside a step; the threads sleep once the last run returns
                options.add_session_config_entry("session.force_spinning_stop", "1")
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            try:
                return ort.InferenceSession(serialized, sess_options=options, providers=self.providers)
            except Exception as exc:
                raise ModelContractError(f"onnxruntime cannot run {self.path}: {exc}") from exc

        self.session = session(threads)
        self.threads = threads
        n = lane_count(lanes, threads, self.device)
        per_lane = max(1, (threads or usable_cores()) // n)
        self.lanes = Lanes([session(per_lane) for _ in range(n)] if n > 1 else [])
        self._opening: tuple[npt.NDArray[np.float32], npt.NDArray[np.float16]] | None = None

    def opening(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float16]]:
        """The model's answer to a new stream's first chunk, the reference's 300 ms of front padding:
        2400 zeros on a zero state, the same for every stream (logprobs [10, 35], state_next [S]).
        Computed once, at B = 1, and then given to each new stream instead of a model call: one call
        fewer per stream (a 6 s recording takes 21 calls instead of 22). Read-only arrays."""
        if self._opening is None:
            logprobs, state = self.run(
                np.zeros((1, CHUNK_SAMPLES, 1), np.int32), np.zeros((1, STATE_SIZE), np.float16)
            )
            opening = (np.array(logprobs[0], np.float32), np.array(state[0], np.float16))
            for array in opening:
                array.flags.writeable = False
            self._opening = opening
        return self._opening

    @property
    def device(self) -> str:
        """ORT's device type of the state rows: "cuda" when the CUDA provider runs the model."""
        return "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    @property
    def preferred_batch(self) -> int:
        """Streams per model call worth gathering: a GPU wants many, two CPU cores saturate at ~16."""
        return 256 if self.device == "cuda" else 16

    def new_bank(self) -> StateBank:
        """A StateBank on this model's device: state rows stay there between steps."""
        return StateBank(self.session, self.device, lanes=self.lanes)

    def step(
        self, bank: StateBank, streams: list[StreamState], signal: npt.NDArray[np.int32]
    ) -> npt.NDArray[np.float32]:
        """One model call over ``streams`` whose state rows ``bank`` keeps (I/O binding): returns the
        logprobs (a buffer that the next step reuses); the states advance in the bank."""
        return bank.step(streams, signal)

    def run(
        self, signal: npt.NDArray[np.int32], state: npt.NDArray[np.float16]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float16]]:
        """Advance B streams by one chunk: signal [B,2400,1] int32, state [B,S] float16."""
        logprobs, state_next = self.session.run(
            ["logprobs", "state_next"], {"signal": signal, "state": state}
        )
        return logprobs, state_next
