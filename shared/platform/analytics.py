"""Conversation analytics of one call, computed from its phrases and their words (no DB, no I/O).

A split stereo call has the agent on channel 0 and the client on channel 1. Every measure is in
seconds unless named otherwise, rounded to milliseconds (3 decimals; shares and rates 4 / 1):

- speech: the union of a channel's word intervals ``[start, end)`` (a phrase without words counts
  as one interval ``[start_time, end_time)``);
- ``talk_time[c]``: the length of channel c's speech;
- ``talk_share[c]``: ``talk_time[c]`` over the sum of both channels' talk times;
- ``speech_time``: the length of the union of all channels' speech;
- ``silence_time``: ``duration − speech_time`` (no one speaking, from 0 to the end of the recording);
- ``longest_silence``: the longest stretch of it (the start and the end of the recording count);
- ``overtalk_time``: the length of the intersection of the two channels' speech (both speaking);
- ``interruptions[c]``: phrases of channel c that start while a phrase of the other channel is in
  progress (strictly between its start and end: a pause between two of its words does not free the
  turn);
- ``reply_latency[c]``: the median, over channel c's replies, of the gap from the end of the other
  channel's phrase to the start of c's (a reply: c's phrase that, in start order, follows one of the
  other channel's and starts at or after its end; an overlapping start is an interruption instead);
  ``null`` when c never replied;
- ``words[c]``, ``speech_rate[c]``: channel c's word count, and words per minute of its talk time;
- ``longest_monologue[c]``: the longest run of c's consecutive phrases (in start order) with no
  phrase of the other channel starting in between, from the first one's start to the last one's end.

A mono recording (or a ``mix`` transcript) gets only the channel-free measures: ``speech_time``,
``silence_time``, ``longest_silence``, ``words`` and ``speech_rate`` under key ``"0"``, the others
``null``.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Interval = tuple[float, float]
VERSION = 1
CHANNELS = ("0", "1")
# the measures, in the order of the columns of a batch's analytics.csv
PER_CHANNEL = ("talk_time", "talk_share", "interruptions", "reply_latency", "words", "speech_rate",
               "longest_monologue")  # fmt: skip
OVERALL = ("speech_time", "silence_time", "longest_silence", "overtalk_time")


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, non-overlapping intervals covering the same time (touching ones joined)."""
    out: list[list[float]] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def length(intervals: Iterable[Interval]) -> float:
    return sum(b - a for a, b in intervals)


def intersect(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    """The intersection of two merged interval lists."""
    out: list[Interval] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if end > start:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def gaps(speech: Sequence[Interval], duration: float) -> list[float]:
    """The lengths of the stretches of ``[0, duration]`` outside ``speech`` (merged)."""
    out: list[float] = []
    cursor = 0.0
    for start, end in speech:
        if start > cursor:
            out.append(start - cursor)
        cursor = max(cursor, end)
    if duration > cursor:
        out.append(duration - cursor)
    return out


def _inside(t: float, intervals: Sequence[Interval]) -> bool:
    return any(a < t < b for a, b in intervals)


def phrase_intervals(phrase: Mapping[str, Any]) -> list[Interval]:
    words = phrase.get("words") or ()
    if words:
        return [(float(w["start"]), float(w["end"])) for w in words]
    return [(float(phrase["start_time"]), float(phrase["end_time"]))]


def _word_count(phrase: Mapping[str, Any]) -> int:
    words = phrase.get("words")
    return len(words) if words else len(str(phrase.get("text", "")).split())


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _rate(words: int, seconds: float) -> float | None:
    return round(words / seconds * 60.0, 1) if seconds > 0 else None


def compute(phrases: Sequence[Mapping[str, Any]], duration: float, channels: int) -> dict[str, Any]:
    """Every measure of one call (see the module's docstring); ``channels`` 2 for a split stereo call."""
    ordered = sorted(phrases, key=lambda p: (float(p["start_time"]), int(p.get("channel", 0))))
    every = merge(i for p in ordered for i in phrase_intervals(p))
    speech_time = length(every)
    silences = gaps(every, duration)
    total_words = sum(_word_count(p) for p in ordered)
    result: dict[str, Any] = {
        "version": VERSION,
        "channels": 2 if channels == 2 else 1,
        "duration": _r(duration),
        "speech_time": _r(speech_time),
        "silence_time": _r(max(0.0, duration - speech_time)),
        "longest_silence": _r(max(silences, default=0.0)),
        "overtalk_time": None,
        "talk_time": {"0": _r(speech_time)},
        "talk_share": None,
        "interruptions": None,
        "reply_latency": None,
        "words": {"0": total_words},
        "speech_rate": {"0": _rate(total_words, speech_time)},
        "longest_monologue": None,
    }
    if channels != 2:
        return result

    by: dict[str, list[Mapping[str, Any]]] = {c: [] for c in CHANNELS}
    for p in ordered:
        by["1" if int(p.get("channel", 0)) == 1 else "0"].append(p)
    speech = {c: merge(i for p in by[c] for i in phrase_intervals(p)) for c in CHANNELS}
    talk = {c: length(speech[c]) for c in CHANNELS}
    both = talk["0"] + talk["1"]
    other = {"0": "1", "1": "0"}
    words = {c: sum(_word_count(p) for p in by[c]) for c in CHANNELS}

    turns = {c: [(float(p["start_time"]), float(p["end_time"])) for p in by[c]] for c in CHANNELS}
    interruptions = {
        c: sum(1 for p in by[c] if _inside(float(p["start_time"]), turns[other[c]])) for c in CHANNELS
    }
    latencies: dict[str, list[float]] = {c: [] for c in CHANNELS}
    monologue = dict.fromkeys(CHANNELS, 0.0)
    run_channel: str | None = None
    run_start = run_end = 0.0
    previous: Mapping[str, Any] | None = None
    for p in ordered:
        c = "1" if int(p.get("channel", 0)) == 1 else "0"
        start, end = float(p["start_time"]), float(p["end_time"])
        if previous is not None:
            pc = "1" if int(previous.get("channel", 0)) == 1 else "0"
            if pc != c and start >= float(previous["end_time"]):
                latencies[c].append(start - float(previous["end_time"]))
        if c == run_channel:
            run_end = max(run_end, end)
        else:
            run_channel, run_start, run_end = c, start, end
        monologue[c] = max(monologue[c], run_end - run_start)
        previous = p

    result.update(
        overtalk_time=_r(length(intersect(speech["0"], speech["1"]))),
        talk_time={c: _r(talk[c]) for c in CHANNELS},
        talk_share={c: (round(talk[c] / both, 4) if both > 0 else None) for c in CHANNELS},
        interruptions=interruptions,
        reply_latency={c: _r(statistics.median(latencies[c])) if latencies[c] else None for c in CHANNELS},
        words=words,
        speech_rate={c: _rate(words[c], talk[c]) for c in CHANNELS},
        longest_monologue={c: _r(monologue[c]) for c in CHANNELS},
    )
    return result


def flat(analytics: Mapping[str, Any] | None) -> dict[str, Any]:
    """One call's measures as flat columns (``talk_time_agent``, ``talk_time_client``, ...) for CSV
    rows and aggregates; absent measures are None."""
    a = analytics or {}
    stereo = a.get("channels") == 2
    words = sum((a.get("words") or {}).values()) if a else None
    row: dict[str, Any] = {"duration": a.get("duration")}
    for name in OVERALL:
        row[name] = a.get(name)
    row["words"] = words
    row["speech_rate"] = (
        _rate(words, a["speech_time"]) if words is not None and a.get("speech_time") else None
    )
    for name in PER_CHANNEL:
        values = (a.get(name) or {}) if stereo else {}
        for c, side in zip(CHANNELS, ("agent", "client"), strict=True):
            row[f"{name}_{side}"] = values.get(c)
    return row


FLAT_COLUMNS = tuple(flat({}).keys())
