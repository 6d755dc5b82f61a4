"""A cost-faithful stand-in for T-one: the real model's contract and compute, random weights.

The released ``model.onnx`` of ``t-tech/T-one`` cannot be downloaded on our machines, so this
module builds an ONNX graph with the same I/O contract, about the same parameter count (≈ 71.7 M,
float16, ≈ 144 MB on disk) and about the same compute per chunk (≈ 0.65 GMAC ≈ 1.3 GFLOP per
300 ms chunk per stream), following the "Inside the model" section of ``T-ONE.md``. Its outputs
are finite but meaningless: it exists to measure throughput, latency and memory, not accuracy.
Only numpy and onnx are used (no torch).

Contract (opset 17, IR version 8):

==========  =======  ================  ================================================
signal      int32    [batch, 2400, 1]  300 ms of 8 kHz audio, int16 range
state       float16  [batch, 219729]   zeros for a new stream
logprobs    float32  [batch, 10, 35]   log_softmax over the 35 CTC classes
state_next  float16  [batch, 219729]   feed into the next call of the same stream
==========  =======  ================  ================================================

Graph, per chunk and stream (T = frames per chunk):

- Frontend (float32): signal / 32767, prepend 80 carried samples (2480), STFT as a Conv1d
  (n_fft = window = 160, hop 80, periodic Hann, pre-emphasis 0.97 folded into the kernel; 2·81
  output channels for real and imaginary parts), power, 64 HTK mel bins (MatMul),
  log(x + 2⁻²⁴): 30 frames of 10 ms, then cast to float16.
- Subsampling: RMSNorm(64); Conv2d(1→32, 11×21) + folded BatchNorm + SiLU over 10 cached + 30
  new frames; Conv2d(32→64, 11×11, stride (3, 1)) + folded BatchNorm + SiLU over 8 cached + 30
  frames; Linear(64·34 → 384) + RMSNorm: T = 10.
- Encoder: 16 pre-norm Conformer layers (d_model 384, 8 heads of 48): x += ½·FFN(x);
  x += MHSA(x); x += ConvModule(x); x += ½·FFN(x); x = LayerNorm(x). FFN = gated SiLU,
  384 → 2·1536 (gate, up), 1536 → 384. MHSA = fused QKV projection, LayerNorm on Q and K per
  head, rotary position embedding, softmax in float32. ConvModule = pointwise 384 → 768 + GLU,
  causal depthwise k = 31 over a 30-frame cache, folded BatchNorm, SiLU, pointwise 384 → 384.
  After layer 6 a causal depthwise Conv1d(k = 3, stride 2, one cached frame) halves the rate
  (layers 7–14 run at T = 5); after layer 14 the frames are repeated ×2 and the layer-6 output is
  added back (skip). Layers 14 and 15 attend over 30 cached frames of their normalised input
  (K and V are recomputed from that cache); the other layers attend within the chunk only.
- Head: Linear(384 → 35), cast to float32, LogSoftmax.

Precision follows an fp16-autocast export: every initializer is float16 (the frontend's STFT
and mel matrices are cast to float32 in the graph), matrix products and convolutions run in
float16, norms and softmax run in float32 between casts.

State layout (float16 offsets into the 219 729 values of one row; time-major unless noted):

===========  ========  ===========================================================
offset       size      content
===========  ========  ===========================================================
0            80        last 80 audio samples (÷ 32767) for the STFT overlap
80           640       subsampling conv 1 input cache: 10 frames × 64 mel (after RMSNorm)
720          11 264    subsampling conv 2 input cache: 32 channels × 8 frames × 44 (ch-major)
11 984       184 320   depthwise conv caches, layers 0–15: 16 × 30 frames × 384
196 304      23 040    attention caches, layers 14 and 15: 2 × 30 frames × 384
219 344      384       time-reduction cache: the last layer-6 output frame
219 728      1         reserved, passed through unchanged
===========  ========  ===========================================================

The caches add up to exactly 219 729 values, which suggests this is close to the real layout,
but the real model's layout is not published: an engine must treat the state as opaque.

Deviation from a textbook Conformer: the attention has no output projection. With it the graph
would hold ≈ 74.7 M parameters (+ 4 %); without it the stand-in holds 72 354 083 values
(+ 0.9 % of the real 71 685 347) and ≈ 0.65 GMAC per chunk (the spec says ≈ 0.64). Which
weights the real model saves is not published; this only matters for cost, and it is within 1 %.

``count_parameters`` counts the elements of all floating-point initializers (so it includes the
STFT kernel, the mel matrix and the rotary tables, ≈ 60 K values, and excludes int64 shapes).
"""

from __future__ import annotations

import math
import os
import pathlib
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from shared.asr.types import SAMPLE_RATE

__all__ = ["STATE_SIZE", "build_cost_model", "count_parameters"]

# --- contract --------------------------------------------------------------------------------
CHUNK_SAMPLES = 2400
STATE_SIZE = 219_729
VOCAB = 35
OPSET = 17
IR_VERSION = 8

# --- frontend --------------------------------------------------------------------------------

N_FFT = 160
HOP = 80
N_BINS = N_FFT // 2 + 1  # 81
N_MELS = 64
PREEMPHASIS = 0.97
LOG_FLOOR = 2.0**-24
FRAMES = 30  # 10 ms frames per chunk

# --- subsampling -----------------------------------------------------------------------------
C1, K1_T, K1_F = 32, 11, 21
C2, K2_T, K2_F, S2_T = 64, 11, 11, 3
F1 = N_MELS - K1_F + 1  # 44
F2 = F1 - K2_F + 1  # 34
CACHE1 = K1_T - 1  # 10 frames
CACHE2 = K2_T - S2_T  # 8 frames: (8 + 30 - 11) / 3 + 1 = 10 outputs

# --- encoder ---------------------------------------------------------------------------------
D = 384
HEADS = 8
HEAD_DIM = D // HEADS  # 48
FF = 1536
LAYERS = 16
DW_K = 31
DW_CACHE = DW_K - 1  # 30 frames
ATT_CACHE = 30
T_FULL = 10  # frames per chunk at 30 ms
T_HALF = 5  # frames per chunk in layers 7-14
REDUCE_AFTER = 6  # time reduction after this layer
RESTORE_AFTER = 14  # upsampling after this layer
CACHED_ATTENTION = (14, 15)
RED_K = 3  # time-reduction kernel (stride 2): 1 cached frame + 10 new = 11 -> 5 outputs
ROPE_BASE = 10_000.0

# --- state layout (offsets in values) --------------------------------------------------------
_STATE_PARTS: list[tuple[str, int]] = [
    ("audio", HOP),
    ("conv1", CACHE1 * N_MELS),
    ("conv2", C1 * CACHE2 * F1),
    *[(f"dw{i}", DW_CACHE * D) for i in range(LAYERS)],
    *[(f"att{i}", ATT_CACHE * D) for i in CACHED_ATTENTION],
    ("reduce", (RED_K - 1) // 2 * D),
]
_USED = sum(size for _, size in _STATE_PARTS)
assert _USED <= STATE_SIZE, "caches exceed the state"
_STATE_PARTS.append(("reserved", STATE_SIZE - _USED))


def _state_offsets() -> dict[str, tuple[int, int]]:
    offsets: dict[str, tuple[int, int]] = {}
    start = 0
    for name, size in _STATE_PARTS:
        offsets[name] = (start, start + size)
        start += size
    return offsets


_F16 = TensorProto.FLOAT16
_F32 = TensorProto.FLOAT


class _Graph:
    """Collects nodes and initializers with unique names; every method returns tensor names."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counts: dict[str, int] = {}
        self._int_consts: dict[tuple[int, ...], str] = {}

    # -- naming and constants --
    def name(self, prefix: str) -> str:
        n = self._counts.get(prefix, 0)
        self._counts[prefix] = n + 1
        return f"{prefix}_{n}" if n else prefix

    def init(self, array: np.ndarray, prefix: str) -> str:
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def f16(self, array: np.ndarray, prefix: str) -> str:
        return self.init(np.asarray(array, dtype=np.float16), prefix)

    def ints(self, values: Sequence[int]) -> str:
        key = tuple(int(v) for v in values)
        if key not in self._int_consts:
            self._int_consts[key] = self.init(np.array(key, dtype=np.int64), "i64")
        return self._int_consts[key]

    def scalar(self, value: float, dtype: int = _F16) -> str:
        """A scalar constant as a Constant node (float32 scalars never become initializers)."""
        out = self.name("const")
        np_dtype = np.float16 if dtype == _F16 else np.float32
        tensor = numpy_helper.from_array(np.array(value, dtype=np_dtype), out + "_value")
        self.nodes.append(helper.make_node("Constant", [], [out], value=tensor))
        return out

    def weight(self, shape: Sequence[int], fan_in: int, prefix: str) -> str:
        std = 1.0 / math.sqrt(fan_in)
        return self.f16(self.rng.standard_normal(tuple(shape), dtype=np.float32) * std, prefix)

    def bias(self, size: int, prefix: str, std: float = 0.02) -> str:
        return self.f16(self.rng.standard_normal(size, dtype=np.float32) * std, prefix)

    def gain(self, size: int, prefix: str) -> str:
        return self.f16(1.0 + 0.02 * self.rng.standard_normal(size, dtype=np.float32), prefix)

    # -- nodes --
    def op(self, op_type: str, inputs: Sequence[str], prefix: str | None = None, **attrs: Any) -> str:
        out = self.name(prefix or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def ops(self, op_type: str, inputs: Sequence[str], n_out: int, prefix: str, **attrs: Any) -> list[str]:
        outs = [self.name(f"{prefix}_out") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.name(prefix), **attrs))
        return outs

    def cast(self, x: str, to: int) -> str:
        return self.op("Cast", [x], "cast", to=to)

    def reshape(self, x: str, shape: Sequence[int]) -> str:
        return self.op("Reshape", [x, self.ints(shape)], "reshape")

    def transpose(self, x: str, perm: Sequence[int]) -> str:
        return self.op("Transpose", [x], "transpose", perm=list(perm))

    def slice(self, x: str, start: int, end: int, axis: int) -> str:
        return self.op("Slice", [x, self.ints([start]), self.ints([end]), self.ints([axis])], "slice")

    def concat(self, xs: Sequence[str], axis: int) -> str:
        return self.op("Concat", xs, "concat", axis=axis)

    def split(self, x: str, sizes: Sequence[int], axis: int) -> list[str]:
        return self.ops("Split", [x, self.ints(sizes)], len(sizes), "split", axis=axis)

    def add(self, a: str, b: str) -> str:
        return self.op("Add", [a, b], "add")

    def mul(self, a: str, b: str) -> str:
        return self.op("Mul", [a, b], "mul")

    def silu(self, x: str) -> str:
        return self.mul(x, self.op("Sigmoid", [x], "sigmoid"))

    def linear(self, x: str, d_in: int, d_out: int, prefix: str, bias: bool = True) -> str:
        y = self.op("MatMul", [x, self.weight((d_in, d_out), d_in, f"{prefix}.weight")], f"{prefix}.matmul")
        return self.add(y, self.bias(d_out, f"{prefix}.bias")) if bias else y

    def layer_norm(self, x: str, size: int, prefix: str) -> str:
        """LayerNorm over the last axis, computed in float32 like autocast does."""
        scale = self.cast(self.gain(size, f"{prefix}.weight"), _F32)
        shift = self.cast(self.bias(size, f"{prefix}.bias"), _F32)
        y = self.op("LayerNormalization", [self.cast(x, _F32), scale, shift], prefix, axis=-1, epsilon=1e-5)
        return self.cast(y, _F16)

    def rms_norm(self, x: str, size: int, prefix: str) -> str:
        """RMSNorm over the last axis, computed in float32."""
        x32 = self.cast(x, _F32)
        mean_sq = self.op("ReduceMean", [self.mul(x32, x32)], "reduce_mean", axes=[-1], keepdims=1)
        rms = self.op("Sqrt", [self.add(mean_sq, self.scalar(1e-6, _F32))], "sqrt")
        y = self.cast(self.op("Div", [x32, rms], "div"), _F16)
        return self.mul(y, self.gain(size, f"{prefix}.weight"))


# --- frontend --------------------------------------------------------------------------------


def _stft_kernel() -> np.ndarray:
    """[2·81, 1, 160]: windowed DFT rows (real then imaginary) with pre-emphasis folded in."""
    n = np.arange(N_FFT)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)  # periodic Hann, window[0] = 0
    k = np.arange(N_BINS)[:, None]
    phase = 2 * np.pi * k * n[None, :] / N_FFT
    rows = np.concatenate([np.cos(phase), -np.sin(phase)]) * window
    # sum_n h[n] (x[n] - a x[n-1]) = sum_m x[m] (h[m] - a h[m+1]); the x[-1] term has h[0] = 0.
    shifted = np.concatenate([rows[:, 1:], np.zeros((rows.shape[0], 1))], axis=1)
    return (rows - PREEMPHASIS * shifted)[:, None, :]


def _mel_matrix() -> np.ndarray:
    """[81, 64] triangular HTK mel filters over 0..4 kHz."""

    def to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def to_hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0, SAMPLE_RATE / 2, N_BINS)
    edges = to_hz(np.linspace(to_mel(np.array(0.0)), to_mel(np.array(SAMPLE_RATE / 2)), N_MELS + 2))
    lower = (freqs[None, :] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
    upper = (edges[2:, None] - freqs[None, :]) / (edges[2:, None] - edges[1:-1, None])
    return np.maximum(0.0, np.minimum(lower, upper)).T


def _frontend(g: _Graph, signal: str, carry: str) -> tuple[str, str]:
    """signal [B,2400,1] int32, carry [B,80] fp16 -> (log-mel [B,30,64] fp16, new carry fp16)."""
    audio = g.mul(g.reshape(g.cast(signal, _F32), [-1, CHUNK_SAMPLES]), g.scalar(1.0 / 32767.0, _F32))
    samples = g.concat([g.cast(carry, _F32), audio], axis=1)  # [B, 2480]
    new_carry = g.cast(g.slice(samples, CHUNK_SAMPLES, CHUNK_SAMPLES + HOP, axis=1), _F16)
    kernel = g.cast(g.f16(_stft_kernel(), "frontend.stft"), _F32)
    spec = g.op("Conv", [g.reshape(samples, [-1, 1, CHUNK_SAMPLES + HOP]), kernel], "stft", strides=[HOP])
    power = g.op(
        "ReduceSum", [g.reshape(g.mul(spec, spec), [-1, 2, N_BINS, FRAMES]), g.ints([1])], keepdims=0
    )
    mel = g.cast(g.f16(_mel_matrix(), "frontend.mel"), _F32)
    feats = g.op("MatMul", [g.transpose(power, [0, 2, 1]), mel], "mel")
    log_mel = g.op("Log", [g.add(feats, g.scalar(LOG_FLOOR, _F32))], "log")
    return g.cast(log_mel, _F16), new_carry


# --- subsampling -----------------------------------------------------------------------------


def _conv2d(
    g: _Graph, x: str, c_in: int, c_out: int, kernel: tuple[int, int], stride: int, prefix: str
) -> str:
    """Conv2d with BatchNorm folded into its weight and bias, then SiLU."""
    w = g.weight((c_out, c_in, *kernel), c_in * kernel[0] * kernel[1], f"{prefix}.weight")
    y = g.op("Conv", [x, w, g.bias(c_out, f"{prefix}.bias")], prefix, strides=[stride, 1])
    return g.silu(y)


def _subsampling(g: _Graph, feats: str, cache1: str, cache2: str) -> tuple[str, str, str]:
    """log-mel [B,30,64] -> ([B,10,384], new conv-1 cache [B,10,64], new conv-2 cache)."""
    x = g.rms_norm(feats, N_MELS, "subsampling.norm_in")
    x1 = g.concat([cache1, x], axis=1)  # [B, 40, 64]
    new_cache1 = g.slice(x1, FRAMES, FRAMES + CACHE1, axis=1)
    h = _conv2d(
        g, g.reshape(x1, [-1, 1, CACHE1 + FRAMES, N_MELS]), 1, C1, (K1_T, K1_F), 1, "subsampling.conv1"
    )
    h2 = g.concat([cache2, h], axis=2)  # [B, 32, 38, 44]
    new_cache2 = g.slice(h2, FRAMES, FRAMES + CACHE2, axis=2)
    y = _conv2d(g, h2, C1, C2, (K2_T, K2_F), S2_T, "subsampling.conv2")  # [B, 64, 10, 34]
    y = g.reshape(g.transpose(y, [0, 2, 1, 3]), [-1, T_FULL, C2 * F2])
    y = g.rms_norm(g.linear(y, C2 * F2, D, "subsampling.proj"), D, "subsampling.norm_out")
    return y, new_cache1, new_cache2


# --- encoder ---------------------------------------------------------------------------------


def _feed_forward(g: _Graph, x: str, prefix: str) -> str:
    """x + ½ · W2(SiLU(gate) · up), gate and up from one 384 -> 2·1536 projection."""
    h = g.linear(g.layer_norm(x, D, f"{prefix}.norm"), D, 2 * FF, f"{prefix}.w1")
    gate, up = g.split(h, [FF, FF], axis=-1)
    y = g.linear(g.mul(g.silu(gate), up), FF, D, f"{prefix}.w2")
    return g.add(x, g.mul(y, g.scalar(0.5)))


def _rope_tables(g: _Graph, positions: np.ndarray, prefix: str) -> tuple[str, str]:
    """cos and sin tables [T, 1, 48] for rotate-half RoPE."""
    inv_freq = ROPE_BASE ** (-np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
    angles = positions[:, None] * inv_freq[None, :]
    angles = np.concatenate([angles, angles], axis=1)[:, None, :]
    return g.f16(np.cos(angles), f"{prefix}.cos"), g.f16(np.sin(angles), f"{prefix}.sin")


def _rope(g: _Graph, x: str, cos: str, sin: str) -> str:
    """x [B,T,8,48] rotated: x·cos + rotate_half(x)·sin."""
    x1, x2 = g.split(x, [HEAD_DIM // 2, HEAD_DIM // 2], axis=-1)
    rotated = g.concat([g.op("Neg", [x2], "neg"), x1], axis=-1)
    return g.add(g.mul(x, cos), g.mul(rotated, sin))


def _attention(g: _Graph, x: str, t: int, layer: int, cache: str | None) -> tuple[str, str | None]:
    """Residual RoPE self-attention. With a cache [B,30,384] the keys span cache + chunk."""
    prefix = f"layers.{layer}.attn"
    xn = g.layer_norm(x, D, f"{prefix}.norm")
    if cache is None:
        q, k, v = g.split(g.linear(xn, D, 3 * D, f"{prefix}.qkv"), [D, D, D], axis=-1)
        t_k, new_cache = t, None
        q_pos = k_pos = np.arange(t, dtype=np.float64)
    else:
        context = g.concat([cache, xn], axis=1)  # [B, 30 + T, 384]
        new_cache = g.slice(context, t, t + ATT_CACHE, axis=1)
        q = g.linear(xn, D, D, f"{prefix}.q")
        k, v = g.split(g.linear(context, D, 2 * D, f"{prefix}.kv"), [D, D], axis=-1)
        t_k = ATT_CACHE + t
        k_pos = np.arange(t_k, dtype=np.float64)
        q_pos = k_pos[ATT_CACHE:]
    q = g.layer_norm(g.reshape(q, [-1, t, HEADS, HEAD_DIM]), HEAD_DIM, f"{prefix}.q_norm")
    k = g.layer_norm(g.reshape(k, [-1, t_k, HEADS, HEAD_DIM]), HEAD_DIM, f"{prefix}.k_norm")
    q = _rope(g, q, *_rope_tables(g, q_pos, f"{prefix}.rope_q"))
    k = _rope(g, k, *_rope_tables(g, k_pos, f"{prefix}.rope_k"))
    q = g.mul(g.transpose(q, [0, 2, 1, 3]), g.scalar(1.0 / math.sqrt(HEAD_DIM)))  # [B, 8, T, 48]
    k = g.transpose(k, [0, 2, 3, 1])  # [B, 8, 48, Tk]
    v = g.transpose(g.reshape(v, [-1, t_k, HEADS, HEAD_DIM]), [0, 2, 1, 3])  # [B, 8, Tk, 48]
    scores = g.cast(g.op("MatMul", [q, k], f"{prefix}.scores"), _F32)
    probs = g.cast(g.op("Softmax", [scores], f"{prefix}.softmax", axis=-1), _F16)
    out = g.transpose(g.op("MatMul", [probs, v], f"{prefix}.context"), [0, 2, 1, 3])
    return g.add(x, g.reshape(out, [-1, t, D])), new_cache


def _conv_module(g: _Graph, x: str, t: int, layer: int, cache: str) -> tuple[str, str]:
    """Residual convolution module; cache [B,30,384] holds the depthwise conv's past input."""
    prefix = f"layers.{layer}.conv"
    h = g.linear(g.layer_norm(x, D, f"{prefix}.norm"), D, 2 * D, f"{prefix}.pw1")
    a, b = g.split(h, [D, D], axis=-1)
    h = g.concat([cache, g.mul(a, g.op("Sigmoid", [b], "sigmoid"))], axis=1)  # GLU, [B, 30 + T, 384]
    new_cache = g.slice(h, t, t + DW_CACHE, axis=1)
    w = g.weight((D, 1, DW_K), DW_K, f"{prefix}.dw.weight")  # BatchNorm folded in
    h = g.op("Conv", [g.transpose(h, [0, 2, 1]), w, g.bias(D, f"{prefix}.dw.bias")], f"{prefix}.dw", group=D)
    h = g.transpose(g.silu(h), [0, 2, 1])  # [B, T, 384]
    return g.add(x, g.linear(h, D, D, f"{prefix}.pw2")), new_cache


def _conformer_layer(
    g: _Graph, x: str, t: int, layer: int, dw_cache: str, att_cache: str | None
) -> tuple[str, str, str | None]:
    x = _feed_forward(g, x, f"layers.{layer}.ff1")
    x, new_att_cache = _attention(g, x, t, layer, att_cache)
    x, new_dw_cache = _conv_module(g, x, t, layer, dw_cache)
    x = _feed_forward(g, x, f"layers.{layer}.ff2")
    return g.layer_norm(x, D, f"layers.{layer}.norm_out"), new_dw_cache, new_att_cache


def _reduce_time(g: _Graph, x: str, cache: str) -> tuple[str, str]:
    """[B,10,384] -> [B,5,384]: causal depthwise Conv1d(k=3, stride 2) over 1 cached + 10 frames."""
    h = g.transpose(g.concat([cache, x], axis=1), [0, 2, 1])  # [B, 384, 11]
    w = g.weight((D, 1, RED_K), RED_K, "reduce.weight")
    y = g.op("Conv", [h, w, g.bias(D, "reduce.bias")], "reduce", group=D, strides=[2])
    return g.transpose(y, [0, 2, 1]), g.slice(x, T_FULL - 1, T_FULL, axis=1)


def _restore_time(g: _Graph, x: str, skip: str) -> str:
    """[B,5,384] -> [B,10,384]: every frame twice, plus the pre-reduction frames."""
    x = g.reshape(x, [-1, T_HALF, 1, D])
    return g.add(g.reshape(g.concat([x, x], axis=2), [-1, T_FULL, D]), skip)


# --- the model -------------------------------------------------------------------------------


def _build_graph(seed: int) -> onnx.ModelProto:
    g = _Graph(seed)
    offsets = _state_offsets()

    def read(name: str, shape: Sequence[int]) -> str:
        start, end = offsets[name]
        return g.reshape(g.slice("state", start, end, axis=1), [-1, *shape])

    new_state: dict[str, str] = {}
    feats, new_state["audio"] = _frontend(g, "signal", read("audio", [HOP]))
    x, new_state["conv1"], new_state["conv2"] = _subsampling(
        g, feats, read("conv1", [CACHE1, N_MELS]), read("conv2", [C1, CACHE2, F1])
    )
    skip = x
    t = T_FULL
    for layer in range(LAYERS):
        att_cache = read(f"att{layer}", [ATT_CACHE, D]) if layer in CACHED_ATTENTION else None
        x, new_state[f"dw{layer}"], new_att = _conformer_layer(
            g, x, t, layer, read(f"dw{layer}", [DW_CACHE, D]), att_cache
        )
        if new_att is not None:
            new_state[f"att{layer}"] = new_att
        if layer == REDUCE_AFTER:
            skip = x
            x, new_state["reduce"] = _reduce_time(g, x, read("reduce", [(RED_K - 1) // 2, D]))
            t = T_HALF
        elif layer == RESTORE_AFTER:
            x = _restore_time(g, x, skip)
            t = T_FULL
    logits = g.cast(g.linear(x, D, VOCAB, "head"), _F32)
    g.nodes.append(helper.make_node("LogSoftmax", [logits], ["logprobs"], name="log_softmax", axis=-1))

    start, end = offsets["reserved"]
    new_state["reserved"] = g.slice("state", start, end, axis=1)
    parts = [g.reshape(new_state[name], [-1, size]) for name, size in _STATE_PARTS]
    g.nodes.append(helper.make_node("Concat", parts, ["state_next"], name="state_concat", axis=1))

    graph = helper.make_graph(
        g.nodes,
        "tone_cost_standin",
        inputs=[
            helper.make_tensor_value_info("signal", TensorProto.INT32, ["batch", CHUNK_SAMPLES, 1]),
            helper.make_tensor_value_info("state", _F16, ["batch", STATE_SIZE]),
        ],
        outputs=[
            helper.make_tensor_value_info("logprobs", _F32, ["batch", T_FULL, VOCAB]),
            helper.make_tensor_value_info("state_next", _F16, ["batch", STATE_SIZE]),
        ],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="tone-platform.devmodels.cost",
        doc_string="Cost-faithful T-one stand-in with random weights (not a speech recogniser).",
    )
    model.ir_version = IR_VERSION
    return model


def count_parameters(model: onnx.ModelProto) -> int:
    """Number of elements in the model's floating-point initializers."""
    floats = {TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.BFLOAT16}
    return sum(math.prod(t.dims) for t in model.graph.initializer if t.data_type in floats)


def build_cost_model(path: str | pathlib.Path, *, seed: int = 0) -> pathlib.Path:
    """Write the stand-in (≈ 144 MB) to ``path`` (a ``.onnx`` file, or a directory that gets
    ``model.onnx``) atomically, and return the file's path. Same seed, same bytes."""
    target = pathlib.Path(path)
    if target.suffix != ".onnx":
        target = target / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    model = _build_graph(seed)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        onnx.save_model(model, tmp_name)
        os.chmod(tmp_name, 0o644)  # mkstemp makes it 0600
        os.replace(tmp_name, target)
    except BaseException:
        pathlib.Path(tmp_name).unlink(missing_ok=True)
        raise
    return target
