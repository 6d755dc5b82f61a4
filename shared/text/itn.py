"""Inverse text normalization for Russian: T-one's spoken words → the written form, per word span.

The recognizer writes lowercase words («двадцать пять тысяч триста рублей»); this turns numbers into
digits (``25 300 рублей``) while remembering which spoken words each written token replaced, so
that the times of the words survive (a span that replaced several words starts at the first and
ends at the last of them).

It is a small hand-written grammar over a generated lexicon of every case and gender of the
Russian numerals (chosen over nemo-text-processing, itntext, damga and rus2num by the evaluation
in ``shared/dev/itn_eval.py``; the table is in the README). The rules, in order:

* numbers compose as spoken: [hundreds][tens][units] with тысяча/миллион/миллиард scales;
  a word that cannot continue the number starts a new one («двадцать три сорок пять» is 23, 45);
* two or more numbers in a row form one digit sequence when they give 3 digits or more
  (contract, card and account numbers: «двадцать три сорок пять» → ``2345``); 11 digits starting
  with 7/8 (``8 916 123-45-67``, with «плюс» → ``+7 …``), 10 starting with 9 (``916 123-45-67``) and
  7 spoken as 3-2-2 (``123-45-67``) are written as phone numbers;
* after в/к/до/с/после/около/на, an hour 0–23 and two-digit minutes are a time (``в 14:30``),
  as is «H часов M минут»;
* «A и|целых B десятых|сотых|тысячных» is a decimal (``7,5``), «полтора» is 1,5, «A с половиной»
  is A,5 (``2,5 %``, ``3500 рублей``; below ten without a unit it stays words like any number);
  without the whole part «три десятых» is ``0,3`` and «пять сотых» ``0,05``;
* a common fraction spoken with an ordinal denominator that agrees with its numerator (feminine
  singular after «одна»/«одну»/«одной», plural after the others) is written ``N/D``: «одна вторая» →
  ``1/2``, «две третьих процента» → ``2/3 %``, «три целых одна четвертая» → ``3 1/4``; masculine
  «два»/«один» do not make one («два пятых класса»), and a compound ordinal wins («двадцать пятых»
  is ``25-х``); the everyday nouns «половина», «треть», «четверть» stay words («три четверти часа»,
  «две трети клиентов», «в первой четверти»);
* «процент» in any case after a number becomes ``%`` (``7,5 %``);
* an ordinal before a month is a date (``15 марта``), before «год» in the singular a year
  (``2024 года``); other ordinals ≥ 10 get the short case ending (``23-го``, ``45-м``, ``21-я``);
* a lone number below ten stays a word («одну минуточку», «два раза», «третьего этажа»,
  «первый раз») unless a unit follows it (рублей, копеек, долларов, евро, процентов) or it is
  part of a date, a time, a decimal, a digit sequence or a range «с/от … до …» whose other end
  is written in digits; «раз» is never a number;
* numbers of five digits or more are grouped by threes with spaces (``25 300``), four-digit ones
  are not (``2345``, ``1500``), as Russian typography writes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Span", "normalize_text", "normalize_words"]


@dataclass(frozen=True)
class Span:
    """One written token and the spoken words it replaces: ``words[first:last + 1]``."""

    text: str
    first: int
    last: int


# -- the lexicon ------------------------------------------------------------------------------------

_CARDINALS: dict[str, tuple[int, str]] = {}  # word -> (value, kind)
_ORDINALS: dict[str, tuple[int, str, str]] = {}  # word -> (value, kind, written ending)


def _card(value: int, kind: str, forms: str) -> None:
    for form in forms.split():
        _CARDINALS[form] = (value, kind)
        if "ё" in form:
            _CARDINALS[form.replace("ё", "е")] = (value, kind)


_card(0, "zero", "ноль нуль ноля нуля нолю нулю нолём нолем нулём нулем")
_card(1, "unit", "один одна одно одного одной одному одним одном одну одни одних одними")
_card(2, "unit", "два две двух двум двумя")
_card(3, "unit", "три трёх трём тремя")
_card(4, "unit", "четыре четырёх четырём четырьмя")
for _v, _w in enumerate(("пять", "шесть", "семь"), 5):
    _card(_v, "unit", f"{_w} {_w[:-1]}и {_w[:-1]}ью")
_card(8, "unit", "восемь восьми восемью восьмью")
_card(9, "unit", "девять девяти девятью")
for _v, _w in enumerate(
    [
        "десять",
        "одиннадцать",
        "двенадцать",
        "тринадцать",
        "четырнадцать",
        "пятнадцать",
        "шестнадцать",
        "семнадцать",
        "восемнадцать",
        "девятнадцать",
    ],
    10,
):
    _card(_v, "teen", f"{_w} {_w[:-1]}и {_w[:-1]}ью")
_card(20, "ten", "двадцать двадцати двадцатью")
_card(30, "ten", "тридцать тридцати тридцатью")
_card(40, "ten", "сорок сорока")
_card(50, "ten", "пятьдесят пятидесяти пятьюдесятью")
_card(60, "ten", "шестьдесят шестидесяти шестьюдесятью")
_card(70, "ten", "семьдесят семидесяти семьюдесятью")
_card(80, "ten", "восемьдесят восьмидесяти восемьюдесятью")
_card(90, "ten", "девяносто девяноста")
_card(100, "hundred", "сто ста")
_card(200, "hundred", "двести двухсот двумстам двумястами двухстах")
_card(300, "hundred", "триста трёхсот трёмстам тремстам тремястами трёхстах")
_card(400, "hundred", "четыреста четырёхсот четырёмстам четыремстам четырьмястами четырёхстах")
for _v, _w in ((500, "пят"), (600, "шест"), (700, "сем"), (900, "девят")):
    _card(_v, "hundred", f"{_w}ьсот {_w}исот {_w}истам {_w}ьюстами {_w}истах")
_card(800, "hundred", "восемьсот восьмисот восьмистам восемьюстами восьмьюстами восьмистах")
_card(1000, "scale", "тысяча тысячи тысяч тысяче тысячу тысячей тысячью тысячам тысячами тысячах")
for _v, _w in ((10**6, "миллион"), (10**9, "миллиард")):
    _card(_v, "scale", " ".join(_w + e for e in ("", "а", "у", "ом", "е", "ы", "ов", "ам", "ами", "ах")))
_card(15, "half", "полтора полторы полутора")  # 1.5, kept in tenths

_HARD_ENDINGS = {
    "ый": "й",
    "ой": "й",
    "ая": "я",
    "ое": "е",
    "ого": "го",
    "ому": "му",
    "ым": "м",
    "ом": "м",
    "ую": "ю",
    "ые": "е",
    "ых": "х",
    "ыми": "ми",
}
_THIRD = {
    "третий": "й",
    "третья": "я",
    "третье": "е",
    "третьего": "го",
    "третьему": "му",
    "третьим": "м",
    "третьем": "м",
    "третью": "ю",
    "третьи": "и",
    "третьих": "х",
    "третьими": "ми",
    "третьей": "й",
}


def _ord(value: int, kind: str, stems: str) -> None:
    for stem in stems.split():
        for variant in {stem, stem.replace("ё", "е")}:
            for ending, written in _HARD_ENDINGS.items():
                _ORDINALS[variant + ending] = (value, kind, written)


_ord(0, "zero", "нулев")
_ord(1, "unit", "перв")
_ord(2, "unit", "втор")
for _form, _ending in _THIRD.items():
    _ORDINALS[_form] = (3, "unit", _ending)
for _v, _stem in enumerate(("четвёрт", "пят", "шест", "седьм", "восьм", "девят"), 4):
    _ord(_v, "unit", _stem)
for _v, _stem in enumerate(
    [
        "десят",
        "одиннадцат",
        "двенадцат",
        "тринадцат",
        "четырнадцат",
        "пятнадцат",
        "шестнадцат",
        "семнадцат",
        "восемнадцат",
        "девятнадцат",
    ],
    10,
):
    _ord(_v, "teen", _stem)
for _v, _stem in enumerate(
    ["двадцат", "тридцат", "сороков", "пятидесят", "шестидесят", "семидесят", "восьмидесят", "девяност"], 2
):
    _ord(_v * 10, "ten", _stem)
for _v, _stem in enumerate(
    ["сот", "двухсот", "трёхсот", "четырёхсот", "пятисот", "шестисот", "семисот", "восьмисот", "девятисот"], 1
):
    _ord(_v * 100, "hundred", _stem)
_ord(1000, "scale", "тысячн")
_ord(10**6, "scale", "миллионн")
for _v, _stem in enumerate(("двухтысячн", "трёхтысячн"), 2):
    _ord(_v * 1000, "big", _stem)

_MONTHS = frozenset(
    [
        "января",
        "февраля",
        "марта",
        "апреля",
        "мая",
        "июня",
        "июля",
        "августа",
        "сентября",
        "октября",
        "ноября",
        "декабря",
    ]
)
_YEAR = frozenset({"год", "года", "году", "годом"})
_UNIT_PREFIXES = ("процент", "рубл", "копе", "доллар", "евро")
_TIME_PREPS = frozenset({"в", "во", "к", "ко", "до", "с", "со", "после", "около", "на", "от"})
_RANGE_FROM = frozenset({"с", "со", "от"})
_DECIMAL_SEP = frozenset({"и", "целая", "целых", "целой", "целую", "целыми"})
_DENOMINATORS = {
    **dict.fromkeys(("десятая", "десятых", "десятой", "десятую", "десятыми"), 1),
    **dict.fromkeys(("сотая", "сотых", "сотой", "сотую", "сотыми"), 2),
    **dict.fromkeys(("тысячная", "тысячных", "тысячной", "тысячную", "тысячными"), 3),
}
# a common fraction's denominator agrees with its numerator: «одна вторая», «одной второй», «одну
# вторую» (feminine singular after «одна»), «две третьих», «двум третьим», «тремя пятыми» (plural)
_ONE_ENDINGS = {
    "одна": ("ая", "ья"),
    "одну": ("ую", "ью"),
    "одной": ("ой", "ей"),
    "одною": ("ой", "ей", "ою", "ею"),
}
_PLURAL_ENDINGS = ("ых", "их", "ым", "им", "ыми", "ими")
_HOURS = frozenset({"час", "часа", "часов"})
_MINUTES = frozenset({"минута", "минуты", "минут", "минуту"})


def _is_unit(word: str | None) -> bool:
    return word is not None and word.startswith(_UNIT_PREFIXES)


# -- numbers ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Number:
    first: int
    last: int
    tenths: int  # the value × 10 (полтора is 15)
    ordinal: str | None  # the written ending of an ordinal («го», «м», …); None for cardinals
    two_digit: bool  # spoken with a ten or a teen (a clock's minutes)

    @property
    def whole(self) -> bool:
        return self.tenths % 10 == 0

    @property
    def value(self) -> int:
        return self.tenths // 10

    @property
    def digits(self) -> str:
        return str(self.value)


def _parse(words: Sequence[str], i: int, *, ordinals: bool = True) -> _Number | None:
    """The longest number spoken from ``words[i]`` on, or None when ``words[i]`` is not a numeral."""
    total = 0  # finished scales
    seg = 0  # the part below the next scale, × 10
    kinds: set[str] = set()
    last_scale = 10**12
    ending: str | None = None
    two_digit = False
    j = i
    while j < len(words):
        word = words[j]
        if word == "с" and j > i and kinds and "half" not in kinds and j + 1 < len(words):
            if words[j + 1] != "половиной":
                break
            seg += 5  # «два с половиной» is 2,5; only a scale may follow («… тысячи»)
            kinds.add("half")
            j += 2
            continue
        if word in _CARDINALS:
            value, kind = _CARDINALS[word]
            written = None
        elif ordinals and word in _ORDINALS:
            value, kind, written = _ORDINALS[word]
        else:
            break
        empty = j == i
        if kind in ("zero", "big"):
            ok = empty
        elif kind == "half" or kind == "hundred":
            ok = not kinds
        elif kind in ("ten", "teen"):
            ok = not kinds & {"ten", "teen", "unit", "half"}
        elif kind == "unit":
            ok = not kinds & {"unit", "teen", "half"}
        else:  # scale
            ok = value < last_scale and (bool(kinds) or total == 0)
        if not ok or "zero" in kinds or "big" in kinds:
            break
        if kind == "scale":
            total += max(seg, 10) * value
            seg, kinds, last_scale = 0, set(), value
        else:
            seg += value if kind == "half" else value * 10
            kinds.add(kind)
            two_digit = two_digit or kind in ("ten", "teen")
        j += 1
        if written is not None:
            ending = written
            break
    if j == i:
        return None
    return _Number(i, j - 1, total + seg, ending, two_digit and total == 0)


def _grouped(value: int) -> str:
    text = str(value)
    if len(text) < 5:
        return text
    return f"{value:,}".replace(",", " ")


def _written(number: _Number) -> str:
    if number.whole:
        return _grouped(number.value)
    return f"{_grouped(number.value)},{number.tenths % 10}"


def _phone(digits: str, sizes: list[int], plus: bool) -> str | None:
    if len(digits) == 11 and digits[0] in "78":
        text = f"{digits[0]} {digits[1:4]} {digits[4:7]}-{digits[7:9]}-{digits[9:]}"
        return "+" + text if plus else text
    if len(digits) == 10 and digits[0] == "9" and not plus:
        return f"{digits[:3]} {digits[3:6]}-{digits[6:8]}-{digits[8:]}"
    if len(digits) == 7 and sizes == [3, 2, 2] and not plus:
        return f"{digits[:3]}-{digits[3:5]}-{digits[5:]}"
    return None


def _fraction(words: Sequence[str], i: int) -> tuple[str, int, bool] | None:
    """``(written, last word, decimal?)`` when ``words[i:]`` start with a fraction spoken with an
    ordinal denominator: «три десятых» → ``0,3``, «пять сотых» → ``0,05``, «одна вторая» → ``1/2``,
    «две третьих» → ``2/3``. The numerator must agree (feminine «одна»/«одну»/«одной» + a singular
    denominator, else a plural one; «два» is masculine, so «два пятых класса» is not one), and a
    compound ordinal wins («двадцать пятых» is the 25th, «две тысячи десятых» the 2010s)."""
    numerator = _parse(words, i, ordinals=False)
    if numerator is None or not numerator.whole or numerator.value < 1:
        return None
    k = numerator.last + 1
    if k >= len(words):
        return None
    one = numerator.value % 10 == 1 and numerator.value % 100 != 11
    last_numeral = words[numerator.last]
    if one:
        endings = _ONE_ENDINGS.get(last_numeral)
        if endings is None:
            return None
    elif last_numeral == "два":
        return None
    else:
        endings = _PLURAL_ENDINGS
    ordinal = _parse(words, i)
    if ordinal is not None and ordinal.last >= k and not words[k].startswith("тысячн"):
        return None  # the numerator and the "denominator" are one compound ordinal
    if words[k] in _DENOMINATORS:
        if not words[k].endswith(endings):
            return None
        width = _DENOMINATORS[words[k]]
        whole, part = divmod(numerator.value, 10**width)
        return f"{_grouped(whole)},{str(part).zfill(width)}", k, True
    denominator = _parse(words, k)
    if (
        denominator is None
        or denominator.ordinal is None
        or not 2 <= denominator.value <= 999
        or not words[denominator.last].endswith(endings)
    ):
        return None
    return f"{numerator.value}/{denominator.value}", denominator.last, False


# -- the pass over a phrase -------------------------------------------------------------------------


def normalize_words(words: Sequence[str]) -> list[Span]:
    """The written form of a phrase as spans over its spoken ``words`` (lowercase, as T-one writes)."""
    out: list[Span] = []
    n = len(words)

    def word(k: int) -> str | None:
        return words[k] if 0 <= k < n else None

    force_digits_at = -1  # the start of a number that must be digits (the far end of a range)
    i = 0
    while i < n:
        number = _parse(words, i)
        if number is None:
            out.append(Span(words[i], i, i))
            i += 1
            continue
        prev = word(i - 1)
        after = number.last + 1

        # a fraction without a whole part: «три десятых», «одна вторая», «две третьих»
        fraction = _fraction(words, i)
        if fraction is not None:
            i = _emit_with_unit(out, words, fraction[0], i, fraction[1])
            continue

        # a decimal: A и|целых B десятых|сотых|тысячных; a mixed number: A целых B/C
        if number.ordinal is None and number.whole and word(after) in _DECIMAL_SEP:
            frac = _parse(words, after + 1, ordinals=False)
            if frac is not None and frac.whole and word(frac.last + 1) in _DENOMINATORS:
                width = _DENOMINATORS[words[frac.last + 1]]
                if len(frac.digits) <= width:
                    decimal = f"{_grouped(number.value)},{frac.digits.zfill(width)}"
                    i = _emit_with_unit(out, words, decimal, i, frac.last + 1)
                    continue
            common = _fraction(words, after + 1)
            if common is not None and not common[2]:
                i = _emit_with_unit(out, words, f"{_grouped(number.value)} {common[0]}", i, common[1])
                continue

        # a clock time spoken as «H часов M минут»
        if number.ordinal is None and number.whole and number.value <= 23 and word(after) in _HOURS:
            minutes = _parse(words, after + 1, ordinals=False)
            if (
                minutes is not None
                and minutes.whole
                and minutes.value <= 59
                and word(minutes.last + 1) in _MINUTES
            ):
                out.append(Span(f"{number.value}:{minutes.value:02d}", i, minutes.last + 1))
                i = minutes.last + 2
                continue

        # several numbers in a row: a time, a phone number or a digit sequence
        run = [number]
        while run[-1].ordinal is None and run[-1].whole:
            nxt = _parse(words, run[-1].last + 1)
            if nxt is None or nxt.ordinal is not None or not nxt.whole or _fraction(words, nxt.first):
                break
            run.append(nxt)
        if len(run) >= 2:
            time = _clock(run) if prev in _TIME_PREPS else None
            if time is not None:
                text, used = time
                out.append(Span(text, i, run[used - 1].last))
                i = run[used - 1].last + 1
                continue
            digits = "".join(x.digits for x in run)
            if len(digits) >= 3:
                plus = prev == "плюс"
                phone = _phone(digits, [len(x.digits) for x in run], plus)
                if phone is not None and plus:
                    out.pop()
                    out.append(Span(phone, i - 1, run[-1].last))
                else:
                    out.append(Span(phone or digits, i, run[-1].last))
                i = run[-1].last + 1
                continue

        # one number
        nxt_word = word(after)
        if number.ordinal is not None:
            if nxt_word in _MONTHS and 1 <= number.value <= 31:
                shown: str | None = str(number.value)
            elif nxt_word in _YEAR:
                shown = str(number.value)
            elif number.value >= 10:
                shown = f"{number.value}-{number.ordinal}"
            else:
                shown = None
            out.append(Span(shown, i, number.last) if shown else Span(words[i], i, i))
            i = number.last + 1 if shown else i + 1
            continue
        small = number.tenths < 100
        forced = i == force_digits_at
        if prev in _RANGE_FROM and nxt_word == "до":
            far = _parse(words, after + 1, ordinals=False)
            if far is not None and (far.tenths >= 100 or not small):
                forced = True
                force_digits_at = far.first
        if not small or forced or _is_unit(nxt_word):
            i = _emit_with_unit(out, words, _written(number), i, number.last)
            continue
        out.extend(Span(words[k], k, k) for k in range(i, number.last + 1))
        i = number.last + 1
    return out


def _emit_with_unit(out: list[Span], words: Sequence[str], text: str, first: int, last: int) -> int:
    """Append a number (and «%» for a following «процент…»); returns the next word's index."""
    out.append(Span(text, first, last))
    if last + 1 < len(words) and words[last + 1].startswith("процент"):
        out.append(Span("%", last + 1, last + 1))
        return last + 2
    return last + 1


def _clock(run: list[_Number]) -> tuple[str, int] | None:
    """``(H:MM, numbers used)`` when a run starts with an hour and minutes, else None."""
    hour = run[0]
    if hour.value > 23:
        return None
    second = run[1]
    if second.value == 0 and len(run) >= 3 and run[2].value <= 9:
        return f"{hour.value}:0{run[2].value}", 3
    if second.two_digit and 10 <= second.value <= 59:
        return f"{hour.value}:{second.value}", 2
    return None


def normalize_text(text: str) -> str:
    """The written form of a phrase given as text (words separated by spaces)."""
    words = text.split()
    return " ".join(span.text for span in normalize_words(words))
