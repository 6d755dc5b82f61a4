"""Redaction: checksums, masks, profanity, e-mail; the display layer's spans, times and options."""

from __future__ import annotations

from typing import Any

import pytest

from shared.text.display import display_phrase, display_text
from shared.text.itn import Span
from shared.text.options import REDACT_KINDS, TextOptionError, TextOptions, parse_text_options
from shared.text.redact import inn_ok, is_profane, luhn_ok, redact_spans, snils_ok

DIGIT_WORDS = ["ноль", "один", "два", "три", "четыре", "пять", "шесть", "семь", "восемь", "девять"]


def spoken_digits(digits: str) -> str:
    return " ".join(DIGIT_WORDS[int(d)] for d in digits)


def phrase(text: str, channel: int = 0) -> dict[str, Any]:
    words = text.split()
    return {
        "text": text,
        "start_time": 0.0,
        "end_time": float(len(words)),
        "channel": channel,
        "words": [{"text": w, "start": float(i), "end": i + 0.5} for i, w in enumerate(words)],
    }


ALL = TextOptions(redact=REDACT_KINDS)


def test_checksums() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert inn_ok("7707083893") and not inn_ok("7707083894")
    assert inn_ok("500100732259") and not inn_ok("500100732258")
    assert snils_ok("11223344595") and not snils_ok("11223344596")


@pytest.mark.parametrize(
    ("spoken", "mask"),
    [
        ("номер карты " + spoken_digits("4111111111111111"), "номер карты [карта]"),
        ("мой инн " + spoken_digits("7707083893"), "мой инн [инн]"),
        ("инн " + spoken_digits("500100732259"), "инн [инн]"),
        ("снилс " + spoken_digits("11223344595"), "снилс [снилс]"),
        (
            "паспорт серия сорок пять ноль один номер сто двадцать три четыреста пятьдесят шесть",
            "паспорт серия [паспорт]",
        ),
        ("паспорт " + spoken_digits("4501123456"), "паспорт [паспорт]"),
        (
            "позвоните восемь девятьсот шестнадцать сто двадцать три сорок пять шестьдесят семь",
            "позвоните [телефон]",
        ),
        ("почта иван точка петров собака почта точка ру спасибо", "почта [почта] спасибо"),
        ("да иди ты нахуй", "да иди ты [мат]"),
        ("заебали уже", "[мат] уже"),
    ],
)
def test_masks(spoken: str, mask: str) -> None:
    shown, redactions = display_phrase(phrase(spoken), ALL)
    assert shown["display"] == mask
    assert redactions
    assert shown["text"] == spoken  # without redact_raw the spoken text stays


def test_passport_series_and_number_in_two_parts() -> None:
    spans = [Span("паспорт", 0, 0), Span("4501", 1, 2), Span("123456", 3, 5)]
    assert redact_spans(spans, ["passport"]) == [(1, 2, "[паспорт]")]


def test_a_card_failing_luhn_is_left() -> None:
    shown, redactions = display_phrase(phrase("номер " + spoken_digits("4111111111111112")), ALL)
    assert shown["display"] == "номер 4111111111111112" and not redactions


def test_innocent_words_are_not_profanity() -> None:
    for word in ("психую", "хуже", "художник", "колебания", "корабля", "мандарин", "небо", "хлеба", "ребята"):
        assert not is_profane(word), word
    for word in ("хуй", "пиздец", "ебать", "заебал", "отъебись", "блядь", "сука", "мудак", "долбоеб"):
        assert is_profane(word), word


def test_only_the_asked_kinds_are_masked() -> None:
    text = "карта " + spoken_digits("4111111111111111") + " блядь"
    shown, _ = display_phrase(phrase(text), TextOptions(redact=("profanity",)))
    assert shown["display"] == "карта 4111111111111111 [мат]"


def test_redact_raw_masks_the_spoken_words_and_times_come_from_the_words() -> None:
    text = "номер " + spoken_digits("4111111111111111") + " спасибо"
    shown, redactions = display_phrase(
        phrase(text, channel=1), TextOptions(redact=("card",), redact_raw=True)
    )
    assert shown["text"] == "номер [карта] спасибо"
    assert [w["text"] for w in shown["words"]] == ["номер", "[карта]", "спасибо"]
    assert shown["words"][1] == {"text": "[карта]", "start": 1.0, "end": 16.5}
    assert redactions[0].channel == 1 and (redactions[0].start, redactions[0].end) == (1.0, 16.5)
    assert "один" not in shown["text"] and "4111" not in str(shown)


def test_display_words_span_the_words_they_replace() -> None:
    shown, _ = display_phrase(phrase("оплата двадцать пять тысяч триста рублей"), TextOptions())
    assert shown["display"] == "оплата 25 300 рублей"
    assert shown["display_words"] == [
        {"text": "оплата", "start": 0.0, "end": 0.5},
        {"text": "25 300", "start": 1.0, "end": 4.5},
        {"text": "рублей", "start": 5.0, "end": 5.5},
    ]
    assert shown["text"] == "оплата двадцать пять тысяч триста рублей"
    assert display_text([shown, phrase("да")]) == "оплата 25 300 рублей да"


def test_normalize_false_keeps_words_but_still_masks_and_replaces() -> None:
    options = TextOptions(normalize=False, redact=("phone",), replacements={"тинькоф": "Тинькофф"})
    phone = "восемь девятьсот шестнадцать сто двадцать три сорок пять шестьдесят семь"
    text = f"банк тинькоф номер {phone} и двадцать"
    shown, _ = display_phrase(phrase(text), options)
    assert shown["display"] == "банк Тинькофф номер [телефон] и двадцать"


def test_multiword_replacement() -> None:
    shown, _ = display_phrase(
        phrase("звоню в тинь кофф банк"), TextOptions(replacements={"тинь кофф": "Тинькофф"})
    )
    assert shown["display"] == "звоню в Тинькофф банк"
    assert shown["display_words"][2] == {"text": "Тинькофф", "start": 2.0, "end": 3.5}


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ({"normalize": "maybe"}, "invalid_normalize"),
        ({"vocabulary": [1, 2]}, "invalid_vocabulary"),
        ({"vocabulary": "[oops"}, "invalid_vocabulary"),
        ({"vocabulary": ["x" * 101]}, "invalid_vocabulary"),
        ({"replacements": ["a"]}, "invalid_replacements"),
        ({"replacements": "{bad"}, "invalid_replacements"),
        ({"replacements": {"a": ""}}, "invalid_replacements"),
        ({"redact": ["card", "dna"]}, "invalid_redact"),
        ({"redact_raw": True}, "invalid_redact_raw"),
        ({"redact_audio": "yes"}, "invalid_redact_audio"),
    ],
)
def test_bad_options_name_the_option(raw: dict[str, Any], code: str) -> None:
    with pytest.raises(TextOptionError) as info:
        parse_text_options(raw)
    assert info.value.code == code


def test_options_from_form_strings_round_trip() -> None:
    options = parse_text_options(
        {
            "normalize": "false",
            "vocabulary": "Тинькофф, ипотека",
            "redact": '["phone","card"]',
            "redact_raw": "1",
        }
    )
    assert options == TextOptions(False, ("Тинькофф", "ипотека"), {}, ("card", "phone"), True, False)
    assert parse_text_options(options.to_dict()) == options
    assert TextOptions().to_dict() == {}
