"""The text options of a job, batch or live session: ``normalize``, ``vocabulary``, ``replacements``,
``redact``, ``redact_raw``, ``redact_audio`` — parsed from JSON or form values, each bad value an
error naming its option (``invalid_<option>``), so the API can answer 422 with that code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.errors import CodedError

REDACT_KINDS = ("card", "phone", "passport", "inn", "snils", "email", "profanity")
OPTION_NAMES = ("normalize", "vocabulary", "replacements", "redact", "redact_raw", "redact_audio")
MAX_VOCABULARY = 500
MAX_WORD_CHARS = 100
MAX_REPLACEMENTS = 500
HOTWORD_WEIGHT = 10.0  # pyctcdecode's default hotword_weight


class TextOptionError(CodedError):
    """A bad option value: 422 ``invalid_<option>``."""

    status = 422

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message, code=f"invalid_{option}")
        self.option = option


@dataclass(frozen=True)
class TextOptions:
    normalize: bool = True
    vocabulary: tuple[str, ...] = ()
    replacements: Mapping[str, str] = field(default_factory=dict)
    redact: tuple[str, ...] = ()
    redact_raw: bool = False
    redact_audio: bool = False

    def display_replacements(self) -> dict[str, str]:
        """``replacements``, plus each vocabulary word written as listed where the recognizer
        writes it in lowercase («тинькофф» → «Тинькофф»); an explicit replacement wins."""
        out = {w.lower(): w for w in self.vocabulary if w.lower() != w}
        out.update(self.replacements)
        return out

    def hotwords(self, alphabet: str) -> tuple[str, ...]:
        """The vocabulary as the decoder can boost it: lowercase, only words within ``alphabet``."""
        words = (" ".join(w.lower().split()) for w in self.vocabulary)
        return tuple(w for w in words if w and set(w) <= set(alphabet))

    def to_dict(self) -> dict[str, Any]:
        """The JSON kept in a job's or batch's ``options`` (only what differs from the defaults)."""
        out: dict[str, Any] = {}
        if not self.normalize:
            out["normalize"] = False
        if self.vocabulary:
            out["vocabulary"] = list(self.vocabulary)
        if self.replacements:
            out["replacements"] = dict(self.replacements)
        if self.redact:
            out["redact"] = list(self.redact)
        if self.redact_raw:
            out["redact_raw"] = True
        if self.redact_audio:
            out["redact_audio"] = True
        return out

    @classmethod
    def from_stored(cls, options: Mapping[str, Any] | None) -> TextOptions:
        """From a stored ``options`` dict (already validated); missing keys are the defaults."""
        return parse_text_options(options or {})


def _bool(option: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in (
        "true",
        "1",
        "yes",
        "on",
        "false",
        "0",
        "no",
        "off",
    ):
        return value.strip().lower() in ("true", "1", "yes", "on")
    raise TextOptionError(option, f"{option} must be true or false, not {value!r}")


def _list(option: str, value: Any) -> list[Any]:
    """A JSON array, or (from a form field) a JSON array as a string or comma-separated words."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise TextOptionError(option, f"{option} is not a valid JSON array") from None
        else:
            value = [part.strip() for part in text.split(",") if part.strip()]
    if not isinstance(value, list):
        raise TextOptionError(option, f"{option} must be a list of strings")
    return value


def _words(option: str, value: Any, limit: int) -> tuple[str, ...]:
    items = _list(option, value)
    if len(items) > limit:
        raise TextOptionError(option, f"{option} may hold at most {limit} entries, not {len(items)}")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise TextOptionError(option, f"every entry of {option} must be a non-empty string")
        if len(item) > MAX_WORD_CHARS:
            raise TextOptionError(option, f"entries of {option} are at most {MAX_WORD_CHARS} characters")
        if item.strip() not in out:
            out.append(item.strip())
    return tuple(out)


def parse_vocabulary(value: Any) -> tuple[str, ...]:
    return _words("vocabulary", value, MAX_VOCABULARY)


def parse_text_options(raw: Mapping[str, Any]) -> TextOptions:
    """The text options found in ``raw`` (other keys are ignored); TextOptionError on a bad value."""
    normalize = _bool("normalize", raw["normalize"]) if raw.get("normalize") is not None else True
    vocabulary = parse_vocabulary(raw["vocabulary"]) if raw.get("vocabulary") is not None else ()
    replacements: dict[str, str] = {}
    if raw.get("replacements") is not None:
        value = raw["replacements"]
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise TextOptionError("replacements", "replacements must be a JSON object") from None
        if not isinstance(value, dict):
            raise TextOptionError("replacements", "replacements must be an object {spoken: written}")
        if len(value) > MAX_REPLACEMENTS:
            raise TextOptionError("replacements", f"replacements may hold at most {MAX_REPLACEMENTS} entries")
        for key, written in value.items():
            if not isinstance(written, str) or not key.strip() or not written.strip():
                raise TextOptionError(
                    "replacements", "replacements map non-empty strings to non-empty strings"
                )
            if len(key) > MAX_WORD_CHARS or len(written) > MAX_WORD_CHARS:
                raise TextOptionError("replacements", f"replacements are at most {MAX_WORD_CHARS} characters")
            replacements[" ".join(key.lower().split())] = written.strip()
    redact: tuple[str, ...] = ()
    if raw.get("redact") is not None:
        kinds = _words("redact", raw["redact"], len(REDACT_KINDS) + 1)
        unknown = [k for k in kinds if k not in REDACT_KINDS]
        if unknown:
            raise TextOptionError(
                "redact", f"unknown redact kind {unknown[0]!r}: use any of {', '.join(REDACT_KINDS)}"
            )
        redact = tuple(k for k in REDACT_KINDS if k in kinds)
    redact_raw = _bool("redact_raw", raw["redact_raw"]) if raw.get("redact_raw") is not None else False
    redact_audio = (
        _bool("redact_audio", raw["redact_audio"]) if raw.get("redact_audio") is not None else False
    )
    if (redact_raw or redact_audio) and not redact:
        option = "redact_raw" if redact_raw else "redact_audio"
        raise TextOptionError(option, f"{option} needs redact (the kinds to mask)")
    return TextOptions(normalize, vocabulary, replacements, redact, redact_raw, redact_audio)
