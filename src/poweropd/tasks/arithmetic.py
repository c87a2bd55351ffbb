"""Step-by-step arithmetic: the embedded task that ``poweropd demo`` distills on (issue 4).

A problem chains one to three additions or subtractions of 2-digit numbers ("Compute 47 + 18 - 23.");
the reference response writes one line per step and boxes the result::

    47 + 18 = 65
    65 - 23 = 42
    The answer is \\boxed{42}.

Every operand is in 10–99 and every intermediate result and the answer stay in 0–99: no negative numbers
and no carries into a third digit, so each step is one 2-digit column operation; a 0.33M-parameter model
reaches 99% greedy accuracy after 2400 SFT steps (~270 s on one CPU core). (A step result may be a single digit, "23 - 18 = 5".)

Train and test are a random split of the problem space: the test set is ``n_test`` distinct problems drawn at
random, and training problems are drawn from the same distribution with those problems rejected. A split by
a hash of the operands once put every sum ending in 0 in the test set (FINDINGS.md).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

TASK_VERSION = 1  # bump when problems, responses or the split change: it is part of the model cache key
OPERAND_MIN, OPERAND_MAX = 10, 99
VALUE_MIN, VALUE_MAX = 0, 99
MAX_OPS = 3


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


def make_test(seed: int, n_test: int) -> list[dict]:
    """``n_test`` distinct problems drawn at random: the held-out set."""
    rng = random.Random(f"arithmetic-test-{seed}")
    rows: list[dict] = []
    seen: set[str] = set()
    while len(rows) < n_test:
        first, steps = sample_problem(rng)
        text = problem_text(first, steps)
        if text not in seen:
            seen.add(text)
            rows.append(make_row(first, steps, f"arith-test-{len(rows):05d}"))
    return rows


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


def make_splits(seed: int = 0, n_test: int = 300, n_train: int = 5000) -> tuple[list[dict], list[dict]]:
    """(train_rows, test_rows): disjoint, the test set a random sample of the problem space."""
    test = make_test(seed, n_test)
    stream = iter_train(seed, {row["problem"] for row in test})
    return [next(stream) for _ in range(n_train)], test


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    """Write rows as JSONL (readable by ``poweropd train --data``); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path
