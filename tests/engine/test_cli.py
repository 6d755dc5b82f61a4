"""End to end: the installed ``tone-platform`` console script, run as a subprocess on real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from shared.asr.types import STATE_SIZE, VOCAB_SIZE
from shared.dev.models.tones import ExpectedPhrase, synthesize
from tests.conftest import KIT_AUDIO, written

CLI = Path(sys.executable).parent / "tone-platform"
PHRASES = ["здравствуйте вы позвонили в банк", "чем я могу вам помочь"]
BAD_FILES = sorted(p.name for p in (KIT_AUDIO / "bad").iterdir())
BAD_CODES = {"empty_audio", "unsupported_format", "corrupt_audio"}


def run_cli(
    *args: object, env: dict[str, str | None] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the console script; ``env`` entries override the environment, None removes a variable."""
    full = {k: v for k, v in os.environ.items() if k != "TONE_MODEL_PATH"}
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    return subprocess.run(
        [str(CLI), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=full, check=False
    )


def write_audio(path: Path, audio: np.ndarray, rate: int = 8000, subtype: str = "PCM_16") -> Path:
    sf.write(str(path), audio, rate, subtype=subtype)
    return path


def expected_dicts(expected: list[ExpectedPhrase], channel: int = 0) -> list[dict]:
    """What the JSON output must hold for synthesize()'s expectation, with its written form."""
    return written(
        [
            {
                "text": e.text,
                "start_time": e.start,
                "end_time": e.end,
                "channel": channel,
                "words": [{"text": w, "start": s, "end": t} for w, s, t in e.words],
            }
            for e in expected
        ]
    )


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def without_processing_time(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "processing_time"}


@pytest.fixture
def speech(tmp_path: Path) -> tuple[Path, list[ExpectedPhrase], int]:
    """An 8 kHz PCM WAV of PHRASES, its expectation and its length in samples."""
    audio, expected = synthesize(PHRASES)
    return write_audio(tmp_path / "speech.wav", audio), expected, len(audio)


# --- transcribe: JSON -----------------------------------------------------------------------------


def test_transcribe_prints_one_json_document_with_exact_phrases_words_and_times(
    tone_model: Path, speech: tuple[Path, list[ExpectedPhrase], int]
) -> None:
    path, expected, n = speech
    result = run_cli("transcribe", path, "--model", tone_model)
    assert result.returncode == 0, result.stderr
    (doc,) = json_lines(result.stdout)
    assert set(doc) == {"phrases", "full_text", "display_text", "duration", "processing_time"}
    assert doc["phrases"] == expected_dicts(expected)
    assert doc["full_text"] == " ".join(PHRASES)
    assert doc["duration"] == round(n / 8000, 3)
    assert isinstance(doc["processing_time"], float)
    assert doc["processing_time"] >= 0


@pytest.mark.parametrize("batch", [1, 8])
def test_several_files_give_one_json_line_each_with_file_in_the_given_order(
    tone_model: Path, tmp_path: Path, batch: int
) -> None:
    texts = [["один"], ["два три", "четыре"], ["пять шесть семь восемь"], ["девять"]]
    files, wanted = [], []
    for i, phrases in enumerate(texts):
        audio, expected = synthesize(phrases, lead=0.6 + 3 * (3 - i))  # the first file is the longest
        files.append(str(write_audio(tmp_path / f"f{i}.wav", audio)))
        wanted.append(
            {
                "file": files[-1],
                "phrases": expected_dicts(expected),
                "full_text": " ".join(phrases),
                "display_text": " ".join(p["display"] for p in expected_dicts(expected)),
                "duration": round(len(audio) / 8000, 3),
            }
        )
    assert wanted[2]["display_text"] == "5678"
    result = run_cli("transcribe", *files, "--model", tone_model, "--batch", batch)
    assert result.returncode == 0, result.stderr
    docs = json_lines(result.stdout)
    assert [without_processing_time(d) for d in docs] == wanted
    assert all("processing_time" in d for d in docs)


def test_batch_1_and_batch_8_give_equal_results_apart_from_processing_time(
    tone_model: Path, tmp_path: Path
) -> None:
    files = []
    for i in range(5):
        audio, _ = synthesize(PHRASES[i % 2 :], pause=0.6 + 0.33 * i)
        stereo = np.stack([audio, np.roll(audio, 1200 * i)], axis=1)
        files.append(write_audio(tmp_path / f"s{i}.wav", stereo))
    one = run_cli("transcribe", *files, "--model", tone_model, "--batch", 1, "--channels", "split")
    eight = run_cli("transcribe", *files, "--model", tone_model, "--batch", 8, "--channels", "split")
    assert one.returncode == eight.returncode == 0, one.stderr + eight.stderr
    docs_one, docs_eight = json_lines(one.stdout), json_lines(eight.stdout)
    assert [d["file"] for d in docs_one] == [str(f) for f in files]
    assert [without_processing_time(d) for d in docs_one] == [without_processing_time(d) for d in docs_eight]
    assert {p["channel"] for d in docs_one for p in d["phrases"]} == {0, 1}


# --- transcribe: other formats --------------------------------------------------------------------


def test_txt_format_prints_one_phrase_per_line(
    tone_model: Path, speech: tuple[Path, list[ExpectedPhrase], int]
) -> None:
    result = run_cli("transcribe", speech[0], "--model", tone_model, "--format", "txt")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(f"{p}\n" for p in PHRASES)


def test_srt_format_numbers_cues_and_writes_comma_millisecond_timestamps(
    tone_model: Path, speech: tuple[Path, list[ExpectedPhrase], int]
) -> None:
    path, expected, _ = speech
    result = run_cli("transcribe", path, "--model", tone_model, "--format", "srt")
    assert result.returncode == 0, result.stderr
    cues = [block.splitlines() for block in result.stdout.strip().split("\n\n")]
    assert cues == [
        ["1", "00:00:00,600 --> 00:00:05,340", PHRASES[0]],
        ["2", "00:00:06,600 --> 00:00:09,690", PHRASES[1]],
    ]
    assert (expected[0].start, expected[0].end, expected[1].start, expected[1].end) == (0.6, 5.34, 6.6, 9.69)


def test_vtt_format_starts_with_webvtt_and_writes_dot_millisecond_timestamps(
    tone_model: Path, speech: tuple[Path, list[ExpectedPhrase], int]
) -> None:
    result = run_cli("transcribe", speech[0], "--model", tone_model, "--format", "vtt")
    assert result.returncode == 0, result.stderr
    header, *cues = result.stdout.strip().split("\n\n")
    assert header == "WEBVTT"
    assert [c.splitlines() for c in cues] == [
        ["00:00:00.600 --> 00:00:05.340", PHRASES[0]],
        ["00:00:06.600 --> 00:00:09.690", PHRASES[1]],
    ]


def test_tsv_format_has_a_header_and_millisecond_rows(
    tone_model: Path, speech: tuple[Path, list[ExpectedPhrase], int]
) -> None:
    result = run_cli("transcribe", speech[0], "--model", tone_model, "--format", "tsv")
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert rows == [
        ["start", "end", "channel", "text"],
        ["600", "5340", "0", PHRASES[0]],
        ["6600", "9690", "0", PHRASES[1]],
    ]


# --- streaming path -------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_ms", ["37", "299.9", "1000"])
def test_stream_chunk_ms_of_any_size_gives_exactly_the_offline_phrases(
    tone_model: Path, tmp_path: Path, chunk_ms: str
) -> None:
    audio, expected = synthesize(["съешь ещё этих", "мягких булок", "да выпей чаю"], pause=0.63)
    audio = np.concatenate([np.zeros(1111, np.int16), audio])  # off the 300 ms grid
    path = write_audio(tmp_path / "a.wav", audio)
    offline = run_cli("transcribe", path, "--model", tone_model)
    streamed = run_cli("transcribe", path, "--model", tone_model, "--stream-chunk-ms", chunk_ms)
    assert offline.returncode == streamed.returncode == 0, offline.stderr + streamed.stderr
    (off,), (st,) = json_lines(offline.stdout), json_lines(streamed.stdout)
    assert [p["text"] for p in off["phrases"]] == [e.text for e in expected]
    assert without_processing_time(st) == without_processing_time(off)


# --- channels -------------------------------------------------------------------------------------


def _call(tmp_path: Path, subtype: str = "PCM_16") -> tuple[Path, list[dict]]:
    """A stereo call: the agent (left) and the client (right) take turns; the expected phrases."""
    agent, agent_expected = synthesize(["алло добрый день", "чем могу помочь"], pause=3.6)
    client, client_expected = synthesize(["здравствуйте"], lead=agent_expected[0].end + 0.6)
    n = max(len(agent), len(client))
    stereo = np.stack([np.pad(agent, (0, n - len(agent))), np.pad(client, (0, n - len(client)))], axis=1)
    wanted = expected_dicts(agent_expected, 0) + expected_dicts(client_expected, 1)
    wanted.sort(key=lambda p: (p["start_time"], p["channel"]))
    return write_audio(tmp_path / f"call_{subtype}.wav", stereo, subtype=subtype), wanted


def test_split_channels_give_channel_0_and_1_phrases_in_time_order(tone_model: Path, tmp_path: Path) -> None:
    path, wanted = _call(tmp_path)
    result = run_cli("transcribe", path, "--model", tone_model, "--channels", "split")
    assert result.returncode == 0, result.stderr
    (doc,) = json_lines(result.stdout)
    assert [p["channel"] for p in doc["phrases"]] == [0, 1, 0]
    assert doc["phrases"] == wanted
    assert doc["full_text"] == "алло добрый день здравствуйте чем могу помочь"


def test_split_channels_in_txt_are_prefixed_agent_and_client(tone_model: Path, tmp_path: Path) -> None:
    path, _ = _call(tmp_path)
    result = run_cli("transcribe", path, "--model", tone_model, "--channels", "split", "--format", "txt")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "[agent] алло добрый день",
        "[client] здравствуйте",
        "[agent] чем могу помочь",
    ]


def test_mulaw_stereo_file_transcribes_each_channel(tone_model: Path, tmp_path: Path) -> None:
    path, wanted = _call(tmp_path, "ULAW")
    assert sf.info(str(path)).subtype == "ULAW"
    result = run_cli("transcribe", path, "--model", tone_model, "--channels", "split")
    assert result.returncode == 0, result.stderr
    (doc,) = json_lines(result.stdout)
    got = doc["phrases"]
    assert [(p["text"], p["channel"]) for p in got] == [(p["text"], p["channel"]) for p in wanted]
    for g, w in zip(got, wanted):
        assert g["start_time"] == pytest.approx(w["start_time"], abs=0.07)
        assert g["end_time"] == pytest.approx(w["end_time"], abs=0.07)


@pytest.mark.parametrize(
    ("name", "rate", "subtype", "exact"),
    [
        ("pcm.wav", 8000, "PCM_16", True),
        ("flac.flac", 8000, "PCM_16", True),
        ("alaw.wav", 8000, "ALAW", False),
        ("gsm.wav", 8000, "GSM610", False),
        ("mp3.mp3", 16000, "MPEG_LAYER_III", False),
        ("ogg.ogg", 16000, "VORBIS", False),
    ],
)
def test_each_supported_encoding_transcribes_to_the_right_texts(
    tone_model: Path, tmp_path: Path, name: str, rate: int, subtype: str, exact: bool
) -> None:
    audio, expected = synthesize(PHRASES)
    if rate != 8000:
        audio = np.round(soxr.resample(audio.astype(np.float32), 8000, rate, quality="HQ")).astype(np.int16)
    path = write_audio(tmp_path / name, audio, rate, subtype)
    result = run_cli("transcribe", path, "--model", tone_model)
    assert result.returncode == 0, result.stderr
    (doc,) = json_lines(result.stdout)
    if exact:
        assert doc["phrases"] == expected_dicts(expected)
        return
    assert [p["text"] for p in doc["phrases"]] == PHRASES
    for got, want in zip(doc["phrases"], expected):
        assert got["start_time"] == pytest.approx(want.start, abs=0.07)
        assert got["end_time"] == pytest.approx(want.end, abs=0.07)


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_file_exits_1_with_one_stderr_line_and_a_json_error(tone_model: Path, name: str) -> None:
    path = str(KIT_AUDIO / "bad" / name)
    result = run_cli("transcribe", path, "--model", tone_model)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    (doc,) = json_lines(result.stdout)
    assert set(doc) == {"file", "error"}
    assert doc["file"] == path
    assert set(doc["error"]) == {"code", "message"}
    assert doc["error"]["code"] in BAD_CODES
    assert doc["error"]["message"]
    assert line.startswith(f"tone-platform: {path}")
    assert line.endswith(f" [{doc['error']['code']}]")


def test_bad_files_get_the_right_error_codes(tone_model: Path) -> None:
    result = run_cli("transcribe", *(KIT_AUDIO / "bad" / n for n in BAD_FILES), "--model", tone_model)
    assert result.returncode == 1
    codes = {Path(d["file"]).name: d["error"]["code"] for d in json_lines(result.stdout)}
    assert codes == {
        "empty.wav": "empty_audio",
        "lying_header.wav": "corrupt_audio",
        "noise_bytes.wav": "unsupported_format",
        "text.mp3": "unsupported_format",
        "truncated.wav": "corrupt_audio",
        "zero_samples.wav": "empty_audio",
    }
    assert len(result.stderr.splitlines()) == len(BAD_FILES)


def test_missing_file_exits_1_and_names_the_file(tone_model: Path, tmp_path: Path) -> None:
    path = str(tmp_path / "nowhere.wav")
    result = run_cli("transcribe", path, "--model", tone_model)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"tone-platform: {path}: ")
    (doc,) = json_lines(result.stdout)
    assert doc["file"] == path
    assert "No such file or directory" in doc["error"]["message"]
    assert doc["error"]["code"] == "file_not_found"
    assert line.endswith(f" [{doc['error']['code']}]")


@pytest.mark.parametrize("batch", [1, 8])
def test_bad_files_among_good_ones_do_not_stop_the_good_ones(
    tone_model: Path, tmp_path: Path, batch: int
) -> None:
    good, expected = synthesize(["один два"])
    long, _ = synthesize(["три четыре пять"] * 8)  # 25 s: a batch reads its blocks 2 s at a time
    good_path = str(write_audio(tmp_path / "good.wav", good))
    write_audio(tmp_path / "long.flac", long)
    data = (tmp_path / "long.flac").read_bytes()
    late_bad = tmp_path / "cut.flac"  # found to be broken only after ~10 s of it were decoded
    late_bad.write_bytes(data[: len(data) // 2])
    files = [
        str(late_bad),
        good_path,
        str(KIT_AUDIO / "bad" / "truncated.wav"),
        str(tmp_path / "missing.wav"),
        good_path,
    ]
    result = run_cli("transcribe", *files, "--model", tone_model, "--batch", batch)
    assert result.returncode == 1
    docs = json_lines(result.stdout)
    assert [d["file"] for d in docs] == files
    assert [d.get("error", {}).get("code") for d in docs][:3] == ["corrupt_audio", None, "corrupt_audio"]
    assert "error" in docs[3]
    for doc in (docs[1], docs[4]):
        assert doc["phrases"] == expected_dicts(expected)
    assert len(result.stderr.splitlines()) == 3


# --- model problems -------------------------------------------------------------------------------


def test_nonexistent_model_exits_3_and_says_how_to_give_one(speech: tuple) -> None:
    result = run_cli("transcribe", speech[0], "--model", "/nonexistent")
    assert result.returncode == 3
    assert result.stdout == ""
    assert "/nonexistent" in result.stderr
    assert "TONE_MODEL_PATH" in result.stderr
    assert result.stderr.rstrip().endswith("[model_not_found]")


def test_no_model_and_no_hugging_face_exits_3_quickly_with_how_to(tmp_path: Path, speech: tuple) -> None:
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TONE_MODEL_PATH": None}
    result = run_cli("transcribe", speech[0], env=env, timeout=60)
    assert result.returncode == 3
    assert result.stdout == ""
    assert "from Hugging Face failed" in result.stderr
    assert "TONE_MODEL_PATH" in result.stderr
    assert "--model" in result.stderr
    assert result.stderr.rstrip().endswith("[model_not_found]")


def _wrong_model(path: Path, *, signal: str = "signal", state_type: int | None = None) -> Path:
    import onnx
    from onnx import TensorProto, helper

    state_type = TensorProto.FLOAT16 if state_type is None else state_type
    logprobs = np.zeros((1, 10, VOCAB_SIZE), np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["logprobs"], value=onnx.numpy_helper.from_array(logprobs)),
            helper.make_node("Cast", ["state"], ["state_next"], to=TensorProto.FLOAT16),
        ],
        "wrong_contract",
        [
            helper.make_tensor_value_info(signal, TensorProto.INT32, ["batch", 2400, 1]),
            helper.make_tensor_value_info("state", state_type, ["batch", STATE_SIZE]),
        ],
        [
            helper.make_tensor_value_info("logprobs", TensorProto.FLOAT, ["batch", 10, VOCAB_SIZE]),
            helper.make_tensor_value_info("state_next", TensorProto.FLOAT16, ["batch", STATE_SIZE]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("kwargs", "difference"),
    [
        ({"signal": "audio"}, "inputs are ['audio', 'state'], expected ['signal', 'state']"),
        ({"state_type": 1}, "input 'state' is float32, expected float16"),  # 1 = TensorProto.FLOAT
    ],
)
def test_model_with_wrong_contract_exits_3_naming_the_difference(
    tmp_path: Path, speech: tuple, kwargs: dict, difference: str
) -> None:
    model = _wrong_model(tmp_path / "wrong.onnx", **kwargs)
    for args in (["transcribe", speech[0]], ["model", "check"]):
        result = run_cli(*args, "--model", model)
        assert result.returncode == 3
        assert result.stdout == ""
        (line,) = result.stderr.splitlines()
        assert difference in line
        assert line.endswith("[model_contract_mismatch]")


def test_model_check_prints_json_with_contract_ok(tone_model: Path) -> None:
    result = run_cli("model", "check", "--model", tone_model)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["contract"] == "ok"
    assert info["model"] == str(tone_model)
    assert "CPUExecutionProvider" in info["providers"]
    assert info["default_decoder"] == "greedy"


def test_model_is_taken_from_tone_model_path_env(tone_model: Path) -> None:
    result = run_cli("model", "check", env={"TONE_MODEL_PATH": str(tone_model.parent)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"] == str(tone_model)


# --- help and dev tools ---------------------------------------------------------------------------


def test_help_lists_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("transcribe", "model", "demo", "bench", "dev"):
        assert command in result.stdout


def test_transcribe_help_lists_its_options() -> None:
    result = run_cli("transcribe", "--help")
    assert result.returncode == 0
    for option in (
        "--model",
        "--channels",
        "--format",
        "--stream-chunk-ms",
        "--batch",
        "--max-duration",
        "--max-bytes",
        "--provider",
        "--decoder",
    ):
        assert option in result.stdout
    assert "{json,txt,srt,vtt,tsv}" in result.stdout


def test_dev_synth_writes_a_recording_that_transcribes_to_its_text(tone_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.wav"
    synth = run_cli("dev", "synth", "привет мир", "--out", out)
    assert synth.returncode == 0, synth.stderr
    assert json.loads(synth.stderr)[0]["text"] == "привет мир"
    result = run_cli("transcribe", out, env={"TONE_MODEL_PATH": str(tone_model)})
    assert result.returncode == 0, result.stderr
    (doc,) = json_lines(result.stdout)
    assert doc["full_text"] == "привет мир"
    assert [(p["start_time"], p["end_time"]) for p in doc["phrases"]] == [(0.6, 2.04)]


def test_dev_synth_refuses_a_character_without_a_tone_saying_so(tmp_path: Path) -> None:
    """Punctuation (as a new user types a sentence) or capitals: exit 2 with what the model has a
    tone for, no traceback, no file."""
    out = tmp_path / "x.wav"
    for text in ["привет мир. как дела", "Привет"]:
        synth = run_cli("dev", "synth", text, "--out", out)
        assert synth.returncode == 2 and "Traceback" not in synth.stderr
        assert "lower-case Russian letters and the space" in synth.stderr and repr(text) in synth.stderr
        assert not out.exists()
    stereo = run_cli("dev", "synth", "да", "--stereo-with", "нет!", "--out", out)
    assert stereo.returncode == 2 and "'!'" in stereo.stderr and not out.exists()


# --- the kit's real recordings (speech: the tone model's texts mean nothing) -----------------------


def test_kit_m4a_and_stereo_ulaw_call_transcribe_with_split_channels(tone_model: Path) -> None:
    files = [str(KIT_AUDIO / "agent_8k.m4a"), str(KIT_AUDIO / "call_stereo_8k_ulaw.wav")]
    result = run_cli("transcribe", *files, "--model", tone_model, "--channels", "split")
    assert result.returncode == 0, result.stderr
    docs = json_lines(result.stdout)
    assert [d["file"] for d in docs] == files
    assert docs[0]["duration"] == pytest.approx(5.5, abs=0.05)
    assert docs[1]["duration"] == pytest.approx(13.02, abs=0.05)
    for doc in docs:
        assert set(doc) == {"file", "phrases", "full_text", "display_text", "duration", "processing_time"}
        assert {p["channel"] for p in doc["phrases"]} <= {0, 1}


def test_version_and_usage_exit_codes() -> None:
    """--version names the package's version; bad usage is 2 (model errors are 3, above)."""
    from shared.cli.main import version

    result = run_cli("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"tone-platform {version()}")
    assert run_cli("transcribe", "--no-such-flag").returncode == 2


def test_numbers_are_written_as_digits_unless_no_normalize_and_redact_masks(
    tmp_path: Path, tone_model: Path
) -> None:
    audio, _ = synthesize(["оплата двадцать пять тысяч триста рублей", "да иди ты нахуй"])
    path = tmp_path / "numbers.wav"
    sf.write(path, audio, 8000, subtype="PCM_16")
    doc = json.loads(run_cli("transcribe", path, "--model", tone_model).stdout)
    assert [p["display"] for p in doc["phrases"]] == ["оплата 25 300 рублей", "да иди ты нахуй"]
    assert doc["display_text"] == "оплата 25 300 рублей да иди ты нахуй"
    assert doc["full_text"] == "оплата двадцать пять тысяч триста рублей да иди ты нахуй"
    txt = run_cli(
        "transcribe", path, "--model", tone_model, "--format", "txt", "--redact", "profanity"
    ).stdout
    assert txt == "оплата 25 300 рублей\nда иди ты [мат]\n"
    raw = run_cli("transcribe", path, "--model", tone_model, "--format", "txt", "--no-normalize").stdout
    assert raw == "оплата двадцать пять тысяч триста рублей\nда иди ты нахуй\n"
    bad = run_cli("transcribe", path, "--model", tone_model, "--redact", "dna")
    assert bad.returncode == 2 and "[invalid_redact]" in bad.stderr
