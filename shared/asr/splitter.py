"""The reference pipeline's phrase splitter, per stream (T-ONE.md, "Phrase splitter").

Pure functions over numpy arrays, so that a stream's splitter state is just its buffer and offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


def _facts(stream: Any, buffer: LogProbs) -> None:
    """Remember what the splitter needs of a stream's buffer: speech at all, lead, trail."""
    speech = is_speech(buffer)
    where = np.flatnonzero(speech)
    stream._has_speech = bool(len(where))
    stream._lead = int(where[0]) if len(where) else len(buffer)
    stream._trail = len(buffer) - 1 - int(where[-1]) if len(where) else 0


def _store(stream: Any, frames: LogProbs, start: int) -> None:
    """Write ``frames`` into the stream's growing buffer at ``start`` and make ``buffer`` its view."""
    n = start + len(frames)
    store = stream._buf_store
    if store is None or len(store) < n:
        grown = np.empty((max(n, 64, 2 * (0 if store is None else len(store))), frames.shape[1]), np.float32)
        if start:
            grown[:start] = stream.buffer[:start]
        store = stream._buf_store = grown
    store[start:n] = frames
    stream.buffer = stream._buf_view = store[:n]


def _close(s: Any, n_old: int, lead: int, speaks: bool, lead_new: int, trail_new: int, t: int) -> RawPhrase:
    """A pause of 20 frames has just followed the open phrase (already appended: ``n_old + t``
    frames in the buffer): what ``split`` returns then, without rescanning the buffer. The
    phrase is [lead, p) with p the pause's first frame; the buffer keeps the pause and what
    follows it (or its last 3 frames when nothing speaks after it)."""
    n = n_old + t
    p = n_old - s._trail
    frames = s._buf_store
    first = max(0, lead - SPEECH_EXPAND_FRAMES)
    raw = RawPhrase(
        logprobs=frames[first : p + SPEECH_EXPAND_FRAMES].copy(),
        start_frame=lead + s.offset,
        end_frame=p + s.offset,
        first_frame=first + s.offset,
    )
    if speaks:  # speech after the pause: the buffer is the pause and the new phrase's start
        cut = p
        s._has_speech, s._lead, s._trail = True, n_old + lead_new - p, trail_new
    else:
        cut = max(p, n - SPEECH_EXPAND_FRAMES)
        s._has_speech, s._lead, s._trail = False, n - cut, 0
    frames[: n - cut] = frames[cut:n]
    s.buffer = s._buf_view = frames[: n - cut]
    s.offset += cut
    return raw


def split_batch(streams: Sequence[Any], logprobs: LogProbs, last: Sequence[bool]) -> list[list[RawPhrase]]:
    """``split`` for B streams at once (``logprobs`` [B, 10, V]), updating each stream's
    ``buffer`` and ``offset``; the same phrases, buffers and offsets as ``split`` per stream.

    The speech test runs once for the batch. A stream whose new frames can close nothing (silence
    continuing, or speech with no 20-frame pause after it and no 2000-frame cut due) takes a fast
    path: its buffer grows in place (or keeps its last 3 frames in silence) and nothing is
    rescanned. Any other stream (a pause long enough, a cut due, its last chunk, or a buffer set
    from outside) goes through ``split`` itself.
    """
    b, t, v = logprobs.shape
    speech = is_speech(logprobs.reshape(b * t, v)).reshape(b, t)
    any_new = speech.any(axis=1)
    lead_new = np.where(any_new, speech.argmax(axis=1), t).tolist()
    trail_new = np.where(any_new, speech[:, ::-1].argmax(axis=1), t).tolist()
    any_list = any_new.tolist()
    out: list[list[RawPhrase]] = []
    for i, s in enumerate(streams):
        buf = s.buffer
        if not last[i] and buf is s._buf_view and buf is not None:
            n_old = len(buf)
            if not s._has_speech and not any_list[i]:  # silence goes on: keep the last 3 frames
                keep = SPEECH_EXPAND_FRAMES
                s.offset += n_old + t - keep
                _store(s, logprobs[i, t - keep :], 0)
                s._lead = keep
                out.append([])
                continue
            if s._has_speech:
                lead = s._lead
                gap = s._trail + lead_new[i] if any_list[i] else s._trail + t
                trail = trail_new[i] if any_list[i] else s._trail + t
            else:
                lead, gap, trail = n_old + lead_new[i], 0, trail_new[i]
            if n_old + t - lead < MAX_PHRASE_FRAMES:
                _store(s, logprobs[i], n_old)
                if gap < MIN_SILENCE_FRAMES:  # the phrase goes on
                    s._has_speech, s._lead, s._trail = True, lead, trail
                    out.append([])
                    continue
                out.append([_close(s, n_old, lead, any_list[i], lead_new[i], trail_new[i], t)])
                continue
        raws, rest, s.offset = split(s.buffer, s.offset, logprobs[i].copy(), is_last=bool(last[i]))
        _store(s, rest, 0)
        _facts(s, s.buffer)
        out.append(raws)
    return out
