"""Score Russian ITN candidates on the project's spoken-form test set (``shared/text/itn_cases.tsv``).

Run it with the Python that has the candidate installed (the project's own grammar needs nothing
but this repository on ``PYTHONPATH``)::

    python -m shared.dev.itn_eval ours nemo itntext damga rus2num [--show-misses]

Prints, per candidate, the load time, exact matches (whole phrase, whitespace collapsed), matches
when spaces are ignored (so ``25300`` counts for ``25 300`` and ``7,5%`` for ``7,5 %``), per category,
and the mean time per phrase after loading.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

CASES = Path(__file__).resolve().parents[1] / "text" / "itn_cases.tsv"


def load_cases(path: Path = CASES) -> list[tuple[str, str, str]]:
    """``(category, spoken, expected)`` for every line of the test set."""
    cases = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            category, spoken, expected = line.split("\t")
            cases.append((category, spoken, expected))
    return cases


def _ours() -> Callable[[str], str]:
    from shared.text.itn import normalize_text

    return normalize_text


def _nemo() -> Callable[[str], str]:
    from nemo_text_processing.inverse_text_normalization.inverse_normalize import InverseNormalizer

    cache = Path(os.environ.get("NEMO_CACHE", Path.home() / ".cache" / "nemo-itn-ru"))
    cache.mkdir(parents=True, exist_ok=True)
    normalizer = InverseNormalizer(lang="ru", cache_dir=str(cache))
    return lambda text: str(normalizer.inverse_normalize(text, verbose=False))


def _itntext() -> Callable[[str], str]:
    from itntext import Normalizer

    normalizer = Normalizer(lang="ru", operator="itn")
    return lambda text: str(normalizer.normalize(text))


def _damga() -> Callable[[str], str]:
    from damga import Normalizer

    normalizer = Normalizer(mode="itn", lang="ru")
    return lambda text: str(normalizer.normalize(text))


def _rus2num() -> Callable[[str], str]:
    from rus2num import Rus2Num

    extractor = Rus2Num()
    return lambda text: str(extractor(text))


CANDIDATES: dict[str, Callable[[], Callable[[str], str]]] = {
    "ours": _ours,
    "nemo": _nemo,
    "itntext": _itntext,
    "damga": _damga,
    "rus2num": _rus2num,
}


def _same(a: str, b: str, *, spaces: bool) -> bool:
    if spaces:
        return " ".join(a.split()) == " ".join(b.split())
    return "".join(a.split()) == "".join(b.split())


def evaluate(name: str, show_misses: bool = False) -> None:
    cases = load_cases()
    started = time.perf_counter()
    try:
        convert = CANDIDATES[name]()
        convert("двадцать пять")
    except Exception as exc:
        print(f"{name}: does not load: {type(exc).__name__}: {exc}")
        return
    load_s = time.perf_counter() - started
    exact = loose = 0
    per_category: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    misses = []
    started = time.perf_counter()
    for category, spoken, expected in cases:
        try:
            got = convert(spoken)
        except Exception as exc:
            got = f"<{type(exc).__name__}>"
        ok = _same(got, expected, spaces=True)
        exact += ok
        loose += _same(got, expected, spaces=False)
        per_category[category][0] += ok
        per_category[category][1] += 1
        if not ok:
            misses.append((category, spoken, expected, got))
    per_phrase_ms = (time.perf_counter() - started) / len(cases) * 1000
    cats = ", ".join(f"{c} {ok}/{total}" for c, (ok, total) in per_category.items())
    print(
        f"{name}: exact {exact}/{len(cases)} ({exact / len(cases):.0%}), "
        f"ignoring spaces {loose}/{len(cases)}, "
        f"load {load_s:.2f} s, {per_phrase_ms:.3f} ms per phrase\n  {cats}"
    )
    if show_misses:
        for category, spoken, expected, got in misses:
            print(f"  [{category}] {spoken!r}: want {expected!r}, got {got!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", nargs="*", default=["ours"], choices=sorted(CANDIDATES))
    parser.add_argument("--show-misses", action="store_true")
    args = parser.parse_args(argv)
    for name in args.candidates:
        evaluate(name, args.show_misses)
    return 0


if __name__ == "__main__":
    sys.exit(main())
