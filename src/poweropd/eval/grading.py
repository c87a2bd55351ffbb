"""Final-answer extraction and equivalence checking for math benchmarks (math-verify); docs/grading.md.

What a response commits to (issue #12), the first that applies:
  1. its last complete ``\\boxed{}`` (with several boxes against a gold set of k answers, the last k together);
  2. the span after the last explicit marker ("#### X", "the final answer is X", "the answer is X",
     "answer: X"), since base models often go on writing after it;
  3. a one-line bare answer ("1 000", "4 4/9 percent");
  4. what math-verify's own LaTeX and expression extraction finds over the whole response (its final answer
     span, not the last number).
``grade`` compares that answer with the gold answer(s) with math-verify's ``verify``, within one time budget.
A bare answer (a box content, a marker span, a bare gold) is first rewritten by ``grading_numbers.readings``
for the number forms math-verify's LaTeX parser misreads (thousands separators, decimal commas, mixed numbers).
"""

from __future__ import annotations

import re
import threading
import time
from functools import lru_cache

from .grading_numbers import readings, top_level_parts

# The budget of one grade() call, in seconds. math-verify bounds each parse/compare with signal.alarm (whole
# seconds, main thread only): the first call of a grade gets TIMEOUT_S, the later ones what is left of it.
TIMEOUT_S = 5
_budget = threading.local()  # .active: inside grade(); .end: monotonic deadline once a call has started


class _OutOfTime(Exception):
    """The grade() budget is spent: the answer grades False."""


_BOX_COMMANDS = ("\\boxed", "\\fbox")
# Explicit markers, most explicit first; each takes the LAST match in the response.
_MARKERS = (
    re.compile(r"####\s*([^\n]+)"),
    re.compile(r"(?i)final answer is[:\s]*([^\n]+)"),
    re.compile(r"(?i)the answer is[:\s]*([^\n]+)"),
    re.compile(r"(?i)answer\s*:\s*([^\n]+)"),
)
# "The answer is 42 because ...": the span ends with its sentence.
_SENTENCE_END = re.compile(r"\.\s|\.$|\s\(|,\s(?=[a-zA-Z])|\s+I hope")
# "12 dollars", "$26", "4 4/9 apples": a span that starts with a number commits to that number.
_LEADING_NUMBER = re.compile(
    r"^\\?\$?\s*([-+]?\d+(?:[ ,]\d{3})*(?:[.,]\d+)?(?: \d+/\d+|/\d+)?(?:\s*(?:\\?%|percent\b))?)"
)
_PROSE = re.compile(r"[a-zA-Z]{3,}\s+[a-zA-Z]{2,}")
_WORD = re.compile(r"\b(?!percent\b|percentage\b|pct\b)[a-zA-Z]{3,}")
_COMMAND_OR_GROUP = re.compile(r"\\[a-zA-Z]+|\{[^{}]*\}")


def _braced(text: str, start: int) -> str | None:
    """Content of the brace group opening at ``text[start] == '{'``, nested braces included; None if unclosed."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{" and text[i - 1 : i] != "\\":
            depth += 1
        elif text[i] == "}" and text[i - 1 : i] != "\\":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
    return None


def boxed_contents(response: str) -> list[str]:
    """Every complete ``\\boxed{...}`` / ``\\boxed x`` / ``\\fbox{...}`` content, in order of appearance."""
    found: list[tuple[int, str]] = []
    for command in _BOX_COMMANDS:
        for match in re.finditer(re.escape(command) + r"(?![a-zA-Z])", response):
            i = match.end()
            if response[i : i + 1] == "{":
                content = _braced(response, i)
            elif response[i : i + 1] == " ":  # "\boxed 5": the argument is the next word
                word = re.match(r"\s*([^\s$]+)", response[i:])
                content = word.group(1) if word else None
            else:
                content = None
            if content is not None:
                found.append((match.start(), content))
    return [content for _, content in sorted(found)]


def _clean(answer: str) -> str:
    # Sentence punctuation, markdown bold ("**42**") and inline-math delimiters are never part of an answer.
    answer = answer.strip().rstrip(".,;").strip("* \t")
    if len(answer) >= 2 and answer[0] == answer[-1] == "$":
        answer = answer.strip("$")
    elif answer.startswith("\\(") and answer.endswith("\\)"):
        answer = answer[2:-2]
    # A trailing backslash ("185\\") is a stray line break, never part of an answer.
    return answer.strip().rstrip(".").rstrip("\\").strip()


def _marker_span(response: str) -> str | None:
    """The text after the last match of the most explicit marker present, up to the end of its sentence."""
    for pattern in _MARKERS:
        matches = pattern.findall(response)
        if matches:
            span = _clean(_SENTENCE_END.split(matches[-1])[0])
            if span:
                return span
    return None


def _outside_latex(text: str) -> str:
    """The text without LaTeX commands and brace groups: "\\text{odd} cm" -> "   cm"."""
    for _ in range(4):  # nested groups, innermost first
        text = _COMMAND_OR_GROUP.sub(" ", text)
    return text


def _is_bare(answer: str) -> bool:
    """An answer without prose: no "$" and no word (percent aside) outside LaTeX commands and their groups."""
    return "$" not in answer and _WORD.search(_outside_latex(answer)) is None


def _timeout() -> int | None:
    """Whole seconds for the next math-verify call (see TIMEOUT_S); None (no timeout) outside the main
    thread, where signal.alarm raises."""
    left = TIMEOUT_S
    if getattr(_budget, "active", False):
        if _budget.end is None:
            _budget.end = time.monotonic() + TIMEOUT_S
        else:
            left = int(_budget.end - time.monotonic())
            if left < 1:
                raise _OutOfTime  # not cached: lru_cache keeps only returned values
    return left if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=8192)
def _parse_bare(answer: str) -> tuple[tuple, ...]:
    """Every reading of a bare answer, each parsed as the content of a box (LaTeX, then plain expressions)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    parsed = (tuple(parse(f"\\boxed{{{r}}}", configs, parsing_timeout=_timeout())) for r in readings(answer))
    return tuple(p for p in parsed if p)


@lru_cache(maxsize=1024)  # whole responses: enough for extract_answer to reuse what grade parsed
def _parse_text(text: str) -> tuple[tuple, ...]:
    """math-verify's extraction over a whole text (its final answer span); one reading, or none."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    parsed = tuple(parse(text, [LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=_timeout()))
    return (parsed,) if parsed else ()


def _is_text_gold(gold: str) -> bool:
    """A gold written as a solution or as "$...$" (public graders' tests have both) rather than a bare answer."""
    if "\\boxed" in gold or gold.lstrip().startswith(("$", "\\(", "\\[")):
        return True
    return _PROSE.search(_outside_latex(gold)) is not None


def _parse_gold(gold: str) -> tuple[tuple, ...]:
    return _parse_text(gold) if _is_text_gold(gold) else _parse_bare(_clean(gold))


def _commitment(response: str) -> tuple[str, str]:
    """(kind, answer) of what a response commits to: ("box", its content), ("bare", an answer to parse as it
    stands) or ("text", a text to extract the answer from, with math-verify)."""
    boxes = boxed_contents(response)
    if boxes:
        return "box", _clean(boxes[-1])
    span = _marker_span(response)
    if span is not None:
        if _is_bare(span):
            return "bare", span
        leading = _LEADING_NUMBER.match(span)  # "12 dollars", "$26", "4 4/9 apples"
        return ("bare", leading.group(1)) if leading else ("text", span)  # "The largest $n$ is 34"
    if "\n" not in response.strip() and _is_bare(response):
        # A one-line answer ("1 000", "4 4/9 percent") whose number form math-verify's extraction misreads.
        return "bare", _clean(response)
    return "text", response


def _lone_word(response: str) -> str | None:
    # A one-word response that math-verify finds nothing in ("odd") is the answer itself.
    word = _clean(response)
    return word if word and not re.search(r"\s", word) else None


def extract_answer(response: str) -> str | None:
    """The answer a response commits to, as text: the last complete box, else the span after the last explicit
    marker, else the span math-verify's extraction matched; None when there is none.

    An unclosed box (a response cut at max_new_tokens) is skipped, so an earlier complete box still counts.
    """
    kind, answer = _commitment(response)
    if kind != "text":
        return answer
    for reading in _parse_text(answer):
        strings = [x for x in reading if isinstance(x, str)]
        return strings[0] if strings else str(reading[0])
    return answer if answer != response else _lone_word(response)


def _set_sizes(golds: list[str]) -> set[int]:
    """How many answers each gold lists: "69,84" and "\\{1,2,3\\}" list 2 and 3."""
    from sympy import FiniteSet

    sizes = {top_level_parts(g) for g in golds if not _is_text_gold(g)}
    for g in golds:
        for reading in _parse_gold(g)[:1]:
            if isinstance(reading[0], FiniteSet):
                sizes.add(len(reading[0].args))
    return sizes


def answer_readings(response: str, golds: list[str]) -> list[tuple]:
    """The parsed readings of what the response commits to (see ``_commitment``), to compare with the golds."""
    kind, answer = _commitment(response)
    if kind == "box":
        found = list(_parse_bare(answer))
        if response.count("\\boxed") + response.count("\\fbox") > 1:
            # A response may box each of several answers separately: the last k boxes against a gold listing k.
            boxes = boxed_contents(response)
            for k in sorted(_set_sizes(golds)):
                if 1 < k <= len(boxes):
                    found += _parse_bare(", ".join(_clean(b) for b in boxes[-k:]))
        return found
    found = _parse_bare(answer) if kind == "bare" else _parse_text(answer)
    if not found and answer != response:  # a marker span or a line that does not parse: the whole response
        found = _parse_text(response)
    if not found and _lone_word(response):
        found = _parse_bare(_lone_word(response))
    return list(found)


def grade(response: str, gold: str | list[str]) -> bool:
    """True when the response's answer equals the gold answer (or any of a list of them), per math-verify.

    Never raises: unparsable or pathological input (math-verify timeout, sympy error) grades False.
    """
    golds = [gold] if isinstance(gold, str) else list(gold)
    _budget.active, _budget.end = True, None
    try:
        from math_verify import verify

        expected = [reading for g in golds for reading in _parse_gold(g)]
        for predicted in answer_readings(response, golds) if expected else ():
            for reading in expected:
                # One pair at a time: verify gives each pair of its lists the whole timeout.
                if any(verify(g, t, timeout_seconds=_timeout()) for g in reading for t in predicted):
                    return True
    except BaseException as err:  # noqa: BLE001 - math-verify's TimeoutException is a BaseException
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
    finally:
        _budget.active = False
    return False
