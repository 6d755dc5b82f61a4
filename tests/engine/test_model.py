"""Loading models: contract checks with clear messages, the float16 question, providers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from shared.asr.engine import Recognizer
from shared.asr.errors import ModelContractError, ModelNotFoundError
from shared.asr.model import AcousticModel, locate_model
from shared.dev.models.tones import synthesize


def mutated_tone_model(tone_model: Path, tmp_path: Path, mutate) -> Path:
    model = onnx.load(str(tone_model))
    mutate(model.graph)
    out = tmp_path / "model.onnx"
    onnx.save(model, str(out))
    return out


def offline_hub(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """No network, and this cache: huggingface_hub reads its environment once, at import."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))


def test_wrong_input_name_is_refused_naming_the_difference(tone_model: Path, tmp_path: Path) -> None:
    def rename(g: onnx.GraphProto) -> None:
        g.input[0].name = "audio"
        for node in g.node:
            node.input[:] = ["audio" if x == "signal" else x for x in node.input]

    with pytest.raises(
        ModelContractError, match=r"inputs are \['audio', 'state'\], expected \['signal', 'state'\]"
    ):
        AcousticModel(mutated_tone_model(tone_model, tmp_path, rename))


def test_wrong_state_dtype_and_vocabulary_are_refused(tone_model: Path, tmp_path: Path) -> None:
    def retype(g: onnx.GraphProto) -> None:
        g.input[1].type.tensor_type.elem_type = TensorProto.FLOAT
        g.output[0].type.tensor_type.shape.dim[2].dim_value = 36

    with pytest.raises(ModelContractError) as err:
        AcousticModel(mutated_tone_model(tone_model, tmp_path, retype))
    assert "input 'state' is float32, expected float16" in err.value.message
    assert "output 'logprobs' has shape ['B', 10, 36], expected [B, 10, 35]" in err.value.message
    assert err.value.code == "model_contract_mismatch"


def test_not_an_onnx_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"this is not a protobuf at all" * 10)
    with pytest.raises(ModelContractError, match="not a readable ONNX model"):
        AcousticModel(bad)


def test_missing_model_says_how_to_provide_one(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="TONE_MODEL_PATH"):
        locate_model(tmp_path / "nope")
    with pytest.raises(ModelNotFoundError, match=r"holds no model\.onnx"):
        locate_model(tmp_path)


def test_failed_hugging_face_download_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    offline_hub(monkeypatch, tmp_path / "hub")
    with pytest.raises(ModelNotFoundError) as err:
        locate_model(None)
    assert "downloading t-tech/T-one/model.onnx from Hugging Face failed" in err.value.message
    assert "TONE_MODEL_PATH" in err.value.message


def test_directory_with_kenlm_is_found(tone_model: Path, tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(tone_model.read_bytes())
    (tmp_path / "kenlm.bin").write_bytes(b"x")
    files = locate_model(tmp_path)
    assert files.model == tmp_path / "model.onnx"
    assert files.lm == tmp_path / "kenlm.bin"


def test_float32_rewrite_keeps_the_contract_and_the_transcript(tone_model: Path) -> None:
    audio, expected = synthesize(["проверка точности"])
    as_is = Recognizer.load(tone_model, precision="float16")
    rewritten = Recognizer.load(tone_model, precision="float32")
    assert rewritten.model.converted and not as_is.model.converted
    assert list(rewritten.transcribe(audio)) == list(as_is.transcribe(audio))
    assert [p.text for p in as_is.transcribe(audio)] == [e.text for e in expected]


def test_cost_faithful_float16_model_runs_on_cpu_both_ways(cost_model: Path) -> None:
    rng = np.random.default_rng(0)
    signal = rng.integers(-20000, 20000, (2, 2400, 1), dtype=np.int32)
    state = np.zeros((2, 219_729), np.float16)
    outs = {}
    for precision in ("float16", "float32"):
        model = AcousticModel(cost_model, precision=precision, threads=2, lanes=1)
        lp, st = model.run(signal, state)
        lp2, st2 = model.run(signal, st)
        assert lp.shape == (2, 10, 35) and lp.dtype == np.float32
        assert st2.shape == (2, 219_729) and st2.dtype == np.float16
        assert np.isfinite(lp2).all() and np.isfinite(st2).all()
        assert np.allclose(np.exp(lp2).sum(-1), 1, atol=1e-3)
        outs[precision] = lp2
    assert model.converted
    assert np.abs(np.exp(outs["float16"]) - np.exp(outs["float32"])).max() < 0.05


def test_spinning_off_reaches_the_onnx_runtime_session(tone_model: Path) -> None:
    from shared.asr.model import AcousticModel

    options = AcousticModel(tone_model, spinning=False).session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    default = AcousticModel(tone_model).session.get_session_options()
    with pytest.raises(RuntimeError):  # not set: ORT's default, spinning
        default.get_session_config_entry("session.intra_op.allow_spinning")
    with pytest.raises(RuntimeError):
        default.get_session_config_entry("session.force_spinning_stop")
    # "steps": spinning inside a step (ORT's default), stopped as soon as the step returns
    steps = AcousticModel(tone_model, spinning="steps", lanes=2, threads=2)
    for session in [steps.session, *steps.lanes.sessions]:
        options = session.get_session_options()
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"
        with pytest.raises(RuntimeError):
            options.get_session_config_entry("session.intra_op.allow_spinning")
    with pytest.raises(ValueError, match="unknown spinning"):
        AcousticModel(tone_model, spinning="sometimes")


def test_unknown_provider_is_refused_with_what_is_available(tone_model: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="CPUExecutionProvider"):
        AcousticModel(tone_model, providers=["NoSuchExecutionProvider"])


def test_lanes_of_the_cost_model_equal_one_session(cost_model: Path) -> None:
    """Slices of a batch stepped at once by 1-thread sessions give the bits of one 2-thread run of
    the whole batch (ORT's CPU kernels split work over rows and columns, never over the sums)."""
    from shared.asr.stream import StreamState

    model = AcousticModel(cost_model, threads=2, lanes=2)
    bank = model.new_bank()
    rng = np.random.default_rng(2)
    streams = [StreamState() for _ in range(5)]
    state = np.zeros((5, 219_729), np.float16)
    for _ in range(3):
        signal = rng.integers(-20000, 20000, (5, 2400, 1), dtype=np.int32)
        want_lp, state = model.run(signal, state)
        got_lp = model.step(bank, streams, signal.copy())
        assert np.array_equal(got_lp, want_lp)
    assert bank.lane_steps == 3
    assert np.array_equal(np.stack([s.model_state for s in streams]), state)


def test_batch_rows_of_the_cost_model_equal_single_runs(cost_model: Path) -> None:
    model = AcousticModel(cost_model, threads=2, lanes=1)
    rng = np.random.default_rng(1)
    signal = rng.integers(-20000, 20000, (3, 2400, 1), dtype=np.int32)
    state = np.zeros((3, 219_729), np.float16)
    lp, st = model.run(signal, state)
    for i in range(3):
        lp1, st1 = model.run(signal[i : i + 1], state[i : i + 1])
        assert np.array_equal(lp1[0], lp[i])
        assert np.array_equal(st1[0], st[i])


def test_model_in_the_hugging_face_cache_loads_without_network(
    tone_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--t-tech--T-one"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "snapshots" / revision / "model.onnx").write_bytes(tone_model.read_bytes())
    offline_hub(monkeypatch, tmp_path / "hf" / "hub")
    files = locate_model(None)
    assert files.model == repo / "snapshots" / revision / "model.onnx"
    assert files.lm is None


def test_cuda_asked_for_with_both_runtimes_installed_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime and onnxruntime-gpu ship one module: the error names the clash, not just CUDA."""
    from importlib import metadata

    from shared.asr import model as model_module
    from shared.asr.errors import ModelNotFoundError

    monkeypatch.setattr(metadata, "version", lambda dist: "1.32.0")
    monkeypatch.setattr(model_module, "available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ModelNotFoundError, match=r"both onnxruntime 1\.32\.0 and onnxruntime-gpu 1\.32\.0"):
        model_module.resolve_providers("cuda")

    def only_cpu(dist: str) -> str:
        if dist == "onnxruntime-gpu":
            raise metadata.PackageNotFoundError(dist)
        return "1.32.0"

    monkeypatch.setattr(metadata, "version", only_cpu)
    assert model_module.runtime_clash() is None
    with pytest.raises(ModelNotFoundError, match="install the 'gpu' extra"):
        model_module.resolve_providers("cuda")
