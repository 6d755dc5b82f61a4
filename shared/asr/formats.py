"""Render a transcript as json, txt, srt, vtt or tsv (shared by the CLI, the API and the workers)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal, get_args

from .types import Phrase

TranscriptFormat = Literal["json", "txt", "srt", "vtt", "tsv"]  # what a transcript is written as
FORMATS: tuple[str, ...] = get_args(TranscriptFormat)
# the file names taken as recordings in folders and archives (the engine reads more: these are the
# names a call center's recorder writes); batches on the server and `tone-platform batch` both use it
AUDIO_SUFFIXES = frozenset({
    ".wav", ".wave", ".mp3", ".ogg", ".oga", ".opus", ".flac", ".m4a", ".aac", ".mp4", ".gsm",
    ".au", ".snd", ".aif", ".aiff", ".amr", ".webm", ".wma", ".raw", ".vox",
})  # fmt: skip
MEDIA_TYPES = {
    "json": "application/json",
    "txt": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "tsv": "text/tab-separated-values; charset=utf-8",
}


def _clock(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _speaker(p: Phrase, channels: int) -> str:
    return f"[{('agent', 'client')[p.channel] if p.channel < 2 else p.channel}] " if channels > 1 else ""


def render(
    fmt: str, phrases: Sequence[Phrase], *, document: dict[str, Any] | None = None, channels: int = 1
) -> str:
    """The transcript as text. ``document`` is the JSON object to print for ``json``."""
    if fmt == "json":
        doc = document if document is not None else {"phrases": [p.to_dict() for p in phrases]}
        return json.dumps(doc, ensure_ascii=False)
    if fmt == "txt":
        return "".join(f"{_speaker(p, channels)}{p.text}\n" for p in phrases)
    if fmt == "tsv":
        rows = ["start\tend\tchannel\ttext"]
        rows += [f"{round(p.start * 1000)}\t{round(p.end * 1000)}\t{p.channel}\t{p.text}" for p in phrases]
        return "\n".join(rows) + "\n"
    if fmt == "srt":
        return "\n".join(
            f"{i}\n{_clock(p.start, ',')} --> {_clock(p.end, ',')}\n{_speaker(p, channels)}{p.text}\n"
            for i, p in enumerate(phrases, 1)
        )
    if fmt == "vtt":
        cues = [
            f"{_clock(p.start, '.')} --> {_clock(p.end, '.')}\n"
            + (f"<v {_speaker(p, channels)[1:-2]}>" if channels > 1 else "")
            + f"{p.text}\n"
            for p in phrases
        ]
        return "WEBVTT\n\n" + "\n".join(cues)
    raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
