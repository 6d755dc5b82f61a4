"""A stream's whole state as a value, and its versioned binary layout (never pickle).

Layout, version 1, all little-endian::

    offset size  field
    0      4     magic b"T1ST"
    4      2     version (1)
    6      2     flags: bit 0 finished, bit 1 beam decoder (else greedy)
    8      2     channel
    10     2     reserved (0)
    12     8     seq           caller's sequence number (e.g. the last chunk applied)
    20     8     samples_in    audio samples the caller fed (no padding)
    28     8     chunks        chunks stepped (the front padding's is answered without a model call)
    36     8     offset        absolute frame index of the splitter buffer's first frame
    44     4     S             model state length (219 729 for T-one)
    48     4     P             pending samples (not yet a whole 2400-sample chunk)
    52     4     F             splitter buffer frames
    56     4     V             vocabulary size (35)
    60     2*S   model state   float16
    ..     2*P   pending       int16
    ..     4*F*V buffer        float32 logprobs
    ..     4     crc32 of every byte before it

A new stream's pending samples are the 2400 zeros of the reference's front padding, so feeding a
stream and finishing it is exactly the offline run.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import StreamStateError
from .types import PADDING_SAMPLES, SAMPLE_RATE, STATE_SIZE, VOCAB_SIZE

MAGIC = b"T1ST"
VERSION = 1
_HEADER = struct.Struct("<4sHHHHQQQQIIII")
_FINISHED, _BEAM = 1, 2


def _raw(array: np.ndarray, dtype: str) -> memoryview:
    """The array's bytes in ``dtype`` (little-endian), without a copy when they already are."""
    return np.ascontiguousarray(array.astype(dtype, copy=False)).reshape(-1).data.cast("B")


@dataclass
class StreamState:
    """Everything needed to continue a stream in any process."""

    model_state: npt.NDArray[np.float16] = field(
        default_factory=lambda: np.zeros(STATE_SIZE, dtype=np.float16)
    )
    pending: npt.NDArray[np.int16] = field(default_factory=lambda: np.zeros(PADDING_SAMPLES, np.int16))
    buffer: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, VOCAB_SIZE), np.float32))
    offset: int = 0
    channel: int = 0
    decoder: str = "greedy"
    hotwords: tuple[str, ...] = ()  # boosted in beam search; not part of the binary layout
    seq: int = 0
    samples_in: int = 0
    chunks: int = 0
    finished: bool = False

    def __post_init__(self) -> None:
        # the splitter's cache of facts about ``buffer`` (valid while ``buffer is _buf_view``)
        self._buf_store: npt.NDArray[np.float32] | None = None
        self._buf_view: npt.NDArray[np.float32] | None = None
        self._has_speech = False
        self._lead = 0  # silent frames at the buffer's start
        self._trail = 0  # silent frames after its last speech frame

    # ``model_state`` is a property (installed below the class): the row may live in a StateBank.
    def _host_state(self) -> npt.NDArray[np.float16]:
        """The state as a host array, without releasing a bank row (a copy when it lives on a
        device)."""
        slot = self._slot
        if slot is not None:
            view = slot[0].host_view(slot[1])
            return view if view is not None else slot[0].download([slot[1]])[0]
        return self._model

    def _set_host_state(self, value: npt.NDArray[np.float16], bank_owned: bool = False) -> None:
        self._model: npt.NDArray[np.float16] = value
        self._slot: tuple[Any, int] | None = None  # (StateBank, row) while the row lives there
        # a StateBank gave this array and nothing else holds it: the bank may write a row into it
        self._bank_owned = bank_owned

    @property
    def seconds_in(self) -> float:
        return self.samples_in / SAMPLE_RATE

    def to_bytes(self) -> bytes:
        flags = (_FINISHED if self.finished else 0) | (_BEAM if self.decoder == "beam" else 0)
        state = self._host_state()  # read in place: the array stays the bank's to reuse
        header = _HEADER.pack(
            MAGIC, VERSION, flags, self.channel, 0, self.seq, self.samples_in, self.chunks, self.offset,
            len(state), len(self.pending), len(self.buffer), self.buffer.shape[1],
        )  # fmt: skip
        # one copy of the ~430 KiB: the arrays' memory is read in place for the checksum and the join
        parts: list[bytes | memoryview] = [
            header,
            _raw(state, "<f2"),
            _raw(self.pending, "<i2"),
            _raw(self.buffer, "<f4"),
        ]
        crc = 0
        for part in parts:
            crc = zlib.crc32(part, crc)
        parts.append(struct.pack("<I", crc))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> StreamState:
        data = bytes(data)
        if len(data) < _HEADER.size + 4:
            raise StreamStateError(f"stream state too short: {len(data)} bytes")
        magic, version, flags, channel, _, seq, samples_in, chunks, offset, s, p, f, v = _HEADER.unpack_from(
            data
        )
        if magic != MAGIC:
            raise StreamStateError("not a T-one stream state (bad magic)")
        if version != VERSION:
            raise StreamStateError(f"stream state version {version} is not supported (expected {VERSION})")
        expected = _HEADER.size + 2 * s + 2 * p + 4 * f * v + 4
        if len(data) != expected:
            raise StreamStateError(f"stream state has {len(data)} bytes, its header says {expected}")
        (crc,) = struct.unpack_from("<I", data, len(data) - 4)
        if crc != zlib.crc32(memoryview(data)[:-4]):
            raise StreamStateError("stream state is corrupted (checksum mismatch)")
        pos = _HEADER.size
        model_state = np.frombuffer(data, "<f2", s, pos).astype(np.float16)
        pos += 2 * s
        pending = np.frombuffer(data, "<i2", p, pos).astype(np.int16)
        pos += 2 * p
        buffer = np.frombuffer(data, "<f4", f * v, pos).astype(np.float32).reshape(f, v)
        return cls(
            model_state=model_state,
            pending=pending,
            buffer=buffer,
            offset=offset,
            channel=channel,
            decoder="beam" if flags & _BEAM else "greedy",
            seq=seq,
            samples_in=samples_in,
            chunks=chunks,
            finished=bool(flags & _FINISHED),
        )


def _get_model_state(self: StreamState) -> npt.NDArray[np.float16]:
    """The model state row: on the CPU a view of its row in the recognizer's StateBank (writes reach
    the next step); on a device, reading it brings the row home (a host array from then on)."""
    slot: Any = self._slot
    if slot is None:
        self._bank_owned = False  # the array escapes: a bank must not write into it any more
        return self._model
    view = slot[0].host_view(slot[1])
    if view is not None:
        return view
    slot[0].release(self)
    return self._model


def _set_model_state(self: StreamState, value: npt.NDArray[np.float16]) -> None:
    self._model = value
    self._slot = None
    self._bank_owned = False


StreamState.model_state = property(_get_model_state, _set_model_state)  # type: ignore[assignment]
