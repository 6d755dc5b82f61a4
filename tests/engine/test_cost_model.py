"""The cost-faithful T-one stand-in honours the model contract (checked with onnx only)."""

from __future__ import annotations

import pathlib

import onnx
import pytest
from onnx import TensorProto

from shared.dev.models.cost import build_cost_model, count_parameters

REAL_PARAMETERS = 71_685_347


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return build_cost_model(tmp_path_factory.mktemp("cost"), seed=0)


@pytest.fixture(scope="module")
def model(model_path: pathlib.Path) -> onnx.ModelProto:
    return onnx.load(model_path)


def _signature(values: list[onnx.ValueInfoProto]) -> list[tuple[str, int, list[int | str]]]:
    return [
        (
            v.name,
            v.type.tensor_type.elem_type,
            [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
        )
        for v in values
    ]


def test_writes_model_onnx_into_directory(model_path: pathlib.Path) -> None:
    assert model_path.name == "model.onnx"
    assert model_path.is_file()
    assert not [p for p in model_path.parent.iterdir() if p != model_path]  # no temp files left


def test_contract(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert model.ir_version in (8, 9)
    assert _signature(list(model.graph.input)) == [
        ("signal", TensorProto.INT32, ["batch", 2400, 1]),
        ("state", TensorProto.FLOAT16, ["batch", 219_729]),
    ]
    assert _signature(list(model.graph.output)) == [
        ("logprobs", TensorProto.FLOAT, ["batch", 10, 35]),
        ("state_next", TensorProto.FLOAT16, ["batch", 219_729]),
    ]


def test_parameter_count(model: onnx.ModelProto) -> None:
    assert count_parameters(model) == pytest.approx(REAL_PARAMETERS, rel=0.03)


def test_initializers_are_float16(model: onnx.ModelProto) -> None:
    for t in model.graph.initializer:
        if t.data_type == TensorProto.INT64:
            assert len(t.dims) <= 1
            assert sum(t.dims) <= 8, t.name
        else:
            assert t.data_type == TensorProto.FLOAT16, t.name
