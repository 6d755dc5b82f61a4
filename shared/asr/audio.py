"""Audio in: any supported file to int16 blocks at 8 kHz, mixed to mono or kept per channel.

libsndfile (soundfile) reads WAV (PCM, µ-law, A-law, GSM 6.10), FLAC, MP3 and Ogg Vorbis/Opus; what it
cannot open goes to FFmpeg's libraries (PyAV): M4A/AAC, AMR, WMA, the first audio stream of a video.
Decoding is block by block, resampling streams through soxr, so memory stays bounded for hours of audio.

Scaling is in one place: float samples are in [-1, 1) and become int16 as ``rint(x * 32768)``, clipped.
Integer PCM, µ-law and A-law at 8 kHz pass through as the decoder's int16 samples, bit for bit.
"""

from __future__ import annotations

import io
import math
import os
import struct
import sys
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal, Protocol, TypeAlias

import av
import numpy as np
import soundfile as sf
import soxr

from shared.asr.errors import (
    AudioTooLargeError,
    AudioTooLongError,
    CorruptAudioError,
    EmptyAudioError,
    UnsupportedFormatError,
)
from shared.asr.types import SAMPLE_RATE, ChannelMode

TARGET_RATE = SAMPLE_RATE
RawEncoding = Literal["pcm_s16le", "mulaw", "alaw"]
Source: TypeAlias = "str | os.PathLike[str] | BinaryIO"

_QUALITY = "HQ"
_SF_COUNT_MAX = 2**63 - 1
# libsndfile subtypes whose samples are integers that fit int16 exactly: read them as int16.
_INT16_SUBTYPES = frozenset({"PCM_S8", "PCM_U8", "PCM_16", "ULAW", "ALAW", "GSM610"})
# A RIFF `data` size of 0xFFFFFFFF is what streaming writers leave when they cannot seek back;
# libsndfile then reads to the end of the file, and so do we.
_RIFF_STREAMING_SIZE = 0xFFFFFFFF
_RIFF_MAX_CHUNKS = 256
# Samples FFmpeg decodes past a stream's declared length that are dropped as encoder padding
# (AAC pads its last 1024-sample frame); more than this means the declared length was wrong.
_PADDING_SLACK = 4096


@dataclass(frozen=True)
class AudioInfo:
    """What the source is; ``duration`` is 0.0 where the container does not say (a streamed FLAC)."""

    format: str  # container as the backend names it: "WAV", "FLAC", "MP3", "OGG", "m4a", "matroska"
    codec: str | None  # "PCM_16", "ULAW", "GSM610", "VORBIS", "aac", ...
    sample_rate: int
    channels: int
    duration: float  # seconds; exact from libsndfile, the container's word from FFmpeg
    backend: str  # "sndfile" or "ffmpeg"


class _Decoder(Protocol):
    info: AudioInfo

    def blocks(self, frames: int) -> Iterator[np.ndarray]:
        """Native-rate blocks of at most ``frames`` rows, shape (n, channels), int16 or float32."""
        ...

    def close(self) -> None: ...


# --- samples -------------------------------------------------------------------------------------


def _to_float(block: np.ndarray) -> np.ndarray:
    return block.astype(np.float32) / np.float32(32768) if block.dtype == np.int16 else block


def _to_int16(block: np.ndarray) -> np.ndarray:
    if block.dtype == np.int16:
        return block
    return np.clip(np.rint(block * 32768.0), -32768, 32767).astype(np.int16)


def rechunk(blocks: Iterator[np.ndarray], size: int) -> Generator[np.ndarray, None, None]:
    """Regroup blocks into blocks of exactly ``size`` rows (the last one shorter)."""
    pending: list[np.ndarray] = []
    count = 0
    for block in blocks:
        pending.append(block)
        count += len(block)
        while count >= size:
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield joined[:size]
            pending, count = [joined[size:]], count - size
    if count:
        yield np.concatenate(pending)


def resample(samples: np.ndarray, from_rate: int, to_rate: int = TARGET_RATE) -> np.ndarray:
    """Resample int16 samples, shape (n,) or (n, channels), with soxr at high quality."""
    if samples.dtype != np.int16:
        raise TypeError(f"resample() takes int16 samples, not {samples.dtype}")
    if from_rate == to_rate:
        return samples.copy()
    return _to_int16(soxr.resample(_to_float(samples), from_rate, to_rate, quality=_QUALITY))


# --- G.711 and raw streams -----------------------------------------------------------------------


def _g711_tables() -> dict[str, np.ndarray]:
    """Decoding tables of ITU-T G.711, the same values libsndfile and FFmpeg produce."""
    code = np.arange(256, dtype=np.int32)
    u = ~code & 0xFF
    exponent, mantissa = (u >> 4) & 7, u & 0x0F
    mulaw = (((mantissa << 3) + 0x84) << exponent) - 0x84
    mulaw = np.where(u & 0x80, -mulaw, mulaw)
    a = code ^ 0x55
    exponent, mantissa = (a >> 4) & 7, a & 0x0F
    alaw = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << (exponent - 1).clip(0))
    alaw = np.where(a & 0x80, alaw, -alaw)
    return {"mulaw": mulaw.astype(np.int16), "alaw": alaw.astype(np.int16)}


_G711 = _g711_tables()


def decode_raw(data: bytes, *, encoding: RawEncoding, channels: int = 1) -> np.ndarray:
    """Headerless samples of a live stream to int16, shape (n, channels), at the stream's own rate."""
    if channels < 1:
        raise ValueError(f"channels must be at least 1, not {channels}")
    if encoding != "pcm_s16le" and encoding not in _G711:
        raise ValueError(f"unknown raw encoding {encoding!r}")
    frame_bytes = (2 if encoding == "pcm_s16le" else 1) * channels
    if len(data) % frame_bytes:
        raise CorruptAudioError(
            f"{len(data)} bytes of {encoding} audio do not make whole {channels}-channel frames "
            f"of {frame_bytes} bytes ({len(data) % frame_bytes} trailing bytes)"
        )
    if encoding == "pcm_s16le":
        samples = np.frombuffer(data, dtype="<i2").astype(np.int16)
    else:
        samples = _G711[encoding][np.frombuffer(data, dtype=np.uint8)]
    return samples.reshape(-1, channels)


# --- input ---------------------------------------------------------------------------------------


@dataclass
class _Input:
    file: BinaryIO
    size: int
    name: str
    owned: bool

    @classmethod
    def open(cls, source: Source, max_bytes: int | None) -> _Input:
        """Open a path (FileNotFoundError if missing) or take a binary file object, made seekable."""
        if isinstance(source, (str, os.PathLike)):
            file: BinaryIO = open(source, "rb")  # noqa: SIM115 - closed by AudioReader.close
            name, owned = os.fspath(source), True
        else:
            file, name, owned = source, str(getattr(source, "name", "<stream>")), False
            if not file.seekable():
                file = io.BytesIO(file.read(-1 if max_bytes is None else max_bytes + 1))
        size = file.seek(0, os.SEEK_END)
        file.seek(0)
        return cls(file, size, name, owned)

    def head(self, count: int) -> bytes:
        self.file.seek(0)
        data = self.file.read(count)
        self.file.seek(0)
        return data

    def close(self) -> None:
        if self.owned:
            self.file.close()


def _check_riff(inp: _Input) -> None:
    """Refuse a RIFF/WAVE file whose ``data`` chunk claims more bytes than the file holds.

    libsndfile silently clamps such a chunk to what is there, which would turn a truncated upload
    into a silently shorter transcript.
    """
    head = inp.head(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
        return
    pos = 12
    for _ in range(_RIFF_MAX_CHUNKS):  # a bound on the walk; libsndfile judges whatever lies beyond
        if pos + 8 > inp.size:
            break
        inp.file.seek(pos)
        chunk_id, chunk_size = struct.unpack("<4sI", inp.file.read(8))
        if chunk_id == b"data":
            held = inp.size - pos - 8
            if chunk_size > held and chunk_size != _RIFF_STREAMING_SIZE:
                raise CorruptAudioError(
                    f"{inp.name}: truncated: header declares {chunk_size} bytes of audio data, "
                    f"file holds {held}"
                )
            break
        pos += 8 + chunk_size + (chunk_size & 1)
    inp.file.seek(0)


# --- backends ------------------------------------------------------------------------------------


class _SndfileDecoder:
    def __init__(self, file: sf.SoundFile, name: str) -> None:
        self._file, self._name = file, name
        self.info = AudioInfo(
            format=file.format,
            codec=file.subtype,
            sample_rate=file.samplerate,
            channels=file.channels,
            duration=file.frames / file.samplerate,
            backend="sndfile",
        )
        if file.frames == 0:
            file.close()
            raise EmptyAudioError(f"{name}: the {file.format} file holds no samples")
        self._dtype = "int16" if self.info.codec in _INT16_SUBTYPES else "float32"

    def blocks(self, frames: int) -> Iterator[np.ndarray]:
        decoded = 0
        while True:
            try:
                block = self._file.read(frames, dtype=self._dtype, always_2d=True)
            except sf.SoundFileError as exc:
                raise CorruptAudioError(
                    f"{self._name}: libsndfile failed after {decoded} samples: {_sf_message(exc)}"
                ) from exc
            if not len(block):
                break
            decoded += len(block)
            yield block
        # mpg123 estimates the length of an MP3 without a Xing/LAME header from its bitrate.
        declared = self._file.frames
        if decoded < declared - (declared // 20 if self.info.format == "MP3" else 0):
            raise CorruptAudioError(
                f"{self._name}: truncated: header declares {declared} frames, file holds {decoded}"
            )

    def close(self) -> None:
        self._file.close()


class _FFmpegDecoder:
    def __init__(self, inp: _Input) -> None:
        inp.file.seek(0)
        # A file object and no protocols: playlists (HLS, concat) cannot make FFmpeg open other inputs.
        self._container = av.open(inp.file, mode="r", options={"protocol_whitelist": "none"})
        try:
            if not self._container.streams.audio:
                raise UnsupportedFormatError(
                    f"{inp.name}: the {self._container.format.name} container has no audio stream"
                )
            self._stream = stream = self._container.streams.audio[0]
            if stream.rate <= 0 or stream.channels <= 0:
                raise UnsupportedFormatError(f"{inp.name}: the audio stream has no sample rate or channels")
        except BaseException:
            self._container.close()
            raise
        self._name = inp.name
        if stream.duration and stream.time_base:
            duration: float | None = float(stream.duration * stream.time_base)
        elif self._container.duration:
            duration = self._container.duration / av.time_base
        else:
            duration = None
        self._declared = None if duration is None else round(duration * stream.rate)
        names = self._container.format.name.split(",")
        extension = Path(inp.name).suffix.lstrip(".").lower()
        self.info = AudioInfo(
            format=extension if extension in names else names[0],
            codec=stream.codec_context.name,
            sample_rate=stream.rate,
            channels=stream.channels,
            duration=duration or 0.0,
            backend="ffmpeg",
        )

    def _decoded(self) -> Iterator[np.ndarray]:
        """All decoded samples as packed float32, the stream's first rate and layout throughout."""
        stream = self._stream
        converter = av.AudioResampler(format="flt", layout=stream.layout, rate=stream.rate)
        decoded = 0
        try:
            for frame in chain(self._container.decode(stream), [None]):  # None flushes the converter
                for out in converter.resample(frame):
                    samples = out.to_ndarray().reshape(-1, stream.channels)
                    decoded += len(samples)
                    yield samples
        except av.FFmpegError as exc:
            raise CorruptAudioError(f"{self._name}: FFmpeg failed after {decoded} samples: {exc}") from exc

    def _trimmed(self) -> Iterator[np.ndarray]:
        """Drop encoder padding: up to ``_PADDING_SLACK`` samples past the declared length."""
        end = self._declared
        if end is None:
            yield from self._decoded()
            return
        pos = 0
        held: list[np.ndarray] = []
        for samples in self._decoded():
            start, pos = pos, pos + len(samples)
            if pos <= end:
                yield samples
                continue
            cut = max(end - start, 0)
            if cut:
                yield samples[:cut]
            held.append(samples[cut:])
            if pos - end > _PADDING_SLACK:  # not padding: the declared length was too short
                yield from held
                held, end = [], sys.maxsize
        # what is still held at the end is padding

    def blocks(self, frames: int) -> Iterator[np.ndarray]:
        return rechunk(self._trimmed(), frames)

    def close(self) -> None:
        self._container.close()


def _sf_message(exc: sf.SoundFileError) -> str:
    return str(getattr(exc, "error_string", exc))


def _open_decoder(inp: _Input) -> _Decoder:
    try:
        sndfile = sf.SoundFile(inp.file)
    except sf.SoundFileError as exc:
        sndfile_error = _sf_message(exc)
    except TypeError:  # named .raw: libsndfile's headerless format, whose rate and encoding it must be
        # told; FFmpeg guesses no better (it opens it as an image): a job's internal_error before
        raise UnsupportedFormatError(
            f"{inp.name}: a headerless raw file: its sample rate and encoding are not in it; send it as "
            "a WAV (or stream it live, where the encoding is given)"
        ) from None
    else:
        if sndfile.frames != _SF_COUNT_MAX:
            return _SndfileDecoder(sndfile, inp.name)
        # The header does not say how long it is (a streamed FLAC): soundfile's reads fail at the end.
        sndfile.close()
        sndfile_error = "length unknown"
    try:
        return _FFmpegDecoder(inp)
    except av.FFmpegError as exc:
        extension = Path(inp.name).suffix or "none"
        raise UnsupportedFormatError(
            f"{inp.name} (extension {extension}, first bytes {inp.head(12)!r}) is not audio that "
            f"libsndfile or FFmpeg can decode (libsndfile: {sndfile_error}; FFmpeg: {exc.strerror or exc})"
        ) from exc


# --- public API ----------------------------------------------------------------------------------


class AudioReader:
    """Iterates over int16 blocks of shape (n, channels) at 8 kHz; a context manager that closes the input.

    Single pass: the blocks are decoded as they are taken, at most ``block_seconds`` of audio each.
    """

    def __init__(
        self,
        inp: _Input,
        decoder: _Decoder,
        mode: ChannelMode,
        max_duration: float | None,
        block_seconds: float,
    ) -> None:
        self.info = decoder.info
        self.channels = 1 if mode == "mix" else self.info.channels
        self._inp, self._decoder = inp, decoder
        self._blocks = rechunk(
            self._converted(max_duration, block_seconds), max(1, math.floor(block_seconds * TARGET_RATE))
        )

    def _converted(self, max_duration: float | None, block_seconds: float) -> Iterator[np.ndarray]:
        rate, mix = self.info.sample_rate, self.channels < self.info.channels
        limit = math.inf if max_duration is None else max_duration * rate
        resampler = (
            None
            if rate == TARGET_RATE
            else soxr.ResampleStream(rate, TARGET_RATE, self.channels, dtype="float32", quality=_QUALITY)
        )
        decoded = 0
        for block in self._decoder.blocks(max(1, round(block_seconds * rate))):
            decoded += len(block)
            if decoded > limit:
                raise AudioTooLongError(f"{self._inp.name}: the audio is longer than {max_duration:g} s")
            if mix:  # the mean of the channels, as FFmpeg and miniaudio downmix
                block = _to_float(block).mean(axis=1, keepdims=True)
            yield _to_int16(block if resampler is None else resampler.resample_chunk(_to_float(block)))
        if not decoded:
            raise EmptyAudioError(f"{self._inp.name}: the {self.info.format} file holds no samples")
        if resampler is not None:
            yield _to_int16(resampler.resample_chunk(np.zeros((0, self.channels), np.float32), last=True))

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        return next(self._blocks)

    def close(self) -> None:
        self._blocks.close()
        self._decoder.close()
        self._inp.close()

    def __enter__(self) -> AudioReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_audio(
    source: Source,
    *,
    channels: ChannelMode = "mix",
    max_duration: float | None = None,
    max_bytes: int | None = None,
    block_seconds: float = 20.0,
) -> AudioReader:
    """Open a file path or binary file object for block-wise decoding to int16 at 8 kHz.

    Raises FileNotFoundError for a missing path, AudioTooLargeError / AudioTooLongError past the
    limits (the duration both as declared up front and as decoded), EmptyAudioError,
    UnsupportedFormatError and CorruptAudioError (also while iterating).
    """
    if channels not in ("mix", "split"):
        raise ValueError(f"channels must be 'mix' or 'split', not {channels!r}")
    if block_seconds <= 0:
        raise ValueError(f"block_seconds must be positive, not {block_seconds}")
    inp = _Input.open(source, max_bytes)
    try:
        if max_bytes is not None and inp.size > max_bytes:
            raise AudioTooLargeError(f"{inp.name}: {inp.size} bytes, more than the limit of {max_bytes}")
        if inp.size == 0:
            raise EmptyAudioError(f"{inp.name}: the file is empty (0 bytes)")
        _check_riff(inp)
        decoder = _open_decoder(inp)
    except BaseException:
        inp.close()
        raise
    if max_duration is not None and decoder.info.duration > max_duration:
        decoder.close()
        inp.close()
        raise AudioTooLongError(
            f"{inp.name}: {decoder.info.duration:.2f} s of audio, more than the limit of {max_duration:g} s"
        )
    return AudioReader(inp, decoder, channels, max_duration, block_seconds)


def read_audio(
    source: Source,
    *,
    channels: ChannelMode = "mix",
    max_duration: float | None = None,
    max_bytes: int | None = None,
) -> np.ndarray:
    """The whole input as int16 of shape (n, channels) at 8 kHz; for short files and tests."""
    with open_audio(source, channels=channels, max_duration=max_duration, max_bytes=max_bytes) as reader:
        return np.concatenate(list(reader))


def probe(source: Source) -> AudioInfo:
    """What the input is, without decoding it (raises as open_audio does)."""
    with open_audio(source) as reader:
        return reader.info
