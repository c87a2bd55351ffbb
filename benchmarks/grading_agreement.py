"""Agreement of ``poweropd.eval.grading.grade`` and of plain math-verify with the verdicts of public graders' tests.

Each case of ``tests/data/grading_cases.jsonl`` is a gold answer, a response and the verdict the authors of a
public grader's test file expect (its ``source`` names the repository and path). A response that is a bare answer
(see ``is_bare``) is fed as ``The answer is \\boxed{X}.``, the way our prompts ask models to answer; every other
response is fed as it stands. The table splits the cases by whether the fed response holds a ``\\boxed{}``.

    PYTHONPATH=src python benchmarks/grading_agreement.py            # markdown table on stdout
    PYTHONPATH=src python benchmarks/grading_agreement.py --disagreements
    PYTHONPATH=src python benchmarks/grading_agreement.py --solutions ../shared/data

``--solutions DIR`` grades real text instead: the reference solutions of our benchmark files (GSM8K's
"#### X", MATH-500's and Minerva's boxes, OlympiadBench's unboxed prose), each against its own gold (expected
true) and against the gold of the next problem with a different gold string (expected false).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

CASES = Path(__file__).resolve().parents[1] / "tests" / "data" / "grading_cases.jsonl"
SOLUTION_FILES = ("gsm8k_test", "math500", "minerva_math", "olympiadbench", "aime24")
_DELIMITERS = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed|\\fbox|\n")
_COMMAND_OR_GROUP = re.compile(r"\\[a-zA-Z]+|\{[^{}]*\}")


def load_cases(path: Path = CASES) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def solution_cases(data_dir: Path) -> list[dict]:
    """Reference solutions as responses: each with its own gold (true) and with the next different gold (false)."""
    cases = []
    for name in SOLUTION_FILES:
        with open(data_dir / f"{name}.jsonl", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        for i, row in enumerate(rows):
            solution = row.get("solution")
            solution = "\n\n".join(solution) if isinstance(solution, list) else solution
            if not solution:
                continue
            other = next(r["answer"] for r in rows[i + 1 :] + rows[:i] if r["answer"] != row["answer"])
            for gold, expected in [(row["answer"], True), (other, False)]:
                source = f"{name}.jsonl solutions, {'own' if expected else 'next'} gold"
                cases.append({"gold": gold, "response": solution, "expected": expected, "source": source})
                cases[-1]["test"] = row["id"]
    return cases


def is_bare(response: str) -> bool:
    """A bare answer ("1 000", "\\frac{10}{9}", "x^2+1"): no math delimiters, box or newline, and no word of
    three letters or more outside LaTeX commands and their brace groups."""
    if not response.strip() or _DELIMITERS.search(response):
        return False
    stripped = response
    for _ in range(4):  # nested groups, innermost first
        stripped = _COMMAND_OR_GROUP.sub(" ", stripped)
    return re.search(r"[a-zA-Z]{3,}", stripped) is None


def fed_response(response: str) -> str:
    return f"The answer is \\boxed{{{response.strip()}}}." if is_bare(response) else response


def has_box(text: str) -> bool:
    return "\\boxed" in text or "\\fbox" in text


def plain_math_verify(response: str, gold: str) -> bool:
    from math_verify import parse, verify

    try:
        return bool(verify(parse(gold), parse(response)))
    except BaseException as err:  # noqa: BLE001 - math-verify's TimeoutException is a BaseException
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        return False


def run(grader: Callable[[str, str], bool], cases: list[dict]) -> list[dict]:
    """One row per case: the verdict, whether it agrees, whether the fed response is boxed, the seconds taken."""
    rows = []
    for case in cases:
        fed = fed_response(case["response"])
        t0 = time.perf_counter()
        verdict = bool(grader(fed, case["gold"]))
        rows.append(
            {
                **case,
                "fed": fed,
                "boxed": has_box(fed),
                "verdict": verdict,
                "agrees": verdict == case["expected"],
                "seconds": time.perf_counter() - t0,
            }
        )
    return rows


def counts(rows: list[dict]) -> dict[str, tuple[int, int]]:
    """(agreeing, total) over all rows, the boxed ones and the unboxed ones."""
    boxed = [r for r in rows if r["boxed"]]
    unboxed = [r for r in rows if not r["boxed"]]
    return {
        name: (sum(r["agrees"] for r in part), len(part))
        for name, part in [("all", rows), ("boxed", boxed), ("unboxed", unboxed)]
    }


def _cell(agree: int, total: int) -> str:
    return f"{agree}/{total}" if total else "–"


def table(results: dict[str, list[dict]]) -> str:
    """Markdown: one row per source and grader, then the totals."""
    lines = [
        "| source | grader | all | with a `\\boxed{}` | without one |",
        "|---|---|---:|---:|---:|",
    ]
    sources = sorted({r["source"] for rows in results.values() for r in rows})
    for source in [*sources, "**total**"]:
        for grader, rows in results.items():
            part = rows if source == "**total**" else [r for r in rows if r["source"] == source]
            c = counts(part)
            lines.append(
                f"| {source} | {grader} | {_cell(*c['all'])} | {_cell(*c['boxed'])} | {_cell(*c['unboxed'])} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=Path, default=CASES)
    p.add_argument(
        "--solutions", type=Path, metavar="DIR", help="grade the reference solutions in DIR instead"
    )
    p.add_argument(
        "--disagreements", action="store_true", help="list the cases where poweropd.eval.grading disagrees"
    )
    args = p.parse_args(argv)

    from poweropd.eval.grading import grade

    cases = solution_cases(args.solutions) if args.solutions else load_cases(args.cases)
    results = {
        "`poweropd.eval.grading.grade`": run(grade, cases),
        "plain math-verify": run(plain_math_verify, cases),
    }
    print(table(results))
    ours = results["`poweropd.eval.grading.grade`"]
    slowest = max(ours, key=lambda r: r["seconds"])
    print(
        f"\n{len(cases)} cases; slowest for poweropd.eval.grading: {slowest['seconds']:.2f} s ({slowest['test']})"
    )
    if args.disagreements:
        for r in ours:
            if not r["agrees"]:
                print(f"\n[{r['source']} :: {r['test']}] expected {r['expected']}, got {r['verdict']}")
                print(f"  gold:     {r['gold'][:200]!r}")
                print(f"  response: {r['fed'][:300]!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
