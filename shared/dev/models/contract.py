"""T-one's ONNX contract as a graph's inputs and outputs, and an atomic save: the small test models
(tones, null) differ only in the nodes between them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper

from shared.asr.types import CHUNK_SAMPLES, FRAMES_PER_CHUNK, STATE_SIZE, VOCAB_SIZE


def save_contract_model(nodes: Sequence[Any], inits: Sequence[Any], name: str, doc: str, out: Path) -> Path:
    """``signal`` int32 [B, 2400, 1] + ``state`` float16 [B, STATE_SIZE] in, ``logprobs`` float32
    [B, 10, VOCAB_SIZE] + ``state_next`` out; checked, then written to ``out`` via a temporary file."""
    graph = helper.make_graph(
        list(nodes),
        name,
        [
            helper.make_tensor_value_info("signal", TensorProto.INT32, ["batch", CHUNK_SAMPLES, 1]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT16, ["batch", STATE_SIZE]),
        ],
        [
            helper.make_tensor_value_info(
                "logprobs", TensorProto.FLOAT, ["batch", FRAMES_PER_CHUNK, VOCAB_SIZE]
            ),
            helper.make_tensor_value_info("state_next", TensorProto.FLOAT16, ["batch", STATE_SIZE]),
        ],
        list(inits),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model.doc_string = doc
    onnx.checker.check_model(model)
    tmp = out.with_suffix(".onnx.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(out)
    return out
