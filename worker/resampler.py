"""A live session's resampler whose state is a few bytes and some recent input, so that it lives
in Redis with the session's checkpoint and any worker continues it exactly.

Resampling each piece on its own (as live sessions once did) restarts soxr's filter at every piece
edge: 16 → 8 kHz in 20 ms pieces gave 2.3 % RMS error with spikes of 36 %. Here each piece is
resampled together with the input around it: the buffer starts at a whole block of the rate ratio
(so its output is aligned with the whole stream's), outputs within MARGIN samples of the buffer's
edges are held back until more input arrives (or the stream ends), and the input no later output
needs is dropped. soxr's one-shot output is then the whole stream's one-shot output (what the
offline reader's soxr stream gives too) up to float rounding, about 1e-7.
"""

from __future__ import annotations

import struct
from math import gcd

import numpy as np

from shared.asr.audio import resample
from shared.asr.types import SAMPLE_RATE

MARGIN = 128  # output samples (16 ms at 8 kHz) held back at each edge: soxr HQ's edge effects reach ~90
_HEADER = struct.Struct("<4sIIqq")  # magic, rate, channels, first input sample, outputs given
_MAGIC = b"RSM1"


class LiveResampler:
    """Input at ``rate`` (int16, shape (n, channels)) to SAMPLE_RATE, piece by piece."""

    def __init__(self, rate: int, channels: int, start: int = 0, emitted: int = 0,
                 buffer: np.ndarray | None = None) -> None:  # fmt: skip
        self.rate = rate
        self.channels = channels
        self.start = start  # the buffer's first input sample in the stream (a multiple of the block)
        self.emitted = emitted  # output samples given out so far
        self.buffer = buffer if buffer is not None else np.zeros((0, channels), np.int16)
        g = gcd(rate, SAMPLE_RATE)
        self.block_in, self.block_out = rate // g, SAMPLE_RATE // g

    def feed(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        """The output that ``samples`` (appended to what came before) make final; with ``last``,
        everything left."""
        buffer = np.concatenate([self.buffer, samples]) if len(samples) else self.buffer
        if not len(buffer):
            return np.zeros((0, self.channels), np.int16)
        out = resample(buffer, self.rate)
        first = self.start * self.block_out // self.block_in  # the global index of out[0]
        end = first + len(out) if last else first + len(out) - MARGIN
        end = max(end, self.emitted)
        piece = out[self.emitted - first : end - first]
        self.emitted = end
        drop = max(0, (self.emitted - MARGIN - first) // self.block_out) * self.block_in
        self.buffer = buffer[drop:]
        self.start += drop
        return piece

    def flush(self) -> np.ndarray:
        """The rest, at the stream's end (its tail resampled as the whole stream's end is)."""
        return self.feed(np.zeros((0, self.channels), np.int16), last=True)

    def to_bytes(self) -> bytes:
        header = _HEADER.pack(_MAGIC, self.rate, self.channels, self.start, self.emitted)
        return header + np.ascontiguousarray(self.buffer, "<i2").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> LiveResampler:
        magic, rate, channels, start, emitted = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise ValueError("not a live resampler's state")
        buffer = np.frombuffer(data[_HEADER.size :], "<i2").astype(np.int16).reshape(-1, channels)
        return cls(rate, channels, start, emitted, buffer)
