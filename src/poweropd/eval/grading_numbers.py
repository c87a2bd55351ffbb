"""Number forms that math-verify's LaTeX parser misreads in a bare answer, rewritten before it parses them.

``readings(answer)`` lists the LaTeX strings an answer may mean, most likely first; an ambiguous form keeps each
meaning ("1,22" is the pair {1, 22} or the decimal 1.22) and a malformed one has none ("4 4/0"). Pure string
functions: grading.py parses and compares.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_SPACES = re.compile(r"[\u00a0\u2009\u202f]|(?<=\d)(?:\\[,;: ]|~|\\thinspace\s*)(?=\d)")
_CURRENCY = r"(?:\\?\$\s*)?"
_PERCENT = r"\s*(?:\\%|percent(?:age)?|pct)"


def _mixed(m: re.Match) -> list[str]:
    sign, whole, numerator, denominator, percent = m.groups()
    num, den = int(numerator), int(denominator)
    if not 0 <= num < den:  # "11 6/6", "4 4/0": not a mixed number, and no other meaning either
        return []
    value = f"{sign}\\frac{{{int(re.sub(r'[ ,]', '', whole)) * den + num}}}{{{den}}}"
    return [value + ("\\%" if percent else "")]


@dataclass(frozen=True)
class NumberForm:
    """One notation: the whole (normalized) answer must match ``pattern``; ``rewrite`` gives its readings."""

    name: str
    pattern: re.Pattern
    rewrite: Callable[[re.Match], list[str]]


# First match wins; an answer matching none is read as it stands.
NUMBER_FORMS = (
    # "4 4/9" = 40/9 (math-verify reads 8/9); "-1 000 4/9", "4 4/9%"; "4 4/0", "11 6/6" mean nothing.
    NumberForm(
        "mixed number",
        re.compile(rf"^([+-]?)(\d{{1,3}}(?:[ ,]\d{{3}})+|\d+) (\d+)/(\d+)({_PERCENT})?$"),
        _mixed,
    ),
    # "7,425,000", "1 000", "\$1,000.99" (a first group of 1-3 digits, not 0; so not "0,111", not "32, 349").
    NumberForm(
        "thousands separators",
        re.compile(rf"^{_CURRENCY}([+-]?[1-9]\d{{0,2}})((?:,\d{{3}})+|(?: \d{{3}})+)(\.\d+)?$"),
        lambda m: [m[1] + re.sub(r"[ ,]", "", m[2]) + (m[3] or "")],
    ),
    # "1000,99", "0,111": a comma that cannot separate thousands; "1,22" may still be the pair {1, 22}.
    NumberForm(
        "decimal comma",
        re.compile(rf"^{_CURRENCY}([+-]?\d+),(\d+)$"),
        lambda m: [f"{m[1]},{m[2]}", f"{m[1]}.{m[2]}"],
    ),
    # "4.5e33": math-verify reads 4.5·e·33.
    NumberForm(
        "scientific notation",
        re.compile(r"^([+-]?\d+(?:\.\d+)?)[eE]([+-]?\d+)$"),
        lambda m: [f"{m[1]} \\times 10^{{{m[2]}}}"],
    ),
    # "45\%" is 0.45, or 45 where the gold is the number of percent.
    NumberForm(
        "percent",
        re.compile(rf"^([+-]?\d+(?:\.\d+)?){_PERCENT}$"),
        lambda m: [f"{m[1]}\\%", m[1]],
    ),
    # "C. x = 42", "(B) 7": a multiple-choice letter leads the answer.
    NumberForm(
        "choice letter",
        re.compile(r"^\(?([A-E])(?:\)|[.:])\s+\S.*$"),
        lambda m: [m[1], m[0]],
    ),
    # "odd" is the word, not o·d·d; the product stays a reading.
    NumberForm(
        "word",
        re.compile(r"^[A-Za-z]{2,}$"),
        lambda m: [f"\\text{{{m[0]}}}", m[0]],
    ),
)


def _normalized(answer: str) -> str:
    # "32,\!348", "11,\! 111", "1{,}000", "1\,000" and unicode thin spaces all separate digit groups.
    answer = re.sub(r",\\!\s*", ",", answer).replace("\\!", "").replace("{,}", ",")
    # "45%" is written "45\%", so one pattern per form covers both.
    answer = re.sub(r"(?<!\\)%", r"\\%", answer)
    return _SPACES.sub(" ", answer).strip()


def readings(answer: str) -> list[str]:
    """The LaTeX an answer may mean, most likely first; empty when its number form is malformed."""
    text = _normalized(answer)
    for form in NUMBER_FORMS:
        m = form.pattern.match(text)
        if m:
            return form.rewrite(m)
    return [text]


def top_level_parts(text: str) -> int:
    """Number of comma-separated parts outside brackets: "a, (b, c)" has 2."""
    depth, parts = 0, 1
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        parts += ch == "," and depth == 0
    return parts
