"""Playback: a stored recording as a file every browser plays (GET /v1/jobs/{id}/audio), made once and
kept beside the recording (``shared.platform.playback_cache``), served with Range requests; and its
waveform peaks computed here (GET /v1/jobs/{id}/audio/peaks), so a browser draws the waveform
without downloading and decoding the whole recording.

Formats: ``opus`` (Ogg Opus, what the console plays: about 40 kbit/s for stereo 8 kHz, 1/6 of the
WAV), ``mp3`` (smaller still), ``wav`` (16-bit PCM, lossless). All at 8 kHz, the model's rate, every
channel kept, decoded by the engine's reader whatever the stored format (µ-law, GSM, MP3, AMR, ...).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from api.errors import ApiError
from shared.asr.types import SAMPLE_RATE
from shared.platform.playback_cache import copy_path

PLAYBACK_RATE = SAMPLE_RATE  # the model's rate: what the transcript's times were measured on
PlaybackFormat = Literal["opus", "mp3", "wav"]
# format -> (libsndfile container, subtype, media type, file extension)
FORMATS: dict[str, tuple[str, str, str, str]] = {
    "opus": ("OGG", "OPUS", "audio/ogg", "opus.ogg"),
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg", "mp3"),
    "wav": ("WAV", "PCM_16", "audio/wav", "wav"),
}
MAX_COLUMNS = 4000
BIN = PLAYBACK_RATE // 100  # 10 ms


def _decoders() -> Any:
    try:
        import soundfile as sf

        from shared.asr.audio import open_audio
    except ImportError:  # an API image without the decoding libraries
        raise ApiError(
            501, "audio_not_available", "this server cannot decode recordings for playback"
        ) from None
    return sf, open_audio


def _fresh(copy: Path, source: Path) -> bool:
    try:
        return copy.stat().st_mtime_ns >= source.stat().st_mtime_ns and copy.stat().st_size > 0
    except OSError:
        return False


def _atomic(target: Path, suffix: str) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=target.parent)
    os.close(fd)
    return Path(name)


def playback_copy(source: Path, fmt: PlaybackFormat, shown: str) -> Path:
    """The recording in ``fmt`` at 8 kHz, channels kept: made on first use (block by block, never
    whole in memory) and kept until the recording is removed or replaced."""
    container, subtype, _, ext = FORMATS[fmt]
    target = copy_path(source, ext)
    if _fresh(target, source):
        return target
    sf, open_audio = _decoders()
    from shared.asr.errors import ToneError

    tmp = _atomic(target, f".{ext}")
    try:
        with (
            open_audio(source, channels="split") as reader,
            sf.SoundFile(
                tmp,
                "w",
                samplerate=PLAYBACK_RATE,
                channels=reader.channels,
                format=container,
                subtype=subtype,
            ) as out,
        ):
            for block in reader:
                out.write(block)
        os.replace(tmp, target)
    except ToneError as exc:
        tmp.unlink(missing_ok=True)
        raise exc.hiding(source, shown) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def media_type(fmt: PlaybackFormat) -> str:
    return FORMATS[fmt][2]


def extension(fmt: PlaybackFormat) -> str:
    return FORMATS[fmt][3].rsplit(".", 1)[-1]


def peaks(source: Path, columns: int, shown: str) -> dict[str, Any]:
    """Per channel, ``columns`` (min, max) pairs of the samples (-1..1), as the console draws them:
    ``{"sample_rate", "channels", "duration", "columns", "peaks": [[min0, max0, min1, max1, ...], ...]}``.
    Computed once per column count and kept beside the playback copy."""
    target = copy_path(source, f"peaks-{columns}.json")
    if _fresh(target, source):
        cached: dict[str, Any] = json.loads(target.read_text())
        return cached
    _, open_audio = _decoders()
    from shared.asr.errors import ToneError

    # one pass, never the whole recording in memory: min/max per 10 ms bin, then per column
    lows: list[np.ndarray] = []
    highs: list[np.ndarray] = []
    total = 0
    carry: np.ndarray | None = None
    try:
        with open_audio(source, channels="split") as reader:
            channels = reader.channels
            for block in reader:
                block = block.reshape(len(block), -1)
                if carry is not None and len(carry):
                    block = np.concatenate([carry, block])
                whole = len(block) - len(block) % BIN
                if whole:
                    bins = block[:whole].reshape(-1, BIN, block.shape[1])
                    lows.append(bins.min(axis=1))
                    highs.append(bins.max(axis=1))
                carry = block[whole:]
                total += whole
    except ToneError as exc:
        raise exc.hiding(source, shown) from None
    if carry is not None and len(carry):
        lows.append(carry.min(axis=0, keepdims=True))
        highs.append(carry.max(axis=0, keepdims=True))
        total += len(carry)
    lo = np.concatenate(lows) if lows else np.zeros((0, channels), np.int16)
    hi = np.concatenate(highs) if highs else np.zeros((0, channels), np.int16)
    edges = np.linspace(0, len(lo), columns + 1).astype(np.int64)
    out: list[list[float]] = []
    for c in range(lo.shape[1]):
        lane: list[float] = []
        for i in range(columns):
            a, b = edges[i], max(edges[i + 1], edges[i] + 1)
            part_lo, part_hi = lo[a:b, c], hi[a:b, c]
            lane += [
                _scaled(part_lo.min()) if part_lo.size else 0.0,
                _scaled(part_hi.max()) if part_hi.size else 0.0,
            ]
        out.append(lane)
    body = {
        "sample_rate": PLAYBACK_RATE,
        "channels": int(lo.shape[1]),
        "duration": total / PLAYBACK_RATE,
        "columns": columns,
        "peaks": out,
    }
    tmp = _atomic(target, ".json")
    tmp.write_text(json.dumps(body, separators=(",", ":")))
    os.replace(tmp, target)
    return body


def _scaled(value: Any) -> float:
    """An int16 sample as -1..1, rounded to 4 places."""
    return round(max(-1.0, min(1.0, float(value) / 32768.0)), 4)
