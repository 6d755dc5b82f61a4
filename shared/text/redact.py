"""Redaction over the written form: cards, phones, passports, INN, SNILS, e-mail, profanity.

Numbers are found after ITN (:mod:`shared.text.itn`) and recognised by their checksums: a card
number is 13–19 digits passing Luhn, an INN 10 or 12 digits passing the tax service's check
digits, a SNILS 11 digits passing the pension fund's checksum. A passport is 10 digits (or 4 and
6 in a row) after «паспорт»/«серия» or alone when it passes neither INN's check nor is a phone;
a phone is what ITN wrote as one (``8 916 123-45-67``) or 10/11 digits starting with 9 or 7/8.
E-mail is spoken («иван точка петров собака почта точка ру»), so the span from the name before
«собака» to the last part after «точка» is masked. Profanity comes from the word list the project
ships (``profanity.txt``: the stems of the common Russian obscenities, with prefixes and
exceptions).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from .itn import Span

MASKS = {
    "card": "[карта]",
    "phone": "[телефон]",
    "passport": "[паспорт]",
    "inn": "[инн]",
    "snils": "[снилс]",
    "email": "[почта]",
    "profanity": "[мат]",
}
_PASSPORT_CUES = ("паспорт", "серия", "серии")
_EMAIL_AT = frozenset({"собака", "собачка", "эт"})
_EMAIL_DOT = frozenset({"точка"})
_PREFIXES: tuple[str, ...] = (
    "",
    "за",
    "вы",
    "по",
    "у",
    "от",
    "отъ",
    "на",
    "об",
    "объ",
    "разъ",
    "при",
    "съ",
    "до",
    "пере",
    "недо",
)
_PREFIXES += ("под", "подъ")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def inn_ok(digits: str) -> bool:
    """An INN's check digits: 10 digits (organisations) or 12 (people)."""

    def check(weights: Sequence[int], part: str) -> int:
        return sum(w * int(c) for w, c in zip(weights, part)) % 11 % 10

    d = digits
    if len(d) == 10:
        return check((2, 4, 10, 3, 5, 9, 4, 6, 8), d) == int(d[9])
    if len(d) == 12:
        first = check((7, 2, 4, 10, 3, 5, 9, 4, 6, 8), d) == int(d[10])
        return first and check((3, 7, 2, 4, 10, 3, 5, 9, 4, 6, 8), d) == int(d[11])
    return False


def snils_ok(digits: str) -> bool:
    """A SNILS's checksum: the last two of 11 digits."""
    if len(digits) != 11:
        return False
    total = sum(int(c) * (9 - i) for i, c in enumerate(digits[:9]))
    while total > 101:
        total %= 101
    expected = 0 if total in (100, 101) else total
    return expected == int(digits[9:])


@lru_cache(maxsize=1)
def _profanity_rules() -> tuple[tuple[str, ...], tuple[str, ...], frozenset[str], frozenset[str]]:
    anywhere: list[str] = []
    starts: list[str] = []
    exact: set[str] = set()
    never: set[str] = set()
    for line in (Path(__file__).with_name("profanity.txt")).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        kind, stem = line[0], line[1:]
        {"~": anywhere, "^": starts}.get(kind, []).append(stem)
        if kind == "=":
            exact.add(stem)
        elif kind == "!":
            never.add(stem)
    return tuple(anywhere), tuple(starts), frozenset(exact), frozenset(never)


def is_profane(word: str) -> bool:
    w = word.lower()
    anywhere, starts, exact, never = _profanity_rules()
    if w in never:
        return False
    if w in exact or any(stem in w for stem in anywhere):
        return True
    return any(w.startswith(prefix + stem) for stem in starts for prefix in _PREFIXES)


_PHONE_WRITTEN = re.compile(r"^\+?\d[\d ]*\d{3}-\d{2}-\d{2}$")


def _number_kind(text: str, before: Sequence[str], kinds: frozenset[str]) -> str | None:
    """Which kind of identifier a written token is, among ``kinds``; None when none."""
    if not any(ch.isdigit() for ch in text) or not re.fullmatch(r"[+\d \-]+", text):
        return None
    digits = re.sub(r"\D", "", text)
    cue = any(w.startswith(_PASSPORT_CUES) for w in before)
    if "passport" in kinds and len(digits) == 10 and cue:
        return "passport"
    if "card" in kinds and 13 <= len(digits) <= 19 and luhn_ok(digits):
        return "card"
    if (
        "snils" in kinds
        and len(digits) == 11
        and snils_ok(digits)
        and any(w.startswith("снилс") for w in before)
    ):
        return "snils"
    if "inn" in kinds and len(digits) in (10, 12) and inn_ok(digits):
        return "inn"
    phone_like = bool(_PHONE_WRITTEN.match(text)) or (
        (len(digits) == 11 and digits[0] in "78") or (len(digits) == 10 and digits[0] == "9")
    )
    if "snils" in kinds and len(digits) == 11 and snils_ok(digits) and not phone_like:
        return "snils"
    if "phone" in kinds and phone_like:
        return "phone"
    if "passport" in kinds and len(digits) == 10:
        return "passport"
    return None


def redact_spans(spans: Sequence[Span], kinds: Sequence[str]) -> list[tuple[int, int, str]]:
    """``(first span, last span, mask)`` for every redacted stretch of ``spans`` (in order)."""
    wanted = frozenset(kinds)
    out: list[tuple[int, int, str]] = []
    texts = [s.text for s in spans]
    i = 0
    while i < len(spans):
        text = texts[i]
        # e-mail: name (точка part)* собака domain (точка part)+
        if "email" in wanted and i + 1 < len(spans) and texts[i + 1] in _EMAIL_AT:
            end = i + 2
            while end + 1 < len(spans) and texts[end + 1] in _EMAIL_DOT:
                end += 2
            if end < len(spans) and end > i + 2:
                start = i
                while start >= 2 and texts[start - 1] in _EMAIL_DOT:
                    start -= 2
                while out and out[-1][0] >= start:
                    out.pop()
                out.append((start, min(end, len(spans) - 1), MASKS["email"]))
                i = end + 1
                continue
        before = [t.lower() for t in texts[max(0, i - 3) : i]]
        kind = _number_kind(text, before, wanted)
        # a passport spoken as series and number: 4 digits, «номер» perhaps, then 6
        if kind is None and "passport" in wanted and re.fullmatch(r"\d{4}", text):
            j = i + 2 if i + 2 < len(spans) and texts[i + 1] == "номер" else i + 1
            if j < len(spans) and re.fullmatch(r"\d{6}", texts[j]):
                out.append((i, j, MASKS["passport"]))
                i = j + 1
                continue
        if kind is None and "profanity" in wanted and is_profane(text):
            kind = "profanity"
        if kind is not None:
            out.append((i, i, MASKS[kind]))
        i += 1
    return out
