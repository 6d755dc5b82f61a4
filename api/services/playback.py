"""Playback: a stored recording as a file every browser plays and draws (GET /v1/jobs/{id}/audio)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from api.errors import ApiError
from shared.asr.types import SAMPLE_RATE

PLAYBACK_RATE = SAMPLE_RATE  # the model's rate: what the transcript's times were measured on


def playback_wav(source: Path, shown: str) -> Path:
    """The recording decoded by the engine's reader and written as 16-bit PCM WAV at 8 kHz, each
    channel kept, into a temporary file (the caller removes it): whatever the stored format
    (µ-law, GSM, MP3, AMR, ...), every browser can play and draw it. Decoded block by block."""
    try:
        import soundfile as sf

        from shared.asr.audio import open_audio
        from shared.asr.errors import ToneError
    except ImportError:  # an API image without the decoding libraries
        raise ApiError(
            501, "audio_not_available", "this server cannot decode recordings for playback"
        ) from None
    fd, name = tempfile.mkstemp(prefix="tone-playback-", suffix=".wav")
    os.close(fd)
    out = Path(name)
    try:
        with (
            open_audio(source, channels="split") as reader,
            sf.SoundFile(
                out, "w", samplerate=PLAYBACK_RATE, channels=reader.channels, format="WAV", subtype="PCM_16"
            ) as wav,
        ):
            for block in reader:
                wav.write(block)
    except ToneError as exc:
        out.unlink(missing_ok=True)
        raise exc.hiding(source, shown) from None
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out
