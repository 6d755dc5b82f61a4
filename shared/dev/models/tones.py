"""A *recognizing* test model with T-one's exact ONNX contract, and a synthesizer for it.

Each of the 34 symbols (33 letters and the space) is a pure tone; silence is the CTC blank. The
model measures, for every 30 ms frame (240 samples), the amplitude of each symbol's frequency with
a DFT (a MatMul), turns it into logits (a fixed logit for the blank), and delays its output by
0.33 s (11 frames) through ``state``: the last 11 frames' symbol logits live in the first
11 * 34 values of the float16 state row. A stream whose state is lost or corrupted therefore loses
letters, as a real stream would.

Parameters (documented, used by the synthesizer and the tests):
- symbol k (index into LABELS, 0..33) sounds at ``(FIRST_BIN + 2 k) * SAMPLE_RATE / 240`` Hz: 200..2400 Hz,
  two DFT bins apart, so that tones are orthogonal over a frame;
- logit of symbol k = amplitude of its tone / 100; blank logit = 10 (an amplitude of 1000);
- each character sounds for CHAR_FRAMES frames, followed by GAP_FRAMES frames of silence, so that
  even misaligned audio keeps a blank frame between two equal letters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from shared.asr.types import LABELS, SAMPLE_RATE
from shared.dev.models.contract import save_contract_model

RATE = SAMPLE_RATE
FRAME = 240
FIRST_BIN = 6
N_SYMBOLS = len(LABELS)  # 34: letters and the space
DELAY_FRAMES = 11  # 0.33 s
GAIN = 0.01
BLANK_LOGIT = 10.0
AMPLITUDE = 8000.0
CHAR_FRAMES = 3
GAP_FRAMES = 2
FRAME_SECONDS = FRAME / RATE


def _grid(seconds: float) -> int:
    return round(seconds / FRAME_SECONDS)


def symbol_frequency(k: int) -> float:
    return (FIRST_BIN + 2 * k) * RATE / FRAME


def build_tone_model(path: str | Path) -> Path:
    """Write the recognizing model (a few hundred kB) to ``path`` (a .onnx file or a directory)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = Path(path)
    if out.suffix != ".onnx":
        out.mkdir(parents=True, exist_ok=True)
        out = out / "model.onnx"
    n = np.arange(FRAME)
    freqs = FIRST_BIN + 2 * np.arange(N_SYMBOLS)
    scale = 2.0 / FRAME * GAIN
    w_cos = (np.cos(2 * np.pi * np.outer(n, freqs) / FRAME) * scale).astype(np.float32)
    w_sin = (np.sin(2 * np.pi * np.outer(n, freqs) / FRAME) * scale).astype(np.float32)
    held = DELAY_FRAMES * N_SYMBOLS

    def const(name: str, value: npt.ArrayLike, dtype: type = np.int64) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)

    inits = [
        numpy_helper.from_array(w_cos, "w_cos"),
        numpy_helper.from_array(w_sin, "w_sin"),
        const("frames_shape", [-1, 10, FRAME]),
        const("past_shape", [-1, DELAY_FRAMES, N_SYMBOLS]),
        const("held_shape", [-1, held]),
        const("zero", [0]),
        const("held", [held]),
        const("big", [2**62]),
        const("one", [1]),
        const("ten", [10]),
        const("pads", [0, 0, 0, 0, 0, 1]),
        const("blank", BLANK_LOGIT, np.float32),
    ]
    node = helper.make_node
    nodes = [
        node("Cast", ["signal"], ["x"], to=TensorProto.FLOAT),
        node("Reshape", ["x", "frames_shape"], ["frames"]),
        node("MatMul", ["frames", "w_cos"], ["re"]),
        node("MatMul", ["frames", "w_sin"], ["im"]),
        node("Mul", ["re", "re"], ["re2"]),
        node("Mul", ["im", "im"], ["im2"]),
        node("Add", ["re2", "im2"], ["pow"]),
        node("Sqrt", ["pow"], ["now"]),  # [B, 10, 34] symbol logits of this chunk
        node("Slice", ["state", "zero", "held", "one"], ["past16"]),
        node("Cast", ["past16"], ["past_flat"], to=TensorProto.FLOAT),
        node("Reshape", ["past_flat", "past_shape"], ["past"]),
        node("Concat", ["past", "now"], ["line"], axis=1),  # [B, 21, 34]
        node("Slice", ["line", "zero", "ten", "one"], ["out"]),
        node("Slice", ["line", "ten", "big", "one"], ["keep"]),
        node("Pad", ["out", "pads", "blank"], ["logits"], mode="constant"),
        node("LogSoftmax", ["logits"], ["logprobs"], axis=-1),
        node("Reshape", ["keep", "held_shape"], ["keep_flat"]),
        node("Cast", ["keep_flat"], ["keep16"], to=TensorProto.FLOAT16),
        node("Slice", ["state", "held", "big", "one"], ["rest"]),
        node("Concat", ["keep16", "rest"], ["state_next"], axis=1),
    ]
    return save_contract_model(
        nodes,
        inits,
        "tone_test_model",
        "T-one contract test model: symbols as pure tones, 0.33 s delay through state",
        out,
    )


@dataclass(frozen=True)
class ExpectedPhrase:
    text: str
    start: float
    end: float
    words: tuple[tuple[str, float, float], ...]


def synthesize(
    phrases: list[str],
    *,
    lead: float = 0.6,
    pause: float = 1.2,
    tail: float = 0.6,
    amplitude: float = AMPLITUDE,
) -> tuple[npt.NDArray[np.int16], list[ExpectedPhrase]]:
    """8 kHz int16 audio that the tone model transcribes as ``phrases``, and the expected result.

    Times are aligned to the 30 ms grid, so the expected phrase and word times are exact.
    """
    t = np.arange(CHAR_FRAMES * FRAME) / RATE
    fade = np.minimum(1.0, np.minimum(np.arange(len(t)), np.arange(len(t))[::-1]) / 16.0)
    pieces: list[np.ndarray] = [np.zeros(_grid(lead) * FRAME)]
    expected: list[ExpectedPhrase] = []
    frame = _grid(lead)
    for i, text in enumerate(phrases):
        if i:
            pieces.append(np.zeros(_grid(pause) * FRAME))
            frame += _grid(pause)
        start = frame
        words: list[tuple[str, float, float]] = []
        word_start = None
        for ch in text:
            if ch not in LABELS:
                raise ValueError(
                    f"the tone model has a tone only for lower-case Russian letters and the space:"
                    f" {ch!r} in {text!r} has none (each phrase its own argument, no punctuation)"
                )
            k = LABELS.index(ch)
            pieces.append(amplitude * fade * np.sin(2 * np.pi * symbol_frequency(k) * t))
            pieces.append(np.zeros(GAP_FRAMES * FRAME))
            if ch == " ":
                if word_start is not None:
                    words.append(("", word_start, frame - GAP_FRAMES))
                word_start = None
            elif word_start is None:
                word_start = frame
            frame += CHAR_FRAMES + GAP_FRAMES
        if word_start is not None:
            words.append(("", word_start, frame - GAP_FRAMES))
        end = frame - GAP_FRAMES
        names = text.split()
        expected.append(
            ExpectedPhrase(
                text=text.strip(),
                start=round(start * FRAME_SECONDS, 2),
                end=round(end * FRAME_SECONDS, 2),
                words=tuple(
                    (w, round(s * FRAME_SECONDS, 2), round(e * FRAME_SECONDS, 2))
                    for w, (_, s, e) in zip(names, words)
                ),
            )
        )
    pieces.append(np.zeros(_grid(tail) * FRAME))
    audio = np.round(np.concatenate(pieces)).astype(np.int16)
    return audio, expected
