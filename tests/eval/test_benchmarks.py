"""The seven benchmark loaders on the shared offline data (../shared/data relative to the repo root)."""

from __future__ import annotations

import builtins
import json

import pytest
from conftest import DATA_DIR

from poweropd.errors import UserError
from poweropd.eval.benchmarks import BENCHMARKS, load_benchmark, resolve_benchmarks

COUNTS = {
    "gsm8k": 1319,
    "math500": 500,
    "amc23": 40,
    "aime24": 30,
    "aime25": 30,
    "minerva": 272,
    "olympiadbench": 675,
}


@pytest.mark.parametrize(("name", "count"), COUNTS.items())
def test_each_benchmark_loads_every_problem_with_golds(name, count):
    problems = load_benchmark(name, DATA_DIR)
    assert len(problems) == count
    assert len({p.id for p in problems}) == count
    assert all(p.problem.strip() and p.golds and all(g.strip() for g in p.golds) for p in problems)


def test_all_expands_to_the_seven_in_paper_order():
    assert resolve_benchmarks("all") == list(COUNTS)
    assert list(BENCHMARKS) == list(COUNTS)
    assert resolve_benchmarks("math500, gsm8k,math500") == ["math500", "gsm8k"]


def test_gsm8k_gold_is_the_number_after_hashes():
    first = load_benchmark("gsm8k", DATA_DIR, limit=1)[0]
    assert first.golds == ["18"]
    assert "Janet" in first.problem


def test_limit_takes_the_first_problems():
    assert [p.id for p in load_benchmark("aime25", DATA_DIR, limit=3)] == [
        "aime25-I-01",
        "aime25-I-02",
        "aime25-I-03",
    ]


def test_minerva_golds_include_the_alternatives():
    problems = load_benchmark("minerva", DATA_DIR)
    rows = {r["id"]: r for r in map(json.loads, (DATA_DIR / "minerva_math.jsonl").open())}
    assert all(p.golds[0] == rows[p.id]["answer"] for p in problems)
    with_alternatives = [p for p in problems if len(p.golds) > 1]
    assert with_alternatives  # 109 boxed answers differ from the alternatives (data README)
    p = with_alternatives[0]
    assert set(p.golds[1:]) <= set(rows[p.id]["answer_alternatives"])


def test_olympiad_multi_answer_golds_are_dollar_free():
    problems = {p.id: p for p in load_benchmark("olympiadbench", DATA_DIR)}
    rows = [json.loads(line) for line in (DATA_DIR / "olympiadbench.jsonl").open()]
    multi = [r for r in rows if r["is_multiple_answer"] is True]
    assert len(multi) == 94
    golds = [g for r in multi for g in problems[r["id"]].golds]
    assert "69,84" in golds
    assert all("$" not in g for g in golds)


def test_unknown_benchmark_names_the_known_ones():
    with pytest.raises(UserError, match="gsm8k, math500, amc23, aime24, aime25, minerva, olympiadbench"):
        load_benchmark("mmlu", DATA_DIR)
    with pytest.raises(UserError, match="--benchmarks gsm8kk"):
        resolve_benchmarks("gsm8kk,math500")


def test_missing_data_dir_and_bad_limit_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="--data-dir"):
        load_benchmark("gsm8k", tmp_path / "nowhere")
    with pytest.raises(UserError, match="gsm8k_test.jsonl"):
        load_benchmark("gsm8k", tmp_path)
    with pytest.raises(UserError, match="--limit 0"):
        load_benchmark("gsm8k", DATA_DIR, limit=0)


def test_hub_without_datasets_package_says_to_pass_data_dir(monkeypatch):
    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(UserError, match=r"benchmark math500: .*--data-dir"):
        load_benchmark("math500")
