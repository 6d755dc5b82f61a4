"""The live resampler (worker/resampler.py): any piece sizes, and a state carried through bytes
(Redis) between pieces, give the whole stream's resampling."""

from __future__ import annotations

import numpy as np
import pytest

from shared.asr.audio import resample
from worker.resampler import LiveResampler


@pytest.mark.parametrize(("rate", "channels"), [(16000, 1), (44100, 1), (48000, 2), (11025, 1)])
def test_pieces_of_any_size_give_the_whole_streams_resampling(rate: int, channels: int) -> None:
    rng = np.random.default_rng(rate)
    samples = rng.normal(0, 6000, (rate * 2 + 123, channels)).clip(-32768, 32767).astype(np.int16)
    whole = resample(samples, rate)
    sizes = [1, rate // 50, 7, rate // 3] + [int(s) for s in rng.integers(1, rate // 2, 40)]
    rs = LiveResampler(rate, channels)
    out, at = [], 0
    for size in sizes:
        if at >= len(samples):
            break
        out.append(rs.feed(samples[at : at + size]))
        at += size
        rs = LiveResampler.from_bytes(rs.to_bytes())  # the state as Redis keeps it
    out.append(rs.feed(samples[at:]))
    out.append(rs.flush())
    got = np.concatenate(out)
    assert got.shape == whole.shape
    assert np.abs(got.astype(np.int32) - whole).max() <= 1  # float rounding, at most one LSB


def test_per_piece_resampling_without_state_is_what_this_fixes() -> None:
    rng = np.random.default_rng(1)
    samples = rng.normal(0, 6000, (32000, 1)).clip(-32768, 32767).astype(np.int16)
    whole = resample(samples, 16000).astype(np.float64)
    naive = np.concatenate([resample(samples[i : i + 320], 16000) for i in range(0, 32000, 320)])
    rms = np.sqrt(np.mean((naive[: len(whole)] - whole) ** 2)) / np.sqrt(np.mean(whole**2))
    assert rms > 0.01  # 20 ms pieces resampled apart: percent-level error
    rs = LiveResampler(16000, 1)
    live = np.concatenate([rs.feed(samples[i : i + 320]) for i in range(0, 32000, 320)] + [rs.flush()])
    assert np.abs(live.astype(np.int32) - whole).max() <= 1


def test_a_foreign_state_is_refused() -> None:
    with pytest.raises(ValueError, match="resampler"):
        LiveResampler.from_bytes(b"XXXX" + bytes(32))
