"""A *null* model of T-one's exact contract: the model taken out, so the engine's own cost shows.

``state`` passes through unchanged (``state_next`` is ``state``: an Identity), and ``logprobs``
are cheap but plausible: per 30 ms frame (240 samples) the mean absolute amplitude ``e`` decides
between silence and speech. The blank's logit falls and the letters' logits rise with ``e``, each
letter with its own slope, so quiet frames are blank (the splitter sees silence) and loud frames
are a letter (louder frames, later letters): pauses close phrases as in real speech
and greedy decoding yields text. A few elementwise operations per frame, no MatMul: next to
T-one's 1.3 GFLOP per chunk it costs nothing, so what ``make bench`` measures with it is the
engine around the model (stacking state rows, the splitter, decoding, Python per stream).

Contract (opset 17, IR version 8), as T-one::

    signal      int32    [batch, 2400, 1]
    state       float16  [batch, 219729]
    logprobs    float32  [batch, 10, 35]
    state_next  float16  [batch, 219729]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.asr.types import BLANK_ID, SPACE_ID, VOCAB_SIZE
from shared.dev.models.contract import save_contract_model

FRAME = 240
LOUD = 500.0  # mean |sample| at which a frame turns from blank to speech


def null_logits_params() -> tuple[np.ndarray, np.ndarray]:
    """Per-class slope and bias of the logits, ``logit = slope * e / LOUD + bias``."""
    slope = np.zeros(VOCAB_SIZE, np.float32)
    bias = np.full(VOCAB_SIZE, -8.0, np.float32)  # the space: never (pauses are silence)
    k = np.arange(SPACE_ID, dtype=np.float32)  # letters: logit k*l - k²/2 * 0.6 peaks at k = l / 0.6
    slope[:SPACE_ID] = 0.5 * k
    bias[:SPACE_ID] = -0.15 * k * k
    slope[BLANK_ID], bias[BLANK_ID] = -4.0, 4.0
    return slope, bias


def build_null_model(path: str | Path) -> Path:
    """Write the null model (a few kB) to ``path`` (a .onnx file or a directory)."""
    from onnx import TensorProto, helper, numpy_helper

    out = Path(path)
    if out.suffix != ".onnx":
        out.mkdir(parents=True, exist_ok=True)
        out = out / "model.onnx"
    slope, bias = null_logits_params()
    inits = [
        numpy_helper.from_array(np.array([-1, 10, FRAME], np.int64), "frames_shape"),
        numpy_helper.from_array(np.array(1.0 / LOUD, np.float32), "scale"),
        numpy_helper.from_array(slope, "slope"),
        numpy_helper.from_array(bias, "bias"),
    ]
    node = helper.make_node
    nodes = [
        node("Cast", ["signal"], ["x"], to=TensorProto.FLOAT),
        node("Reshape", ["x", "frames_shape"], ["frames"]),  # [B, 10, 240]
        node("Abs", ["frames"], ["mag"]),
        node("ReduceMean", ["mag"], ["e"], axes=[2], keepdims=1),  # [B, 10, 1]
        node("Mul", ["e", "scale"], ["loud"]),
        node("Mul", ["loud", "slope"], ["tilt"]),  # [B, 10, 35]
        node("Add", ["tilt", "bias"], ["logits"]),
        node("LogSoftmax", ["logits"], ["logprobs"], axis=-1),
        node("Identity", ["state"], ["state_next"]),
    ]
    return save_contract_model(
        nodes,
        inits,
        "tone_null_model",
        "T-one contract null model: state passes through, logprobs from frame loudness",
        out,
    )
