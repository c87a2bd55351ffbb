"""Final-answer extraction and equivalence checking for math benchmarks (math-verify).

``extract_answer`` finds what a response commits to (its last ``\\boxed{}``, else a few plain-text patterns);
``grade`` decides whether that answer equals a gold answer, symbolically, with math-verify.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache

# math-verify bounds each parse/compare with signal.alarm; whole seconds, main thread only.
TIMEOUT_S = 5

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_THOUSANDS = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")
_SCIENTIFIC = re.compile(r"^(-?\d+(?:\.\d+)?)[eE]([+-]?\d+)$")
_LEADING_NUMBER = re.compile(r"^\\?\$?\s*(-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?)")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")
# Plain-text fallbacks, most explicit first; each takes the LAST match in the response.
_FALLBACKS = (
    re.compile(r"####\s*([^\n]+)"),
    re.compile(r"(?i)final answer is[:\s]*([^\n]+)"),
    re.compile(r"(?i)the answer is[:\s]*([^\n]+)"),
    re.compile(r"(?i)answer\s*:\s*([^\n]+)"),
)


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
    answer = answer.strip().rstrip(".").strip("* \t")
    if len(answer) >= 2 and answer[0] == answer[-1] == "$":
        answer = answer[1:-1]
    elif answer.startswith("\\(") and answer.endswith("\\)"):
        answer = answer[2:-2]
    return answer.strip().rstrip(".").strip()


def extract_answer(response: str) -> str | None:
    """The answer a response commits to: the last complete box, else "#### X", "the answer is X",
    "answer: X", else the last number in the text; None when there is none.

    An unclosed box (a response cut at max_new_tokens) is skipped, so an earlier complete box still counts.
    """
    boxes = boxed_contents(response)
    if boxes:
        return _clean(boxes[-1])
    for pattern in _FALLBACKS:
        matches = pattern.findall(response)
        if matches:
            # "The answer is 42 because ..." keeps the text up to the end of the sentence.
            answer = _clean(re.split(r"\.\s|\s\(|,\s(?=[a-zA-Z])", matches[-1])[0])
            if answer:
                return answer
    numbers = _NUMBER.findall(response)
    return numbers[-1] if numbers else None


def _normalize(answer: str) -> str:
    """Rewrite notations that math-verify's LaTeX parser misreads: "1,000" (a set) and "4.5e33" (4.5·e·33)."""
    answer = answer.strip().replace("{,}", ",")
    if _THOUSANDS.match(answer):
        return answer.replace(",", "")
    scientific = _SCIENTIFIC.match(answer)
    if scientific:
        return f"{scientific.group(1)} \\times 10^{{{scientific.group(2)}}}"
    return answer


def _timeout() -> int | None:
    # signal.alarm raises outside the main thread; there we run without math-verify's timeout.
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=8192)
def _parse_gold(gold: str) -> tuple:
    from math_verify import LatexExtractionConfig, parse

    return tuple(
        parse(f"\\boxed{{{_normalize(gold)}}}", [LatexExtractionConfig()], parsing_timeout=_timeout())
    )


@lru_cache(maxsize=8192)
def _parse_answer(answer: str) -> tuple:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    return tuple(parse(f"\\boxed{{{_normalize(answer)}}}", configs, parsing_timeout=_timeout()))


def _top_level_parts(text: str) -> int:
    """Number of comma-separated parts outside brackets: "a, (b, c)" has 2."""
    depth, parts = 0, 1
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        parts += ch == "," and depth == 0
    return parts


def answer_candidates(response: str, golds: list[str]) -> list[str]:
    """What to compare with the golds: the extracted answer and, for a gold listing k answers ("a, b"),
    the last k boxes joined, since a response may box each of several answers separately."""
    extracted = extract_answer(response)
    candidates = [extracted] if extracted is not None else []
    boxes = boxed_contents(response)
    if not boxes and extracted:
        # "The answer is 12 dollars": without a box the phrase may carry words; its leading number counts too.
        leading = _LEADING_NUMBER.match(extracted)
        if leading and leading.group(1) != extracted:
            candidates.append(leading.group(1))
    for k in sorted({_top_level_parts(g) for g in golds}):
        if 1 < k <= len(boxes):
            candidates.append(", ".join(_clean(b) for b in boxes[-k:]))
    return candidates


def grade(response: str, gold: str | list[str]) -> bool:
    """True when the response's answer equals the gold answer (or any of a list of them), per math-verify.

    Never raises: unparsable or pathological input (math-verify timeout, sympy error) grades False.
    """
    golds = [gold] if isinstance(gold, str) else list(gold)
    try:
        from math_verify import verify

        for candidate in answer_candidates(response, golds):
            predicted = list(_parse_answer(candidate))
            if not predicted:
                continue
            for g in golds:
                expected = list(_parse_gold(g))
                if expected and verify(expected, predicted, timeout_seconds=_timeout()):
                    return True
    except BaseException as err:  # noqa: BLE001 - math-verify's TimeoutException is a BaseException
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        return False
    return False
