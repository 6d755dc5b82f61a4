"""Every English text the console shows has a Russian entry in api/console/i18n.js (issue 15).

No browser: the console's sources are read as text. Each string and template literal of
``api/console/*.js`` and ``api/console/views/*.js`` that is shown to people is looked up the way
``t()`` looks it up: an exact entry, or a ``{placeholder}`` pattern matching the whole text. A template
is tried with a stand-in for each ``${…}`` (a short ternary of literals, ``n === 1 ? "" : "s"``, is
tried both ways; a top-level ``const`` of the file stands for itself), so "7 calls found" and
"7 call found" must both match an entry. What counts as shown:

- a literal that reads as English prose: a capitalised word, two words, or an ending "…"; unless it is
  an object key, a compared value (``=== "queued"``), the first argument of a DOM or HTTP call
  (``querySelector("…")``, ``request("…")``, ``h("tag", …)``) or the value of an attribute nobody
  reads (``class``, ``id``, ``href``…);
- whatever its shape (a lone lower-case word cannot be told from a code elsewhere), the argument of
  ``t("…")``, a child of ``h(tag, {…}, "…")``, the value of ``title``, ``placeholder``,
  ``aria-label`` and ``data-label`` (``h()`` translates those four), the label of a
  ``[code, label]`` row (``["card", "cards"]``) and the other side of a ternary whose one side is prose
  (``short ? "mono" : "Mono"``);
- a server-style message the console writes itself (``new ApiProblem(…, "code", "message")``,
  ``serverMessage: "…"``), as ``describe()`` shows it: capitalised, with a full stop;
- the fixed texts of index.html (``data-i18n``), and no English text there without it.
"""

from __future__ import annotations

import bisect
import itertools
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

CONSOLE = Path(__file__).resolve().parents[2] / "api" / "console"
SOURCES = sorted(p for p in [*CONSOLE.glob("*.js"), *CONSOLE.glob("views/*.js")] if p.name != "i18n.js")

# the text of these calls' first argument is a tag, a selector, a URL, an event, a storage key…
NON_UI_CALLS = {
    "h", "createElement", "querySelector", "querySelectorAll", "getElementById", "closest",
    "addEventListener", "removeEventListener", "setAttribute", "getAttribute", "removeAttribute",
    "getItem", "setItem", "removeItem", "request", "fetch", "upload", "download", "open", "get", "set",
    "has", "append", "add", "remove", "toggle", "contains", "split", "join", "startsWith", "endsWith",
    "includes", "indexOf", "replace", "replaceAll", "padStart", "setRequestHeader", "addModule",
    "postMessage", "AudioWorkletNode", "registerProcessor", "matchMedia", "error", "log",
}  # fmt: skip
# attributes (and object fields) whose value no one reads as text
NON_TEXT_KEYS = {
    "class", "id", "href", "for", "type", "name", "value", "accept", "autocomplete", "role", "lang",
    "method", "src", "preload", "spellcheck", "aria-labelledby", "aria-describedby", "aria-live",
    "aria-hidden", "aria-current", "Authorization", "encoding", "cache", "behavior", "block", "code",
    "format", "focusKey", "key", "job", "start", "channel", "measure", "rule", "group", "share", "index",
    "end", "seek", "status", "responseType", "download", "binaryType",
}  # fmt: skip
TEXT_KEYS = {"title", "placeholder", "aria-label", "data-label"}
# shown as they are in both languages
UNTRANSLATED = {
    "tone_…", "https://example.com/calls/1234.wav", "tone-platform keys create --tenant NAME",
    "JSONL", "CSV", "ZIP", "TXT", "SRT", "VTT", "JSON",
}  # fmt: skip


# -- a small JavaScript tokenizer: strings, templates (with their holes), regular expressions --


@dataclass
class Tok:
    kind: str  # "str", "tpl", "id", "num", "punct", "regex"
    text: str
    line: int
    parts: list[str] = field(default_factory=list)  # a template's text around its holes
    holes: list[list[Tok]] = field(default_factory=list)


REGEX_AFTER = set("(,=:[!&|?{};+-*%<>~^") | {"=>", "===", "!==", "==", "!=", "&&", "||", "??"}
REGEX_AFTER_WORDS = {"return", "typeof", "case", "do", "else", "in", "of", "new", "delete", "void", "throw"}
OPERATORS = ("===", "!==", "...", "=>", "==", "!=", "&&", "||", "??", "?.")
ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0"}


class Lexer:
    def __init__(self, src: str) -> None:
        self.src = src
        self.i = 0
        self.newlines = [m.start() for m in re.finditer("\n", src)]

    def line(self) -> int:
        return bisect.bisect_left(self.newlines, self.i) + 1

    def escape(self) -> str:
        ch = self.src[self.i + 1]
        self.i += 2
        return ESCAPES.get(ch, ch)

    def tokens(self, in_hole: bool = False) -> list[Tok]:
        out: list[Tok] = []
        depth = 0
        src = self.src
        while self.i < len(src):
            c = src[self.i]
            if c.isspace():
                self.i += 1
            elif src.startswith("//", self.i):
                end = src.find("\n", self.i)
                self.i = end if end != -1 else len(src)
            elif src.startswith("/*", self.i):
                self.i = src.index("*/", self.i) + 2
            elif c in "\"'":
                line, self.i, text = self.line(), self.i + 1, ""
                while src[self.i] != c:
                    if src[self.i] == "\\":
                        text += self.escape()
                    else:
                        text += src[self.i]
                        self.i += 1
                self.i += 1
                out.append(Tok("str", text, line))
            elif c == "`":
                out.append(self.template())
            elif c == "/" and (not out or self.regex_may_follow(out[-1])):
                start, in_class = self.i, False
                self.i += 1
                while in_class or src[self.i] != "/":
                    if src[self.i] == "\\":
                        self.i += 1
                    elif src[self.i] == "[":
                        in_class = True
                    elif src[self.i] == "]":
                        in_class = False
                    self.i += 1
                self.i += 1
                while self.i < len(src) and src[self.i].isalpha():
                    self.i += 1
                out.append(Tok("regex", src[start : self.i], self.line()))
            elif c.isalpha() or c in "_$":
                m = re.compile(r"[\w$]+").match(src, self.i)
                assert m
                out.append(Tok("id", m.group(), self.line()))
                self.i = m.end()
            elif c.isdigit():
                m = re.compile(r"[\w.]+").match(src, self.i)
                assert m
                out.append(Tok("num", m.group(), self.line()))
                self.i = m.end()
            else:
                op = next((o for o in OPERATORS if src.startswith(o, self.i)), c)
                if in_hole and op == "}" and depth == 0:
                    self.i += 1
                    return out
                depth += {"{": 1, "}": -1}.get(op, 0)
                out.append(Tok("punct", op, self.line()))
                self.i += len(op)
        return out

    def regex_may_follow(self, prev: Tok) -> bool:
        return (prev.kind == "punct" and prev.text in REGEX_AFTER) or (
            prev.kind == "id" and prev.text in REGEX_AFTER_WORDS
        )

    def template(self) -> Tok:
        tok = Tok("tpl", "", self.line())
        self.i += 1
        text = ""
        while self.src[self.i] != "`":
            if self.src[self.i] == "\\":
                text += self.escape()
            elif self.src.startswith("${", self.i):
                self.i += 2
                tok.parts.append(text)
                tok.holes.append(self.tokens(in_hole=True))
                text = ""
            else:
                text += self.src[self.i]
                self.i += 1
        self.i += 1
        tok.parts.append(text)
        tok.text = "{}".join(tok.parts)
        return tok


# -- the catalog, and t() as i18n.js does it --


def catalog() -> tuple[dict[str, str], list[re.Pattern[str]]]:
    src = (CONSOLE / "i18n.js").read_text()
    body = src[src.index("const RU = {") : src.index("\n};\n", src.index("const RU = {"))]
    keys: dict[str, str] = {}
    # an entry: a key at the object's level (an identifier or a string), its value (a string, or a
    # function for plurals: kept as "")
    for m in re.finditer(
        r'^  (?:([A-Za-z_]\w*)|"((?:[^"\\]|\\.)*)"):\s*(?:\n\s*)?(?:"((?:[^"\\]|\\.)*)")?', body, re.M
    ):
        key = m.group(1) if m.group(1) is not None else re.sub(r"\\(.)", r"\1", m.group(2))
        keys[key] = re.sub(r"\\(.)", r"\1", m.group(3) or "")
    patterns = []
    for key in keys:
        if "{" not in key:
            continue
        source = ""
        for part in re.split(r"(\{[a-z]+\})", key):
            if not re.fullmatch(r"\{[a-z]+\}", part):
                source += re.escape(part)
            else:  # {n} and {m} are numbers, as in i18n.js
                source += "(\\d+)" if part in ("{n}", "{m}") else "(.+?)"
        patterns.append(re.compile(f"^{source}$", re.S))
    return keys, patterns


KEYS, PATTERNS = catalog()


def translated(text: str) -> bool:
    if text in KEYS and "{" not in text:
        return True
    return any(p.match(text) for p in PATTERNS)


# -- which literals are shown, and as what --


def is_literal(tok: Tok) -> bool:
    return tok.kind in ("str", "tpl")


def punct(toks: list[Tok], j: int, *texts: str) -> bool:
    return 0 <= j < len(toks) and toks[j].kind == "punct" and toks[j].text in texts


def instances(tok: Tok, consts: dict[str, str]) -> list[str]:
    """The texts a literal can make: each hole a stand-in (7), both sides of a ternary of literals,
    or the file's constant it names."""
    if tok.kind == "str":
        return [tok.text]
    options = []
    for hole in tok.holes:
        if len(hole) == 1 and hole[0].kind == "id" and hole[0].text in consts:
            options.append([consts[hole[0].text]])
            continue
        level, q, colon = 0, None, None
        for j, part in enumerate(hole):
            if part.kind == "punct" and part.text in "([{":
                level += 1
            elif part.kind == "punct" and part.text in ")]}":
                level -= 1
            elif level == 0 and part.kind == "punct" and part.text == "?" and q is None:
                q = j
            elif level == 0 and part.kind == "punct" and part.text == ":" and q is not None and colon is None:
                colon = j
        if (
            q is not None
            and colon == q + 2
            and len(hole) == colon + 2
            and all(is_literal(x) for x in (hole[q + 1], hole[colon + 1]))
        ):
            options.append([*instances(hole[q + 1], consts), *instances(hole[colon + 1], consts)])
        else:
            options.append(["7"])
    out = []
    for combo in itertools.product(*options):
        text = tok.parts[0]
        for value, part in zip(combo, tok.parts[1:]):
            text += value + part
        out.append(text)
    return out


def russian(text: str) -> bool:
    """Mostly Russian already (an example in a placeholder: «agent=Иванов, region=север»)."""
    return len(re.findall(r"[А-Яа-яЁё]", text)) >= len(re.findall(r"[A-Za-z]", text))


def prose(text: str) -> bool:
    if not re.search(r"[A-Za-z]{2,}", text) or russian(text):
        return False
    if re.match(r"^(/|#|\.|\w+://|[a-z]+/[a-z*+.-]+)", text) or "=>" in text:
        return False
    if re.fullmatch(r"[A-Z][a-z]+(?:[A-Z][a-z]+)+", text):  # AbortError, NotAllowedError
        return False
    if re.fullmatch(
        r"[a-z][a-z0-9]*(-[a-z0-9]+)+( [a-z][a-z0-9-]*)*|([a-z][a-z0-9-]* )+[a-z]+-[a-z0-9-]+", text
    ):
        return False  # CSS classes: "error-box compact", "banner banner-error"
    return bool(
        re.search(r"[A-Za-z]{2,}[,.:;!?…)]? +[(«“]?[A-Za-z]", text)
        or re.match(r"^\W*[A-Z][a-z]", text)
        or text.rstrip().endswith("…")
    )


def detail(message: str) -> str:
    """A server-style message as describe() shows it."""
    message = message.strip()
    message = message[0].upper() + message[1:]
    return message if re.search(r"[.!?…]$", message) else message + "."


def pair_label(toks: list[Tok], k: int) -> bool:
    """toks[k] is the label of a [code, label(, …)] row of a table: [["0", "Agent"], ["1", "Client"]]."""
    if not (punct(toks, k - 1, ",") and toks[k - 2].kind == "str" and punct(toks, k - 3, "[")):
        return False
    if not punct(toks, k - 4, "[", ","):
        return False
    j, size = k + 1, 2
    while j < len(toks) and not punct(toks, j, "]"):
        size += punct(toks, j, ",")
        j += 1
    return size <= 3 and re.fullmatch(r"[a-z0-9_]*", toks[k - 2].text) is not None


def h_child(toks: list[Tok], k: int) -> bool:
    """toks[k] is a child of h("tag", {…}, …, toks[k]) (after literal children only)."""
    i = k - 1
    while i >= 2 and punct(toks, i, ",") and toks[i - 1].kind == "str":
        i -= 2
    if not (punct(toks, i, ",") and punct(toks, i - 1, "}")):
        return False
    depth, j = 0, i - 1
    while j >= 0:
        depth += punct(toks, j, "}") - punct(toks, j, "{")
        if depth == 0:
            break
        j -= 1
    return (
        j >= 4
        and punct(toks, j - 1, ",")
        and toks[j - 2].kind == "str"
        and punct(toks, j - 3, "(")
        and toks[j - 4].kind == "id"
        and toks[j - 4].text == "h"
    )


@dataclass
class Shown:
    where: str
    text: str


def shown_texts(path: Path) -> list[Shown]:
    toks = Lexer(path.read_text()).tokens()
    consts = {  # const NAME = "text";
        toks[k + 1].text: toks[k + 3].text
        for k in range(len(toks) - 4)
        if (toks[k].text, toks[k + 2].text, toks[k + 3].kind, toks[k + 4].text) == ("const", "=", "str", ";")
    }
    out = []

    def at(j: int) -> str:
        """An operator or a name as it is, a string quoted, anything else empty."""
        if not 0 <= j < len(toks) or toks[j].kind not in ("punct", "id", "str"):
            return ""
        return f'"{toks[j].text}"' if toks[j].kind == "str" else toks[j].text

    def ternary_sibling(k: int) -> Tok | None:
        if at(k - 1) == ":" and at(k - 3) == "?" and is_literal(toks[k - 2]):
            return toks[k - 2]
        if at(k - 1) == "?" and at(k + 1) == ":" and is_literal(toks[k + 2]):
            return toks[k + 2]
        return None

    for k, tok in enumerate(toks):
        if not is_literal(tok):
            continue
        prev, nxt = at(k - 1), at(k + 1)
        if prev == "=" and at(k - 3) == "const" and at(k - 2) in consts:
            continue  # a constant: checked where a template uses it
        key = at(k - 2).strip('"') if prev == ":" and at(k - 3) in ("{", ",") else None
        message = key == "serverMessage" or (
            prev == "," and at(k - 3) == "," and at(k - 5) == "(" and at(k - 6) == "ApiProblem"
        )
        sibling = ternary_sibling(k)
        forced = (
            message
            or key in TEXT_KEYS
            or (prev == "(" and at(k - 2) == "t")
            or h_child(toks, k)
            or pair_label(toks, k)
            or (sibling is not None and any(prose(x) for x in instances(sibling, consts)))
        )
        if not forced:
            if nxt == ":" and prev in ("{", ","):  # an object's key
                continue
            if prev in ("===", "!==", "==", "!=") or nxt in ("===", "!==", "==", "!=", "in"):
                continue
            if prev in ("from", "import", "case") or (prev == "[" and nxt == "]"):
                continue
            if prev == "(" and at(k - 2) in NON_UI_CALLS:
                continue
            if key in NON_TEXT_KEYS:
                continue
        for text in instances(tok, consts):
            if text in UNTRANSLATED or russian(text) or not re.search(r"[A-Za-z]", text):
                continue
            if forced or prose(text):
                out.append(
                    Shown(f"{path.relative_to(CONSOLE)}:{tok.line}", detail(text) if message else text)
                )
    return out


class FixedTexts(HTMLParser):
    """index.html's texts: the data-i18n ones, and any other English text outside <head>."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, bool]] = []
        self.marked: list[str] = []
        self.labels: list[str] = []
        self.unmarked: list[str] = []
        self.noscript: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "data-i18n-label" in a:
            self.labels.append(a.get("aria-label") or "")
        if tag not in ("img", "meta", "link", "input", "br"):
            self.stack.append((tag, "data-i18n" in a))

    def handle_endtag(self, tag: str) -> None:
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        text = data.strip()
        if not text or any(t in ("head", "script", "style") for t, _ in self.stack):
            return
        if any(t == "noscript" for t, _ in self.stack):  # no script runs to translate it: both languages
            self.noscript.append(text)
            return
        if self.stack and self.stack[-1][1]:
            self.marked.append(text)
        elif re.search(r"[A-Za-z]{2,}", text) and text != "tone-platform" and not russian(text):
            self.unmarked.append(text)


# -- the tests --


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(CONSOLE)))
def test_every_english_text_of_the_console_has_a_russian_entry(path: Path) -> None:
    missing = sorted({f"{s.where}: {s.text!r}" for s in shown_texts(path) if not translated(s.text)})
    assert not missing, "no Russian in api/console/i18n.js for:\n" + "\n".join(missing)


def test_the_check_sees_the_texts_it_is_meant_to() -> None:
    """The extraction itself finds texts of every kind (else the test above would check nothing)."""
    found = {s.text for p in SOURCES for s in shown_texts(p)}
    for text in (
        "Said by",  # a child of h()
        "to",  # a child of h(), one lower-case word
        "s",  # a placeholder
        "Searching…",  # textContent
        "7+ calls found",  # a template, each side of its ternaries
        "7 call found",
        "mono",  # a ternary's other side
        "cards",  # the label of a [code, label] row
        "Talk share: agent 7, client 7",  # an aria-label
        "Metadata filters are key=value, separated by commas.",  # a serverMessage
        "Give an http:// or https:// address.",  # an ApiProblem's message, as describe() shows it
        "Type a word to search for (words like «и», «на» alone are not searched).",  # describe()'s table
        "Unsupported format: this file is not audio the platform can read. Try WAV (PCM, µ-law, A-law, "
        "GSM), FLAC, MP3, Ogg Vorbis or Opus, M4A/AAC, AMR or WMA.",  # a template with a constant
    ):
        assert text in found, text
    for code in ("search-q", "queued", "error-box compact", "badge badge-7", "Content-Type", "AbortError"):
        assert code not in found, code


def test_index_html_marks_its_texts_and_each_has_a_russian_entry() -> None:
    page = FixedTexts()
    page.feed((CONSOLE / "index.html").read_text())
    assert page.marked and page.labels
    missing = [text for text in page.marked + page.labels if not translated(text)]
    assert not missing, f"no Russian in api/console/i18n.js for index.html's {missing}"
    assert not page.unmarked, (
        f"index.html text without data-i18n (shown in English to everyone): {page.unmarked}"
    )
    assert any(russian(text) for text in page.noscript) and any(not russian(text) for text in page.noscript)


def test_the_catalogs_placeholders_are_the_ones_of_its_keys() -> None:
    """A Russian text uses only the {names} its English key has (else "{x}" shows as is)."""
    wrong = {
        key: value
        for key, value in KEYS.items()
        if not set(re.findall(r"\{([a-z]+)\}", value)) <= set(re.findall(r"\{([a-z]+)\}", key))
    }
    assert not wrong, wrong
