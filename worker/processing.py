"""Many recordings advanced together through the engine's batched stepping (no DB, no Celery).

A :class:`BatchRunner` holds the recordings a worker is transcribing, one stream per output
channel each. Every :meth:`BatchRunner.round` reads the next block of every recording and makes
one :meth:`Recognizer.advance_decoding` call over all their streams, so each model call holds B
streams from different files. With a decoder pool, a recording read to its end waits for its last
beam-search phrases beside the others, while the model goes on with them. Between rounds the
caller writes progress, renews leases, checks cancel requests (:meth:`stop`) and adds newly
claimed recordings (:meth:`add`). A recording that cannot be read ends with its typed error and
leaves the others untouched.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.asr.audio import AudioReader, open_audio
from shared.asr.engine import Decoding, Recognizer, Transcript, backlog_full
from shared.asr.stream import StreamState
from shared.asr.types import SAMPLE_RATE, ChannelMode

BLOCK_SECONDS = 2.0  # audio read per recording per round, at least
MAX_BLOCK_SECONDS = 16.0  # ... and at most, however fast the model
ROUND_SECONDS = 0.25  # the wall time of a round the block size aims at
# the block size each process's model has shown it can take: a later run with it starts there
_LEARNED: weakref.WeakKeyDictionary[Recognizer, float] = weakref.WeakKeyDictionary()
POOL_WAIT_SECONDS = 0.5  # a round with only the decoder pool to wait for returns after this at most


@dataclass(frozen=True)
class Work:
    """One recording to transcribe: the job it belongs to and how."""

    job_id: str
    path: str
    channels: ChannelMode = "mix"
    decoder: str | None = None
    hotwords: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """How a recording ended: a transcript, or an error (typed engine errors carry ``.code``)."""

    job_id: str
    transcript: Transcript | None = None
    error: BaseException | None = None


@dataclass
class _Active:
    work: Work
    reader: AudioReader
    streams: list[StreamState]
    info: dict[str, Any]
    started: float = field(default_factory=time.perf_counter)
    decoding: Decoding = field(default_factory=Decoding)

    @property
    def seconds(self) -> float:
        return self.streams[0].samples_in / SAMPLE_RATE


class BatchRunner:
    """The recordings one worker process advances together, each at its own position."""

    def __init__(
        self,
        recognizer: Recognizer,
        *,
        max_duration: float | None = None,
        max_bytes: int | None = None,
        block_seconds: float | None = None,
    ) -> None:
        """``block_seconds``: the audio read per recording per round, fixed; None: chosen from the
        rounds' speed (:meth:`_tune`), between ``BLOCK_SECONDS`` and ``MAX_BLOCK_SECONDS``."""
        self.recognizer = recognizer
        self.max_duration = max_duration
        self.max_bytes = max_bytes
        self.adaptive = block_seconds is None
        self.block_seconds = (
            _LEARNED.get(recognizer, BLOCK_SECONDS) if block_seconds is None else block_seconds
        )
        self._active: dict[str, _Active] = {}
        self._decoding: dict[str, _Active] = {}  # read to the end, phrases still in the decoder pool

    # -- membership -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._active) + len(self._decoding)

    @property
    def stepping(self) -> int:
        """Recordings the model still has audio of (not those waiting only for the decoder pool)."""
        return len(self._active)

    @property
    def job_ids(self) -> list[str]:
        return [*self._active, *self._decoding]

    def add(self, work: Work) -> dict[str, Any]:
        """Open a recording and give it its streams; returns what the audio is (format, rate,
        channels, duration). Raises the engine's typed error when it can't be opened."""
        reader = open_audio(
            work.path,
            channels=work.channels,
            max_duration=self.max_duration,
            max_bytes=self.max_bytes,
            block_seconds=self.block_seconds,
        )
        streams = [
            self.recognizer.new_stream(channel=c, decoder=work.decoder, hotwords=work.hotwords)
            for c in range(reader.channels)
        ]
        i = reader.info
        info = {
            "format": i.format,
            "codec": i.codec,
            "sample_rate": i.sample_rate,
            "channels": i.channels,
            "duration": i.duration,
            "backend": i.backend,
        }
        self._active[work.job_id] = _Active(work, reader, streams, info)
        return info

    def stop(self, job_id: str) -> None:
        """Drop a recording (cancelled, or its lease lost): nothing more is computed for it."""
        self._decoding.pop(job_id, None)
        active = self._active.pop(job_id, None)
        if active is not None:
            active.reader.close()

    def close(self) -> None:
        for job_id in self.job_ids:
            self.stop(job_id)

    def progress(self) -> dict[str, tuple[float, float]]:
        """Each recording's (audio seconds done, declared duration; 0.0 when unknown)."""
        every = {**self._active, **self._decoding}
        return {k: (a.seconds, float(a.info["duration"] or 0.0)) for k, a in every.items()}

    # -- work -------------------------------------------------------------------------------------

    def round(self) -> list[Outcome]:
        """Advance every recording by one block, all streams in shared model calls; return the
        recordings that ended in this round (completed or failed). With nothing to step, or the
        decoder pool's backlog full, the round waits for the pool instead (half a second at most)."""
        decodings = [a.decoding for a in (*self._active.values(), *self._decoding.values())]
        streams = sum(len(a.streams) for a in self._active.values())
        ended: list[Outcome] = []
        if self._active and not backlog_full(decodings, streams):
            ended = self._step()
        else:
            self.recognizer.wait_any(decodings, drain=not self._active, timeout=POOL_WAIT_SECONDS)
        for job_id, active in list(self._decoding.items()):
            if active.decoding.done():
                del self._decoding[job_id]
                ended.append(Outcome(job_id, transcript=self._transcript(active)))
        return ended

    def _step(self) -> list[Outcome]:
        """Every recording's next block through the model; those that failed, and those read to
        their end moved to the decoding ones."""
        items: list[tuple[StreamState, npt.NDArray[Any] | None, bool]] = []
        owners: list[_Active] = []
        ended: list[Outcome] = []
        finishing: list[_Active] = []
        for job_id, active in list(self._active.items()):
            block: np.ndarray | None = None
            try:
                block = next(active.reader)
            except StopIteration:
                finishing.append(active)
            except Exception as exc:  # a bad file fails alone
                self.stop(job_id)
                ended.append(Outcome(job_id, error=exc))
                continue
            for c, stream in enumerate(active.streams):
                items.append((stream, None if block is None else block[:, c], block is None))
                owners.append(active)
        if items:
            started = time.perf_counter()
            results = self.recognizer.advance_decoding(items, max_batch=len(items))
            for active, phrases in zip(owners, results):
                active.decoding.add(phrases)
            audio = sum(0 if block is None else len(block) for _, block, _ in items) / SAMPLE_RATE
            self._tune(audio / len(items), time.perf_counter() - started)
        for active in finishing:
            self.stop(active.work.job_id)
            self._decoding[active.work.job_id] = active
        return ended

    def _tune(self, per_stream: float, elapsed: float) -> None:
        """The block size for the recordings added from now on (and this process's later runs):
        what one stream advances in ``ROUND_SECONDS`` at the speed of this round, which advanced
        each of its streams by ``per_stream`` seconds of audio in ``elapsed`` wall seconds. A fast
        model (the tones model, a GPU) reads more per round, so the per-round and per-block work
        (a read per recording, its rechunking, the loop) counts less; a slow one keeps
        ``BLOCK_SECONDS``, so a round stays short for heartbeats, cancels and new jobs. Rounds of
        less than a second of audio per stream (a recording's last block) tell too little."""
        if not self.adaptive or per_stream < 1.0 or elapsed <= 0:
            return
        wanted = ROUND_SECONDS * per_stream / elapsed
        self.block_seconds = min(MAX_BLOCK_SECONDS, max(BLOCK_SECONDS, round(wanted)))
        _LEARNED[self.recognizer] = self.block_seconds

    def _transcript(self, active: _Active) -> Transcript:
        return self.recognizer.transcript(active.decoding, active.streams, active.started)
