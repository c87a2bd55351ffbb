"""Step-by-step arithmetic: the embedded task that ``poweropd demo`` distills on (issue 4).

A problem chains one to three additions or subtractions of 2-digit numbers ("Compute 47 + 18 - 23.");
the reference response writes one line per step and boxes the result::

    47 + 18 = 65
    65 - 23 = 42
    The answer is \\boxed{42}.

Every operand is in 10–99 and every intermediate result and the answer stay in 0–99: no negative numbers
and no carries into a third digit, so each step is one 2-digit column operation; a 0.33M-parameter model
reaches 99% greedy accuracy after 2400 SFT steps (~270 s on one CPU core). (A step result may be a single digit, "23 - 18 = 5".)

Train, validation and test are a random split of the problem space: the test set is ``n_test`` distinct
problems drawn at random, the validation set ``n_validation`` more, and training problems are drawn from the
same distribution with both sets rejected. A split by a hash of the operands once put every sum ending in 0 in
the test set (FINDINGS.md).

The teacher learns from the reference responses above. The student learns from a *base corpus*
(``base_response``): the same problems written the way a base model's pretraining data would have them —
some responses state the answer with no working, some show the working and check every step, and a fraction
of the step results carry an arithmetic slip (±1 or ±10, a carry error) that the rest of the response
follows. A student trained on it has the skill but is miscalibrated against the teacher, which is what
on-policy distillation corrects (docs/testbed.md).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

TASK_VERSION = 2  # bump when problems, responses, the corpus or the split change: part of the cache keys
OPERAND_MIN, OPERAND_MAX = 10, 99
VALUE_MIN, VALUE_MAX = 0, 99
MAX_OPS = 3
STYLES = ("direct", "steps", "checks")
"""How a base-corpus response is written: the answer alone, the teacher's working, or the working with a
check line after every step."""
_INVERSE = {"+": "-", "-": "+"}


def sample_problem(rng: random.Random) -> tuple[int, list[tuple[str, int]]]:
    """(first operand, [(op, operand), ...]) with 1–MAX_OPS operations, all values kept in VALUE_MIN–VALUE_MAX.

    The number of operations is uniform; each step picks + or - uniformly among those that can stay in range,
    then an operand uniformly among those that do.
    """
    value = rng.randint(OPERAND_MIN, OPERAND_MAX)
    first, steps = value, []
    for _ in range(rng.randint(1, MAX_OPS)):
        ops = [op for op in "+-" if _operand_range(value, op)[0] <= _operand_range(value, op)[1]]
        op = rng.choice(ops)
        low, high = _operand_range(value, op)
        operand = rng.randint(low, high)
        steps.append((op, operand))
        value = value + operand if op == "+" else value - operand
    return first, steps


def _operand_range(value: int, op: str) -> tuple[int, int]:
    """Operands that keep ``value op operand`` within VALUE_MIN–VALUE_MAX (empty when low > high)."""
    if op == "+":
        return OPERAND_MIN, min(OPERAND_MAX, VALUE_MAX - value)
    return OPERAND_MIN, min(OPERAND_MAX, value - VALUE_MIN)


def problem_text(first: int, steps: list[tuple[str, int]]) -> str:
    return "Compute " + " ".join([str(first)] + [f"{op} {operand}" for op, operand in steps]) + "."


def solve(first: int, steps: list[tuple[str, int]]) -> tuple[list[str], int]:
    """(one "a op b = c" line per step, the answer)."""
    lines, value = [], first
    for op, operand in steps:
        result = value + operand if op == "+" else value - operand
        lines.append(f"{value} {op} {operand} = {result}")
        value = result
    return lines, value


def make_row(first: int, steps: list[tuple[str, int]], row_id: str) -> dict:
    """A row in the shared JSONL format: ``id``, ``problem``, ``answer`` and the reference ``response``."""
    lines, answer = solve(first, steps)
    response = "\n".join([*lines, f"The answer is \\boxed{{{answer}}}."])
    return {"id": row_id, "problem": problem_text(first, steps), "answer": str(answer), "response": response}


def base_response(
    first: int, steps: list[tuple[str, int]], style: str, rng: random.Random, slip_rate: float
) -> str:
    """A base-corpus response in ``style`` (see STYLES); each step result slips with probability
    ``slip_rate`` to a wrong value (±1 or ±10), and the response goes on from the wrong value. A slip is only
    taken where every later value stays in 0–99, so no response leaves the task's range.

    "direct" writes only the answer line; its answer carries the slips of the working it skipped.
    """
    lines, value = [], first
    for i, (op, operand) in enumerate(steps):
        result = _apply(value, op, operand)
        if rng.random() < slip_rate:
            result = _slip(result, steps[i + 1 :], rng)
        lines.append(f"{value} {op} {operand} = {result}")
        if style == "checks":  # undoes the step; a slipped step's check is wrong too (a sloppy corpus)
            lines.append(f"Check: {result} {_INVERSE[op]} {operand} = {value}")
        value = result
    if style == "direct":
        lines = []
    return "\n".join([*lines, f"The answer is \\boxed{{{value}}}."])


def _apply(value: int, op: str, operand: int) -> int:
    return value + operand if op == "+" else value - operand


def _slip(value: int, rest: list[tuple[str, int]], rng: random.Random) -> int:
    """A wrong value near ``value`` from which the ``rest`` of the chain stays in range (``value`` if none)."""

    def stays_in_range(v: int) -> bool:
        for op, operand in [("+", 0), *rest]:
            v = _apply(v, op, operand)
            if not VALUE_MIN <= v <= VALUE_MAX:
                return False
        return True

    wrong = [v for v in (value - 10, value - 1, value + 1, value + 10) if stays_in_range(v)]
    return rng.choice(wrong) if wrong else value


def iter_base_corpus(seed: int, exclude: set[str], mix: dict[str, float], slip_rate: float) -> Iterator[dict]:
    """An endless stream of base-corpus rows (the student's SFT data): the training problems of
    ``iter_train`` with ``response`` written in a style drawn from ``mix`` ({style: weight})."""
    rng = random.Random(f"arithmetic-base-{seed}")
    styles, weights = zip(*mix.items())
    stream = iter_train(seed, exclude)
    while True:
        row = next(stream)
        first, steps = parse_problem(row["problem"])
        style = rng.choices(styles, weights)[0]
        yield {**row, "response": base_response(first, steps, style, rng, slip_rate), "style": style}


def parse_problem(text: str) -> tuple[int, list[tuple[str, int]]]:
    """The inverse of ``problem_text``: "Compute 47 + 18 - 23." -> (47, [("+", 18), ("-", 23)])."""
    words = text.removeprefix("Compute ").removesuffix(".").split()
    return int(words[0]), [(words[i], int(words[i + 1])) for i in range(1, len(words), 2)]


def _distinct(rng: random.Random, n: int, prefix: str, exclude: set[str]) -> list[dict]:
    rows: list[dict] = []
    seen = set(exclude)
    while len(rows) < n:
        first, steps = sample_problem(rng)
        text = problem_text(first, steps)
        if text not in seen:
            seen.add(text)
            rows.append(make_row(first, steps, f"{prefix}-{len(rows):05d}"))
    return rows


def make_test(seed: int, n_test: int) -> list[dict]:
    """``n_test`` distinct problems drawn at random: the held-out set."""
    return _distinct(random.Random(f"arithmetic-test-{seed}"), n_test, "arith-test", set())


def make_validation(seed: int, n_validation: int, test: list[dict]) -> list[dict]:
    """``n_validation`` distinct problems, none of them a test problem: for choices made while training
    (in-training curves, the best α), so that the test problems are used once, at the end."""
    exclude = {row["problem"] for row in test}
    return _distinct(random.Random(f"arithmetic-validation-{seed}"), n_validation, "arith-val", exclude)


def iter_train(seed: int, exclude: set[str]) -> Iterator[dict]:
    """An endless stream of training rows from the task distribution, skipping problems in ``exclude``.

    Problems may repeat (1-operation problems are only ~7,300); none is ever a test problem.
    """
    rng = random.Random(f"arithmetic-train-{seed}")
    i = 0
    while True:
        first, steps = sample_problem(rng)
        if problem_text(first, steps) not in exclude:
            yield make_row(first, steps, f"arith-train-{i:06d}")
            i += 1


def make_splits(
    seed: int = 0, n_test: int = 300, n_train: int = 5000, n_validation: int = 0
) -> tuple[list[dict], list[dict]] | tuple[list[dict], list[dict], list[dict]]:
    """(train_rows, test_rows), or (train_rows, validation_rows, test_rows) when ``n_validation`` > 0:
    disjoint, each held-out set a random sample of the problem space."""
    test = make_test(seed, n_test)
    validation = make_validation(seed, n_validation, test) if n_validation else []
    stream = iter_train(seed, {row["problem"] for row in test + validation})
    train = [next(stream) for _ in range(n_train)]
    return (train, validation, test) if n_validation else (train, test)


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    """Write rows as JSONL (readable by ``poweropd train --data``); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path
