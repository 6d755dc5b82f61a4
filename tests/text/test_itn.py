"""The ITN grammar against the project's spoken-form test set, and the word spans it keeps."""

from __future__ import annotations

import pytest

from shared.dev.itn_eval import load_cases
from shared.text.itn import Span, normalize_text, normalize_words

CASES = load_cases()


def test_the_test_set_is_large_and_covers_every_category() -> None:
    assert len(CASES) >= 150
    categories = {c for c, _, _ in CASES}
    assert {"case", "gender", "ordinal", "decimal", "money", "percent", "time", "date", "phone"} <= categories
    assert {"digits", "plain", "ambiguous", "mixed"} <= categories


@pytest.mark.parametrize(("category", "spoken", "expected"), CASES, ids=[s for _, s, _ in CASES])
def test_case(category: str, spoken: str, expected: str) -> None:
    assert normalize_text(spoken) == expected


def test_spans_cover_every_word_once_in_order() -> None:
    for _, spoken, _ in CASES:
        words = spoken.split()
        spans = normalize_words(words)
        covered = [k for s in spans for k in range(s.first, s.last + 1)]
        assert covered == list(range(len(words))), spoken


def test_a_span_names_the_words_it_replaced() -> None:
    words = [
        "номер",
        "договора",
        "двадцать",
        "три",
        "сорок",
        "пять",
        "оплата",
        "двадцать",
        "пять",
        "тысяч",
        "триста",
        "рублей",
    ]
    assert normalize_words(words) == [
        Span("номер", 0, 0),
        Span("договора", 1, 1),
        Span("2345", 2, 5),
        Span("оплата", 6, 6),
        Span("25 300", 7, 10),
        Span("рублей", 11, 11),
    ]


def test_percent_replaces_its_word() -> None:
    assert normalize_words(["семь", "и", "пять", "десятых", "процента"]) == [
        Span("7,5", 0, 3),
        Span("%", 4, 4),
    ]


def test_a_fraction_replaces_its_words() -> None:
    assert normalize_words(["ставка", "две", "третьих", "процента"]) == [
        Span("ставка", 0, 0),
        Span("2/3", 1, 2),
        Span("%", 3, 3),
    ]
    assert normalize_words(["три", "с", "половиной", "тысячи", "рублей"]) == [
        Span("3500", 0, 3),
        Span("рублей", 4, 4),
    ]


def test_plus_joins_the_phone_number() -> None:
    words = [
        "плюс",
        "семь",
        "девятьсот",
        "шестнадцать",
        "сто",
        "двадцать",
        "три",
        "сорок",
        "пять",
        "шестьдесят",
        "семь",
    ]
    assert normalize_words(words) == [Span("+7 916 123-45-67", 0, 10)]


def test_empty_and_wordless() -> None:
    assert normalize_words([]) == []
    assert normalize_text("") == ""
