"""``redact_audio``: the redacted word spans of a stored recording replaced with a 1 kHz tone.

The recording is decoded by the engine's reader (8 kHz, each channel kept), the spans (times from
the words, widened by ``PAD_SECONDS`` on each side since CTC word times are approximate) are
overwritten with a sine of 1 kHz in the phrase's channel (every channel when the job mixed them),
and the result is written as 16-bit PCM WAV into the audio store, ``<job id>.redacted.wav``; the
worker removes the original once the job points at it (an upload or a downloaded URL: nothing of it
stays in the audio store), but never a batch's server-folder file, which is the customer's own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shared.asr.types import SAMPLE_RATE
from shared.text.display import Redaction

TONE_HZ = 1000.0
TONE_LEVEL = 0.25
PAD_SECONDS = 0.1


def tone_spans(
    samples: np.ndarray, redactions: Sequence[Redaction], *, split: bool, rate: int = SAMPLE_RATE
) -> np.ndarray:
    """``samples`` (frames × channels, float) with each redaction's span set to the tone."""
    out = samples.copy()
    for r in redactions:
        a = max(0, int((r.start - PAD_SECONDS) * rate))
        b = min(len(out), int(np.ceil((r.end + PAD_SECONDS) * rate)))
        if b <= a:
            continue
        tone = TONE_LEVEL * np.sin(2 * np.pi * TONE_HZ * np.arange(a, b) / rate)
        channels = [r.channel] if split and r.channel < out.shape[1] else range(out.shape[1])
        for c in channels:
            out[a:b, c] = tone
    return out


def redact_recording(path: Path, redactions: Sequence[Redaction], *, split: bool, dest: Path) -> Path:
    """Write the redacted recording to ``dest`` (a WAV in the audio store; the caller removes the
    original once the job points at the new file, unless it is a server folder's file)."""
    import soundfile as sf

    from shared.asr.audio import open_audio

    with open_audio(path, channels="split") as reader:
        blocks = list(reader)
        channels = reader.channels
    samples = np.concatenate(blocks, axis=0) if blocks else np.zeros((0, channels), dtype=np.int16)
    if samples.ndim == 1:
        samples = samples[:, None]
    redacted = tone_spans(samples.astype(np.float64) / 32768.0, redactions, split=split)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    sf.write(tmp, redacted, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    os.replace(tmp, dest)
    return dest
