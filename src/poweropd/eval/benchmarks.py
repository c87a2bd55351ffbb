"""The seven math benchmarks of the PowerOPD paper: where each lives and how its gold answers are read.

Two sources per benchmark:
- ``--data-dir DIR``: ``DIR/<file>`` in the shared JSONL layout (``id``, ``problem``, ``answer`` + extras; see
  the data README). Works offline.
- the Hugging Face hub (``datasets`` package, optional, network): the dataset id/config/split below, with the
  field mapping documented on each entry.

Gold answers are a list: a response is correct if it matches any of them (Minerva's alternative notations,
OlympiadBench's original ``final_answer`` strings).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..data import read_jsonl
from ..errors import UserError


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    golds: list[str] = field(default_factory=list)
    """Accepted final answers; the first is the canonical one."""


def _dedup(answers) -> list[str]:
    out: list[str] = []
    for a in answers:
        a = str(a).strip()
        if a and a not in out:
            out.append(a)
    return out


def _hub_answer(row: dict) -> list[str]:
    return _dedup([row["answer"]])


def _hub_gsm8k(row: dict) -> list[str]:
    # openai/gsm8k "answer" is the worked solution ending in "#### 1,234"; thousands commas are dropped.
    return _dedup([row["answer"].split("####")[-1].strip().replace(",", "")])


def _hub_number(row: dict) -> list[str]:
    # math-ai/amc23 stores answers as floats (27.0); every AMC23 answer is an integer.
    value = row["answer"]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return _dedup([value])


def _hub_olympiad(row: dict) -> list[str]:
    # Hothan/OlympiadBench final_answer is a list of LaTeX strings with inline "$" ("$69$,$84$").
    return _dedup(a.replace("$", "") for a in row["final_answer"])


def _hub_olympiad_problem(row: dict) -> str:
    # Some OlympiadBench problems put shared definitions in "context"; the question alone is incomplete.
    context = (row.get("context") or "").strip()
    return f"{context}\n{row['question']}" if context else row["question"]


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    file: str
    """File name inside --data-dir (shared JSONL layout)."""
    hub_id: str
    hub_config: str | None
    hub_split: str
    hub_problem: Callable[[dict], str]
    """Hub row -> problem text."""
    hub_golds: Callable[[dict], list[str]]
    """Hub row -> accepted answers."""
    hub_id_field: str | None = None
    """Hub column holding a stable id; None -> "<name>-<row index>"."""
    extra_golds_field: str | None = None
    """Field of the local JSONL with more accepted answers (a list), added after ``answer``."""


def _field(name: str) -> Callable[[dict], str]:
    return lambda row: row[name]


BENCHMARKS: dict[str, Benchmark] = {
    # openai/gsm8k (main, test): question -> problem; answer "... #### N" -> N.
    "gsm8k": Benchmark(
        "gsm8k", "GSM8K", "gsm8k_test.jsonl", "openai/gsm8k", "main", "test", _field("question"), _hub_gsm8k
    ),
    # HuggingFaceH4/MATH-500 (test): problem, answer, unique_id.
    "math500": Benchmark(
        "math500",
        "MATH500",
        "math500.jsonl",
        "HuggingFaceH4/MATH-500",
        None,
        "test",
        _field("problem"),
        _hub_answer,
        hub_id_field="unique_id",
    ),
    # math-ai/amc23 (test): question -> problem; answer (float) -> integer string; id.
    "amc23": Benchmark(
        "amc23", "AMC23", "amc23.jsonl", "math-ai/amc23", None, "test", _field("question"), _hub_number, "id"
    ),
    # HuggingFaceH4/aime_2024 (train, the only split): problem, answer, id.
    "aime24": Benchmark(
        "aime24",
        "AIME24",
        "aime24.jsonl",
        "HuggingFaceH4/aime_2024",
        None,
        "train",
        _field("problem"),
        _hub_answer,
        "id",
    ),
    # math-ai/aime25 (test): problem, answer, id.
    "aime25": Benchmark(
        "aime25",
        "AIME25",
        "aime25.jsonl",
        "math-ai/aime25",
        None,
        "test",
        _field("problem"),
        _hub_answer,
        "id",
    ),
    # math-ai/minervamath (test): question -> problem; answer. The local file adds answer_alternatives.
    "minerva": Benchmark(
        "minerva",
        "Minerva",
        "minerva_math.jsonl",
        "math-ai/minervamath",
        None,
        "test",
        _field("question"),
        _hub_answer,
        extra_golds_field="answer_alternatives",
    ),
    # Hothan/OlympiadBench (OE_TO_maths_en_COMP, train = the whole 675-problem set): context + question ->
    # problem; final_answer list ("$"-stripped) -> golds; is_multiple_answer rows hold "a, b" in one string.
    "olympiadbench": Benchmark(
        "olympiadbench",
        "OlympiadBench",
        "olympiadbench.jsonl",
        "Hothan/OlympiadBench",
        "OE_TO_maths_en_COMP",
        "train",
        _hub_olympiad_problem,
        _hub_olympiad,
        "id",
        extra_golds_field="final_answer",
    ),
}


def resolve_benchmarks(names: str | list[str] | tuple[str, ...]) -> list[str]:
    """A comma list (or list) of benchmark names, with "all" expanding to every benchmark in paper order."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    out: list[str] = []
    for name in names:
        expanded = list(BENCHMARKS) if name == "all" else [name]
        for n in expanded:
            if n not in BENCHMARKS:
                raise UserError(
                    f"--benchmarks {name}: unknown benchmark (known: {', '.join(BENCHMARKS)}, all)"
                )
            if n not in out:
                out.append(n)
    if not out:
        raise UserError(f"--benchmarks: expected at least one of {', '.join(BENCHMARKS)}, all")
    return out


def load_benchmark(name: str, data_dir: str | Path | None = None, limit: int | None = None) -> list[Problem]:
    """The benchmark's problems (the first ``limit`` of them), from ``data_dir`` or else from the hub."""
    if name not in BENCHMARKS:
        raise UserError(f"--benchmarks {name}: unknown benchmark (known: {', '.join(BENCHMARKS)}, all)")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: expected a number of problems >= 1")
    spec = BENCHMARKS[name]
    problems = _load_local(spec, Path(data_dir)) if data_dir is not None else _load_hub(spec)
    return problems[:limit] if limit is not None else problems


def _load_local(spec: Benchmark, data_dir: Path) -> list[Problem]:
    if not data_dir.is_dir():
        raise UserError(f"--data-dir {data_dir}: expected a folder holding {spec.file}")
    rows = read_jsonl(data_dir / spec.file, required=("id", "problem", "answer"), what="--data-dir")
    problems = []
    for row in rows:
        extra = row.get(spec.extra_golds_field, []) if spec.extra_golds_field else []
        extra = [a.replace("$", "") for a in extra] if isinstance(extra, list) else []
        problems.append(Problem(row["id"], row["problem"], _dedup([row["answer"], *extra])))
    return problems


def _load_hub(spec: Benchmark) -> list[Problem]:
    hint = f"pass --data-dir DIR with {spec.file} to evaluate offline"
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"benchmark {spec.name}: loading {spec.hub_id} needs the 'datasets' package; {hint}"
        ) from None
    try:
        rows = datasets.load_dataset(spec.hub_id, spec.hub_config, split=spec.hub_split)
    except Exception as err:  # offline, renamed, gated: any failure means the same thing to the user
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(
            f"benchmark {spec.name}: could not load {spec.hub_id} from the hub ({first}); {hint}"
        ) from None
    return [
        Problem(
            str(row[spec.hub_id_field]) if spec.hub_id_field else f"{spec.name}-{i}",
            spec.hub_problem(row),
            spec.hub_golds(row),
        )
        for i, row in enumerate(rows)
    ]
