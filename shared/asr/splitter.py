"""The reference pipeline's phrase splitter, per stream (T-ONE.md, "Phrase splitter").

Pure functions over numpy arrays, so that a stream's splitter state is just its buffer and offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SILENCE_THRESHOLD = 0.9  # a frame is speech when p(space) + p(blank) <= this
MIN_SILENCE_FRAMES = 20  # 600 ms of silence separates phrases
SPEECH_EXPAND_FRAMES = 3  # logprobs kept on either side of a phrase
MAX_PHRASE_FRAMES = 2000  # longer stretches are cut into 60 s phrases

LogProbs = npt.NDArray[np.float32]


@dataclass(frozen=True)
class RawPhrase:
    """A phrase before decoding: its logprobs and absolute frame indices."""

    logprobs: LogProbs  # buffer[max(0, s - 3) : e + 3]
    start_frame: int  # absolute index of the phrase's first frame
    end_frame: int  # absolute index one past its last frame
    first_frame: int  # absolute index of logprobs[0]


def is_speech(logprobs: LogProbs) -> npt.NDArray[np.bool_]:
    return np.exp(logprobs[:, -2:]).sum(axis=-1) <= SILENCE_THRESHOLD


def _stretches(speech: npt.NDArray[np.bool_], *, is_last: bool) -> tuple[list[tuple[int, int]], int]:
    """The speech stretches between separators: (finished stretches, start of the unfinished one).

    A separator is a run of at least MIN_SILENCE_FRAMES silent frames, counting the silent frames
    pretended before the buffer (and after it when ``is_last``).
    """
    n = len(speech)
    pad_front, pad_back = MIN_SILENCE_FRAMES, MIN_SILENCE_FRAMES if is_last else 0
    silent = np.concatenate(([False], np.zeros(pad_front, bool), ~speech, np.zeros(pad_back, bool), [False]))
    silent[1 : 1 + pad_front] = True
    silent[1 + pad_front + n : 1 + pad_front + n + pad_back] = True
    changes = np.diff(silent.astype(np.int8))
    run_starts = np.flatnonzero(changes == 1) - pad_front
    run_ends = np.flatnonzero(changes == -1) - pad_front
    keep = (run_ends - run_starts) >= MIN_SILENCE_FRAMES
    sep_starts, sep_ends = run_starts[keep].tolist(), run_ends[keep].tolist()
    finished = list(zip(sep_ends[:-1], sep_starts[1:]))
    return finished, sep_ends[-1]


def split(
    buffer: LogProbs, offset: int, new: LogProbs, *, is_last: bool
) -> tuple[list[RawPhrase], LogProbs, int]:
    """Append ``new`` frames to the buffer and return (closed phrases, next buffer, next offset)."""
    frames = np.concatenate((buffer, new), axis=0) if len(buffer) else new
    speech = is_speech(frames)
    n = len(frames)
    finished, open_start = _stretches(speech, is_last=is_last)

    spans: list[tuple[int, int]] = []
    for start, end, closed in [*((s, e, True) for s, e in finished), (open_start, n, False)]:
        while end - start >= MAX_PHRASE_FRAMES:  # forced cuts, finished or not
            spans.append((start, start + MAX_PHRASE_FRAMES))
            start += MAX_PHRASE_FRAMES
        if closed:  # may be empty: the reference emits it, and the decoder drops it
            spans.append((start, end))
    phrases = [
        RawPhrase(
            logprobs=frames[max(0, s - SPEECH_EXPAND_FRAMES) : e + SPEECH_EXPAND_FRAMES],
            start_frame=s + offset,
            end_frame=e + offset,
            first_frame=max(0, s - SPEECH_EXPAND_FRAMES) + offset,
        )
        for s, e in spans
    ]
    cut = spans[-1][1] if spans else 0
    if not speech[cut:].any():
        cut = max(cut, n - SPEECH_EXPAND_FRAMES)
    return phrases, frames[cut:], offset + cut
