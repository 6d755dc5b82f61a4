"""The recognizer: batched stepping of many streams, streaming feed, offline transcription.

One model call advances any set of streams by one 300 ms chunk each (``step``). Offline
transcription is "a stream fed the whole file": the same code path, so a stream fed in any
chunking yields exactly the phrases of the offline run.
"""

from __future__ import annotations

import heapq
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from . import splitter
from .decoder import (
    SINGLE_PATH,
    BeamSearchDecoder,
    Decoder,
    DecoderName,
    GreedyDecoder,
    kenlm_available,
    single_path,
    to_phrase,
)
from .decoder_pool import DecoderPool
from .errors import ModelError, StreamStateError
from .model import AcousticModel, locate_model
from .stream import StreamState
from .types import CHUNK_SAMPLES, PADDING_SAMPLES, SAMPLE_RATE, STATE_SIZE, ChannelMode, Phrase

AudioSource = str | os.PathLike[str] | BinaryIO
Progress = Callable[[float], None]  # seconds of audio done


@dataclass(frozen=True)
class Transcript:
    """The result of one recording: phrases in time order, its duration and the time it took."""

    phrases: tuple[Phrase, ...]
    duration: float
    processing_time: float
    channels: int = 1

    @property
    def full_text(self) -> str:
        return " ".join(p.text for p in self.phrases)

    def to_dict(self) -> dict[str, Any]:
        return {
            "phrases": [p.to_dict() for p in self.phrases],
            "full_text": self.full_text,
            "duration": round(self.duration, 3),
            "processing_time": round(self.processing_time, 3),
        }


POOL_BACKLOG = 2  # phrases per batch slot that may wait in the decoder pool before the model waits,
POOL_BACKLOG_MIN = 32  # and at least this many (a phrase's logprobs are 280 KB at most)


def pool_backlog(batch: int) -> int:
    """How many phrases may wait in the decoder pool while the model steps a batch of ``batch``."""
    return max(POOL_BACKLOG * batch, POOL_BACKLOG_MIN)


def backlog_full(decodings: Iterable[Decoding], batch: int) -> bool:
    """Whether the phrases of ``decodings`` still in the pool fill the backlog of a batch of ``batch``
    (the model then waits for the pool: the logprobs held stay bounded)."""
    return sum(len(d.futures()) for d in decodings) >= pool_backlog(batch)


class Decoding:
    """The phrases of a stream or a recording in the order they closed, some of them perhaps still
    being decoded by the decoder pool (``Recognizer.advance_decoding``)."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[_Pending] = []

    def add(self, other: Decoding) -> None:
        self.items.extend(other.items)

    def futures(self) -> list[Future[Phrase | None]]:
        """What the pool has not finished yet."""
        return [i for i in self.items if isinstance(i, Future) and not i.done()]

    def done(self) -> bool:
        return not self.futures()


@dataclass
class _Job:
    """A recording being transcribed in a batch: one stream per output channel."""

    index: int
    streams: list[StreamState]
    blocks: Iterator[np.ndarray]
    started: float = field(default_factory=time.perf_counter)
    decoding: Decoding = field(default_factory=Decoding)
    exhausted: bool = False


def _all_zero(state: npt.NDArray[np.float16]) -> bool:
    """Whether every value of a state row is 0: its bits read as integers first (15 µs for a row of
    430 KiB, where ``np.any`` on float16 converts every value and took 460 µs, most of a new
    stream's first step), the float test only where some bits are set (-0.0 is 0 as well)."""
    return not state.view(np.uint16).any() or not np.any(state)


class Recognizer:
    """T-one loaded once; cheap calls after that. Thread-compatible, not thread-safe."""

    def __init__(
        self,
        model: AcousticModel,
        lm_path: Path | None = None,
        default_decoder: str = "auto",
        decoder_workers: int = 0,
    ):
        self.model = model
        self.bank = model.new_bank()  # the streams' state rows, kept on the model's device
        self.pool: DecoderPool | None = None  # beam search in processes, off the model's path
        self.pool_wait_s = 0.0  # seconds the model waited for the pool's phrases, work at hand
        self.drain_wait_s = 0.0  # seconds waited for the pool's last phrases, no model work left
        self.lm_path = lm_path if lm_path and kenlm_available() else None
        self._decoders: dict[str, Decoder] = {"greedy": GreedyDecoder()}
        self.default_decoder: DecoderName = (
            ("beam" if self.lm_path else "greedy") if default_decoder == "auto" else default_decoder  # type: ignore[assignment]
        )
        if self.lm_path:  # load the language model now, so that a bad file fails at load, clearly
            try:
                self._decoders["beam"] = BeamSearchDecoder(self.lm_path)
            except (OSError, RuntimeError) as exc:
                raise ModelError(f"the language model {self.lm_path} cannot be read: {exc}") from exc
        if decoder_workers > 0:
            self.pool = DecoderPool(decoder_workers, self.lm_path)

    def _resolved(self, items: list[_Pending]) -> list[Phrase]:
        """The phrases in order, waiting for the pool's where needed (the wait is counted in
        ``pool_wait_s``: time the model could not go on); empty ones dropped."""
        out: list[Phrase] = []
        for item in items:
            if isinstance(item, Future):
                if not item.done():
                    started = time.perf_counter()
                    item = item.result()
                    self.pool_wait_s += time.perf_counter() - started
                else:
                    item = item.result()
                if item is None:
                    continue
            out.append(item)
        return out

    def phrases(self, decoding: Decoding) -> list[Phrase]:
        """The phrases of ``decoding``, in order, waiting for the pool where it has not finished
        (counted in ``pool_wait_s``; callers with no model work left wait with ``wait_any``)."""
        return self._resolved(decoding.items)

    def transcript(self, decoding: Decoding, streams: Sequence[StreamState], started: float) -> Transcript:
        """A recording's Transcript: the phrases of ``decoding`` (its streams', decoded) in time
        order across channels, its duration from ``streams``, its time since ``started``
        (``time.perf_counter``)."""
        ordered = tuple(sorted(self.phrases(decoding), key=_order))
        seconds = streams[0].samples_in / SAMPLE_RATE
        return Transcript(ordered, seconds, time.perf_counter() - started, len(streams))

    def close(self) -> None:
        """Stop the decoder pool's processes (a Recognizer without a pool holds nothing to stop)."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        providers: str | Sequence[str] | None = None,
        threads: int | None = None,
        decoder: str = "auto",
        download: bool = True,
        precision: str = "auto",
        decoder_workers: int = 0,
        spinning: bool | str = True,
        lanes: int | None = None,
    ) -> Recognizer:
        """Load model.onnx (and kenlm.bin beside it) from ``path``, else from Hugging Face.

        ``decoder_workers`` > 0 decodes beam-search phrases in that many processes while the model
        goes on (``advance`` collects them at its end, in order; ``advance_decoding`` and
        ``transcribe_many`` do not wait for them while there is audio to step; the phrases are
        the same).
        ``lanes``: sessions that step slices of a batch at once on the CPU (``AcousticModel``)."""
        files = locate_model(path, download=download)
        model = AcousticModel(
            files.model,
            providers=providers,
            threads=threads,
            precision=precision,
            spinning=spinning,
            lanes=lanes,
        )
        return cls(model, files.lm, decoder, decoder_workers)

    # -- decoders ---------------------------------------------------------------------------------

    def decoder(self, name: str | None = None) -> Decoder:
        name = name or self.default_decoder
        if name not in ("greedy", "beam"):
            raise ValueError(f"unknown decoder {name!r}: use 'greedy' or 'beam'")
        if name not in self._decoders:
            self._decoders[name] = BeamSearchDecoder(self.lm_path)
        return self._decoders[name]

    # -- streams ----------------------------------------------------------------------------------

    def set_decoder(self, name: str, decoder: Decoder) -> None:
        """Decode ``name`` ("greedy" or "beam") phrases with ``decoder`` in this process, e.g. a
        ``flashlight_decoder.FlashlightBeamDecoder`` (a decoder pool keeps pyctcdecode)."""
        if name not in ("greedy", "beam"):
            raise ValueError(f"unknown decoder {name!r}: use 'greedy' or 'beam'")
        self._decoders[name] = decoder

    def warm_up(self, batch: int) -> float:
        """One model step over ``batch`` streams of silence, dropped afterwards, so that the first
        real batch finds the runtime's memory, threads and lanes ready. Returns its seconds."""
        streams = [StreamState() for _ in range(max(1, batch))]
        signal = self.bank.signal_buffer(len(streams))
        signal[:] = 0
        started = time.perf_counter()
        self.model.step(self.bank, streams, signal)
        return time.perf_counter() - started

    def new_stream(
        self, *, channel: int = 0, decoder: str | None = None, hotwords: Sequence[str] = ()
    ) -> StreamState:
        """A new stream; ``hotwords`` are boosted in its beam search (ignored by greedy decoding)."""
        return StreamState(channel=channel, decoder=self.decoder(decoder).name, hotwords=tuple(hotwords))

    def step(
        self, streams: Sequence[StreamState], chunks: Sequence[npt.NDArray[Any]], last: Sequence[bool]
    ) -> list[list[Phrase]]:
        """Advance each stream by one 2400-sample chunk in ONE model call; return each one's phrases.

        Streams may come from different files or live sessions, each at its own position.
        """
        return [self._resolved(p) for p in self._step(streams, chunks, last)]

    def _step(
        self, streams: Sequence[StreamState], chunks: Sequence[npt.NDArray[Any]], last: Sequence[bool]
    ) -> list[list[_Pending]]:
        """``step``, with beam-search phrases as Futures of the decoder pool when there is one."""
        if not streams:
            return []
        for s in streams:
            if s.finished:
                raise StreamStateError("the stream is already finished")
        logprobs = self._model_step(streams, chunks)
        raws_per_stream = splitter.split_batch(streams, logprobs, last)
        out: list[list[_Pending]] = []
        for s, raws, is_last in zip(streams, raws_per_stream, last):
            s.chunks += 1
            s.finished = bool(is_last)
            if not raws:
                out.append([])
            elif self.pool is not None and s.decoder == "beam":
                pending: list[_Pending] = []
                for r in raws:
                    if single_path(r.logprobs):  # spelled here: cheaper than a hop to the pool
                        phrase = to_phrase(SINGLE_PATH, r, s.channel)
                        if phrase is not None:
                            pending.append(phrase)
                    else:
                        pending.append(self.pool.submit(s.decoder, r, s.channel, s.hotwords))
                out.append(pending)
            else:
                dec = self.decoder(s.decoder)
                out.append(
                    [p for p in (to_phrase(dec, r, s.channel, s.hotwords) for r in raws) if p is not None]
                )
        return out

    def _model_step(
        self, streams: Sequence[StreamState], chunks: Sequence[npt.NDArray[Any]]
    ) -> npt.NDArray[np.float32]:
        """The logprobs [B, 10, 35] of one chunk per stream; the states advance. A new stream's
        first chunk is the reference's front padding, 2400 zeros on a zero state: its answer is
        the model's ``opening`` (the same for every stream, computed once), so only the others
        go to the model, and a batch of new streams alone makes no model call."""
        opening = [
            i
            for i, (s, c) in enumerate(zip(streams, chunks))
            if s.chunks == 0 and not np.any(c) and _all_zero(s._host_state())
        ]
        if not opening:
            return self._run_model(streams, chunks)
        first_logprobs, first_state = self.model.opening()
        logprobs = np.empty((len(streams), *first_logprobs.shape), np.float32)
        logprobs[opening] = first_logprobs
        for i in opening:
            streams[i].model_state = first_state.copy()
        skip = set(opening)
        rest = [i for i in range(len(streams)) if i not in skip]
        if rest:
            logprobs[rest] = self._run_model([streams[i] for i in rest], [chunks[i] for i in rest])
        return logprobs

    def _run_model(
        self, streams: Sequence[StreamState], chunks: Sequence[npt.NDArray[Any]]
    ) -> npt.NDArray[np.float32]:
        """One model call over ``streams`` (their rows in the bank): the logprobs, a view of a
        buffer that the next call overwrites."""
        signal = self.bank.signal_buffer(len(streams))
        for i, c in enumerate(chunks):
            signal[i, :, 0] = np.asarray(c).reshape(CHUNK_SAMPLES)
        return self.model.step(self.bank, list(streams), signal)

    def advance(
        self, items: Sequence[tuple[StreamState, npt.NDArray[Any] | None, bool]], *, max_batch: int = 64
    ) -> list[list[Phrase]]:
        """Feed audio to many streams and run every whole chunk, B streams per model call.

        Each item is (stream, int16 samples or None, finish). With ``finish`` the stream gets the
        reference's 300 ms tail padding, its last chunk is marked last, and it is finished.
        Returns the phrases each stream completed, in order.
        """
        return [self.phrases(d) for d in self.advance_decoding(items, max_batch=max_batch)]

    def advance_decoding(
        self, items: Sequence[tuple[StreamState, npt.NDArray[Any] | None, bool]], *, max_batch: int = 64
    ) -> list[Decoding]:
        """``advance`` without waiting for the decoder pool: each stream's phrases as a
        ``Decoding``, whose phrases (``phrases``) may still be decoding while the model goes on
        with the next audio. Without a pool every phrase is decoded already."""
        results = [Decoding() for _ in items]
        finishing: set[int] = set()
        for i, (s, samples, finish) in enumerate(items):
            if s.finished:
                raise StreamStateError("the stream is already finished")
            if samples is not None and len(samples):
                samples = np.asarray(samples)
                if samples.ndim != 1:
                    raise ValueError("a stream takes mono samples: a 1-D array")
                if samples.dtype != np.int16:  # int16 is in range already: no clip, no copy (4 % of a
                    samples = np.clip(samples, -32768, 32767).astype(np.int16)  # batch worker's time)
                s.pending = np.concatenate((s.pending, samples))
                s.samples_in += len(samples)
            if finish:
                tail = PADDING_SAMPLES + (-(len(s.pending) + PADDING_SAMPLES) % CHUNK_SAMPLES)
                s.pending = np.concatenate((s.pending, np.zeros(tail, np.int16)))
                finishing.add(i)
        while True:
            ready = [i for i, (s, _, _) in enumerate(items) if len(s.pending) >= CHUNK_SAMPLES]
            if not ready:
                return results
            for start in range(0, len(ready), max_batch):
                batch = ready[start : start + max_batch]
                streams = [items[i][0] for i in batch]
                chunks = [s.pending[:CHUNK_SAMPLES] for s in streams]
                last = [i in finishing and len(items[i][0].pending) == CHUNK_SAMPLES for i in batch]
                for i, phrases in zip(batch, self._step(streams, chunks, last)):
                    items[i][0].pending = items[i][0].pending[CHUNK_SAMPLES:]
                    results[i].items.extend(phrases)

    def feed(self, stream: StreamState, samples: npt.NDArray[Any]) -> list[Phrase]:
        """Streaming: accept a piece of any length; return the phrases it completed."""
        return self.advance([(stream, samples, False)])[0]

    def finish(self, stream: StreamState) -> list[Phrase]:
        """End a stream: pad 300 ms, mark the last chunk, return the phrases still open."""
        return self.advance([(stream, None, True)])[0]

    # -- offline ----------------------------------------------------------------------------------

    def transcribe(
        self,
        source: AudioSource | npt.NDArray[Any],
        *,
        channels: ChannelMode = "mix",
        decoder: str | None = None,
        stream_chunk_samples: int | None = None,
        max_duration: float | None = None,
        max_bytes: int | None = None,
        progress: Progress | None = None,
        hotwords: Sequence[str] = (),
    ) -> Iterator[Phrase]:
        """Phrases of one recording in time order, as they are ready (a generator).

        ``source`` is a path, a binary file, or int16 samples at 8 kHz shaped (n,) or (n, channels).
        ``stream_chunk_samples`` feeds the audio through the streaming path in pieces of that size;
        ``hotwords`` are boosted in beam search (a custom vocabulary).
        """
        blocks, n_channels = self._blocks(source, channels, max_duration, max_bytes)
        return self._run(blocks, n_channels, decoder, stream_chunk_samples, progress, hotwords)

    def _run(
        self,
        blocks: Iterator[np.ndarray],
        n_channels: int,
        decoder: str | None,
        stream_chunk_samples: int | None,
        progress: Progress | None,
        hotwords: Sequence[str] = (),
    ) -> Iterator[Phrase]:
        if stream_chunk_samples:
            from .audio import rechunk

            blocks = rechunk(blocks, stream_chunk_samples)
        streams = [self.new_stream(channel=c, decoder=decoder, hotwords=hotwords) for c in range(n_channels)]
        merger = _TimeOrder(streams)
        for block in blocks:
            yield from merger.push(self.advance([(s, block[:, c], False) for c, s in enumerate(streams)]))
            if progress:
                progress(streams[0].samples_in / SAMPLE_RATE)
        yield from merger.push(self.advance([(s, None, True) for s in streams]))

    def transcribe_file(
        self,
        source: AudioSource | npt.NDArray[Any],
        *,
        channels: ChannelMode = "mix",
        decoder: str | None = None,
        stream_chunk_samples: int | None = None,
        max_duration: float | None = None,
        max_bytes: int | None = None,
        progress: Progress | None = None,
        hotwords: Sequence[str] = (),
    ) -> Transcript:
        """The whole Transcript of one recording (``transcribe`` collected, with its duration)."""
        started = time.perf_counter()
        blocks, n_channels = self._blocks(source, channels, max_duration, max_bytes)
        done = [0.0]

        def track(seconds: float) -> None:
            done[0] = seconds
            if progress:
                progress(seconds)

        phrases = tuple(self._run(blocks, n_channels, decoder, stream_chunk_samples, track, hotwords))
        return Transcript(phrases, done[0], time.perf_counter() - started, n_channels)

    def transcribe_many(
        self,
        sources: Sequence[AudioSource | npt.NDArray[Any]],
        *,
        batch: int = 16,
        channels: ChannelMode = "mix",
        decoder: str | None = None,
        max_duration: float | None = None,
        max_bytes: int | None = None,
        on_error: Callable[[int, Exception], None] | None = None,
        hotwords: Sequence[str] = (),
    ) -> Iterator[tuple[int, Transcript]]:
        """Transcribe many recordings, advancing up to ``batch`` streams together per model call.

        Yields (index into sources, Transcript) as each recording completes. A recording that
        cannot be read is reported to ``on_error`` (or raised when None) without stopping the rest.
        With a decoder pool the model goes on with the other recordings while a finished one's
        last phrases are decoded; it is yielded when they are.
        """
        pending = iter(enumerate(sources))
        active: list[_Job] = []
        decoding: list[_Job] = []  # read to the end, phrases still in the decoder pool

        def completed(job: _Job) -> tuple[int, Transcript]:
            return job.index, self.transcript(job.decoding, job.streams, job.started)

        def refill() -> None:
            while sum(len(j.streams) for j in active) < batch:
                try:
                    index, source = next(pending)
                except StopIteration:
                    return
                try:
                    blocks, n_channels = self._blocks(source, channels, max_duration, max_bytes, 2.0)
                except Exception as exc:
                    if on_error is None:
                        raise
                    on_error(index, exc)
                    continue
                streams = [
                    self.new_stream(channel=c, decoder=decoder, hotwords=hotwords) for c in range(n_channels)
                ]
                active.append(_Job(index, streams, blocks))

        refill()
        while active or decoding:
            if active and not backlog_full((j.decoding for j in (*active, *decoding)), batch):
                for job, phrases in zip(*self._blocks_step(active, batch, on_error)):
                    job.decoding.add(phrases)
                decoding += [j for j in active if j.exhausted and j.streams]
                active = [j for j in active if not j.exhausted]
            else:  # nothing left for the model (the rest in the order they finish), or the pool's
                # backlog is full: the model waits for it (the phrases' logprobs held stay bounded)
                self.wait_any([j.decoding for j in (*active, *decoding)], drain=not active)
            ready = [j.decoding.done() for j in decoding]
            yield from (completed(j) for j, r in zip(decoding, ready) if r)
            decoding = [j for j, r in zip(decoding, ready) if not r]
            refill()

    def _blocks_step(
        self, active: list[_Job], batch: int, on_error: Callable[[int, Exception], None] | None
    ) -> tuple[list[_Job], list[Decoding]]:
        """Each of ``active``'s recordings advanced by its next block (marked exhausted at its end,
        or when it cannot be read: reported to ``on_error``); the phrases per stream's owner."""
        items: list[tuple[StreamState, npt.NDArray[Any] | None, bool]] = []
        owners: list[_Job] = []
        for job in active:
            block = None
            try:
                block = next(job.blocks)
            except StopIteration:
                job.exhausted = True
            except Exception as exc:
                if on_error is None:
                    raise
                on_error(job.index, exc)
                job.exhausted = True
                job.streams = []
            for c, s in enumerate(job.streams):
                items.append((s, None if block is None else block[:, c], job.exhausted))
                owners.append(job)
        return owners, self.advance_decoding(items, max_batch=batch)

    def wait_any(
        self, decodings: Sequence[Decoding], *, drain: bool = False, timeout: float | None = None
    ) -> None:
        """Until one more of the pool's phrases of ``decodings`` is done (or ``timeout`` seconds);
        the wait is counted in ``pool_wait_s``, or with ``drain`` (no model work left) in
        ``drain_wait_s``."""
        futures = [f for d in decodings for f in d.futures()]
        if not futures:
            return
        started = time.perf_counter()
        wait(futures, timeout, return_when=FIRST_COMPLETED)
        if drain:
            self.drain_wait_s += time.perf_counter() - started
        else:
            self.pool_wait_s += time.perf_counter() - started

    # -- audio ------------------------------------------------------------------------------------

    def _blocks(
        self,
        source: AudioSource | npt.NDArray[Any],
        channels: ChannelMode,
        max_duration: float | None,
        max_bytes: int | None,
        block_seconds: float = 20.0,
    ) -> tuple[Iterator[np.ndarray], int]:
        if isinstance(source, np.ndarray):
            arr = source[:, None] if source.ndim == 1 else source
            if channels == "mix" and arr.shape[1] > 1:
                arr = np.round(arr.astype(np.float64).mean(axis=1, keepdims=True)).astype(np.int16)
            step = int(block_seconds * SAMPLE_RATE)
            return (arr[i : i + step] for i in range(0, len(arr), step)), arr.shape[1]
        from .audio import open_audio

        reader = open_audio(
            source, channels=channels, max_duration=max_duration, max_bytes=max_bytes,
            block_seconds=block_seconds,
        )  # fmt: skip
        return iter(reader), reader.channels


_Pending = Phrase | Future  # a phrase, or the decoder pool's Future of one (None when empty)


def _order(p: Phrase) -> tuple[int, int, int]:
    """Time order across channels; frames, not rounded seconds, so that ties are exact."""
    return (p.start_frame, p.channel, p.end_frame)


class _TimeOrder:
    """Merges phrases of several streams into time order as early as it is safe to.

    A stream's future phrases start at or after its splitter offset, so a phrase may be released
    once every unfinished stream's offset has passed its start frame.
    """

    def __init__(self, streams: Sequence[StreamState]) -> None:
        self.streams = streams
        self.heap: list[tuple[tuple[int, int, int], int, Phrase]] = []
        self.count = 0

    def push(self, results: Iterable[list[Phrase]]) -> Iterator[Phrase]:
        for phrases in results:
            for p in phrases:
                heapq.heappush(self.heap, (_order(p), self.count, p))
                self.count += 1
        horizon = min((s.offset for s in self.streams if not s.finished), default=None)
        while self.heap and (horizon is None or self.heap[0][2].start_frame < horizon):
            yield heapq.heappop(self.heap)[2]


__all__ = ["STATE_SIZE", "Recognizer", "StreamState", "Transcript"]
