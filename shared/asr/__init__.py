"""The T-one engine: audio in, phrases out. No web, queue, DB or settings imports live here.

The public surface, as faster-whisper exports ``WhisperModel`` from its root::

    from shared.asr import Recognizer

    rec = Recognizer.load("path/to/model_dir")        # model.onnx [+ kenlm.bin]
    for phrase in rec.transcribe("call.wav", channels="split"):
        print(phrase.channel, phrase.start, phrase.text)

Names are loaded on first use (PEP 562), so ``import shared.asr.formats`` or ``shared.asr.types``
alone costs no ONNX Runtime or numpy import: the API and the batch client read those.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_EXPORTS = {
    "Recognizer": "engine",
    "Transcript": "engine",
    "StreamState": "stream",
    "Phrase": "types",
    "Word": "types",
    "ChannelMode": "types",
    "SAMPLE_RATE": "types",
    "CHUNK_SAMPLES": "types",
    "LABELS": "types",
    "FORMATS": "formats",
    "AUDIO_SUFFIXES": "formats",
    "render": "formats",
    "ToneError": "errors",
    "AudioError": "errors",
    "EmptyAudioError": "errors",
    "UnsupportedFormatError": "errors",
    "CorruptAudioError": "errors",
    "AudioTooLargeError": "errors",
    "AudioTooLongError": "errors",
    "ModelError": "errors",
    "ModelNotFoundError": "errors",
    "ModelContractError": "errors",
    "StreamStateError": "errors",
}

__all__ = [
    "AUDIO_SUFFIXES",
    "CHUNK_SAMPLES",
    "FORMATS",
    "LABELS",
    "SAMPLE_RATE",
    "AudioError",
    "AudioTooLargeError",
    "AudioTooLongError",
    "ChannelMode",
    "CorruptAudioError",
    "EmptyAudioError",
    "ModelContractError",
    "ModelError",
    "ModelNotFoundError",
    "Phrase",
    "Recognizer",
    "StreamState",
    "StreamStateError",
    "ToneError",
    "Transcript",
    "UnsupportedFormatError",
    "Word",
    "render",
]

if TYPE_CHECKING:
    from .engine import Recognizer, Transcript
    from .errors import (
        AudioError,
        AudioTooLargeError,
        AudioTooLongError,
        CorruptAudioError,
        EmptyAudioError,
        ModelContractError,
        ModelError,
        ModelNotFoundError,
        StreamStateError,
        ToneError,
        UnsupportedFormatError,
    )
    from .formats import AUDIO_SUFFIXES, FORMATS, render
    from .stream import StreamState
    from .types import CHUNK_SAMPLES, LABELS, SAMPLE_RATE, ChannelMode, Phrase, Word


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shared.asr' has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
