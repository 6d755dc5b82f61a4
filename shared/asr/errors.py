"""Typed errors of the engine. Each carries a machine-readable ``code`` and a message for people.

The API and the workers map them to ``{"error": {"code", "message"}}`` and to failed jobs; the
engine itself knows nothing of either.
"""

from __future__ import annotations

from shared.errors import CodedError


class ToneError(CodedError):
    """Base of every error the engine raises on purpose (its ``code`` is the class's)."""

    code = "engine_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)


class AudioError(ToneError):
    """The audio could not be used."""

    code = "audio_error"


class EmptyAudioError(AudioError):
    """The input holds no bytes or no samples."""

    code = "empty_audio"


class UnsupportedFormatError(AudioError):
    """Neither libsndfile nor FFmpeg recognises the input as audio."""

    code = "unsupported_format"


class CorruptAudioError(AudioError):
    """The container was recognised but its data is truncated or inconsistent."""

    code = "corrupt_audio"


class AudioTooLargeError(AudioError):
    """The input is larger than the configured byte limit."""

    code = "file_too_large"


class AudioTooLongError(AudioError):
    """The input is longer than the configured duration limit."""

    code = "audio_too_long"


class ModelError(ToneError):
    """The acoustic model could not be loaded or run."""

    code = "model_error"


class ModelNotFoundError(ModelError):
    """No model at the given path, and the Hugging Face download failed."""

    code = "model_not_found"


class ModelContractError(ModelError):
    """The ONNX file does not honour T-one's input/output contract."""

    code = "model_contract_mismatch"


class StreamStateError(ToneError):
    """A serialized stream state is malformed, of another version, or used wrongly."""

    code = "bad_stream_state"
