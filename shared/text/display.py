"""A transcript's written form: ``display``/``display_words`` per phrase, ``display_text``, with
replacements and redaction applied, and (``redact_raw``) the spoken ``text``/``words`` masked too.

Works on the JSON shape the engine writes (``{"text", "start_time", "end_time", "channel",
"words": [{"text", "start", "end"}]}``), so the worker, the API and the bench share it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .itn import Span, normalize_words
from .options import TextOptions
from .redact import redact_spans


@dataclass(frozen=True)
class Redaction:
    """A redacted stretch of audio: its channel and times (from the words)."""

    channel: int
    start: float
    end: float


def _replace(tokens: list[Span], replacements: Mapping[str, str]) -> list[Span]:
    """Rewrite spellings: a key of one or more words, matched case-insensitively on whole tokens."""
    if not replacements:
        return tokens
    longest = max(len(k.split()) for k in replacements)
    out: list[Span] = []
    i = 0
    while i < len(tokens):
        for size in range(min(longest, len(tokens) - i), 0, -1):
            key = " ".join(t.text.lower() for t in tokens[i : i + size])
            if key in replacements:
                out.append(Span(replacements[key], tokens[i].first, tokens[i + size - 1].last))
                i += size
                break
        else:
            out.append(tokens[i])
            i += 1
    return out


def display_phrase(phrase: Mapping[str, Any], options: TextOptions) -> tuple[dict[str, Any], list[Redaction]]:
    """The phrase with ``display`` and ``display_words`` added (and masked ``text`` with
    ``redact_raw``), and the redacted stretches of audio."""
    words: list[Mapping[str, Any]] = list(phrase.get("words") or ())
    if not words:  # no word times: one span for the whole phrase
        words = [
            {"text": w, "start": phrase["start_time"], "end": phrase["end_time"]}
            for w in str(phrase["text"]).split()
        ]
    raw = [str(w["text"]) for w in words]
    spans = normalize_words(raw)
    masks = redact_spans(spans, options.redact) if options.redact else []
    masked_at = {first: (last, mask) for first, last, mask in masks}
    tokens: list[Span] = []
    raw_masked: list[Span] = []  # the spoken words with masks, for redact_raw
    redactions: list[Redaction] = []
    channel = int(phrase.get("channel", 0))
    i = 0
    while i < len(spans):
        if i in masked_at:
            last, mask = masked_at[i]
            first_word, last_word = spans[i].first, spans[last].last
            tokens.append(Span(mask, first_word, last_word))
            raw_masked.append(Span(mask, first_word, last_word))
            redactions.append(
                Redaction(channel, float(words[first_word]["start"]), float(words[last_word]["end"]))
            )
            i = last + 1
            continue
        span = spans[i]
        if options.normalize:
            tokens.append(span)
        else:
            tokens.extend(Span(raw[k], k, k) for k in range(span.first, span.last + 1))
        raw_masked.extend(Span(raw[k], k, k) for k in range(span.first, span.last + 1))
        i += 1
    tokens = _replace(tokens, options.display_replacements())
    out = dict(phrase)
    out["display"] = " ".join(t.text for t in tokens)
    out["display_words"] = [
        {"text": t.text, "start": words[t.first]["start"], "end": words[t.last]["end"]} for t in tokens
    ]
    if options.redact_raw and masks:
        out["text"] = " ".join(t.text for t in raw_masked)
        out["words"] = [
            {"text": t.text, "start": words[t.first]["start"], "end": words[t.last]["end"]}
            for t in raw_masked
        ]
    return out, redactions


def display_phrases(
    phrases: Iterable[Mapping[str, Any]], options: TextOptions
) -> tuple[list[dict[str, Any]], list[Redaction]]:
    """Every phrase through :func:`display_phrase`; the redactions of all of them."""
    out: list[dict[str, Any]] = []
    redactions: list[Redaction] = []
    for phrase in phrases:
        shown, found = display_phrase(phrase, options)
        out.append(shown)
        redactions.extend(found)
    return out, redactions


def display_text(phrases: Sequence[Mapping[str, Any]]) -> str:
    """The transcript's written text: the phrases' ``display`` (their ``text`` where absent)."""
    return " ".join(str(p.get("display", p["text"])) for p in phrases)


def phrase_text(phrase: Mapping[str, Any], which: str = "display") -> str:
    """A phrase's text for exports: ``display`` by default, the spoken ``text`` with ``raw``."""
    if which == "raw":
        return str(phrase["text"])
    return str(phrase.get("display", phrase["text"]))


def with_display(phrases: Sequence[Mapping[str, Any]], options: TextOptions) -> list[dict[str, Any]]:
    """Stored phrases with their written form: as stored when they have it (the worker adds it),
    else computed now (live sessions kept as jobs, transcripts stored before it existed)."""
    return [dict(p) if "display" in p else display_phrase(p, options)[0] for p in phrases]
