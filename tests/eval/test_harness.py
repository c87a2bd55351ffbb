"""pass@k against hand-computed values; evaluate_model, write_results and `poweropd eval` on a tiny random Qwen3."""

from __future__ import annotations

import json
from math import comb

import pytest
from conftest import make_char_tokenizer, make_tiny_qwen3

from poweropd.cli import main
from poweropd.errors import UserError
from poweropd.eval.benchmarks import Problem
from poweropd.eval.harness import (
    EvalConfig,
    evaluate_model,
    format_table,
    pass_at_k,
    summarize,
    write_results,
)

SAMPLE_KEYS = {"benchmark", "id", "sample", "response", "extracted", "gold", "correct", "length", "truncated"}
RESULT_KEYS = {"avg@3", "pass@3", "mean_length", "truncated_frac", "n_problems"}


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (8, 2, 1, 0.25),  # k = 1 is the fraction correct
        (8, 2, 8, 1.0),  # one correct sample among all n drawn
        (8, 0, 8, 0.0),
        (8, 0, 1, 0.0),
        (4, 1, 2, 0.5),  # 1 − C(3,2)/C(4,2) = 1 − 3/6
        (5, 2, 2, 0.7),  # 1 − C(3,2)/C(5,2) = 1 − 3/10
        (8, 8, 1, 1.0),
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_binomials_where_they_fit_and_stays_finite_beyond():
    for n, c, k in [(20, 3, 5), (16, 1, 4), (10, 7, 2)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), rel=1e-12)
    assert 0.0 < pass_at_k(2000, 1, 10) < 1.0


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 0)


def test_summarize_hand_computed():
    correct = [[True, False, False, False], [False, False, False, False], [True, True, True, True]]
    r = summarize(correct, lengths=[10] * 8 + [20] * 4, truncated=[True] * 3 + [False] * 9)
    assert r["avg@4"] == pytest.approx((0.25 + 0 + 1) / 3)
    assert r["pass@4"] == pytest.approx(2 / 3)
    assert r["mean_length"] == pytest.approx(40 / 3)
    assert r["truncated_frac"] == pytest.approx(0.25)
    assert r["n_problems"] == 3


def test_eval_config_names_the_bad_field():
    with pytest.raises(UserError, match=r"eval.n \(--n, --eval-n\)"):
        EvalConfig(n=0)
    with pytest.raises(UserError, match=r"eval.top_p \(--top-p, --eval-top-p\)"):
        EvalConfig(top_p=1.5)
    with pytest.raises(UserError, match="benchmarks"):
        EvalConfig(benchmarks=())
    assert EvalConfig(benchmarks="gsm8k, math500").benchmarks == (
        "gsm8k",
        "math500",
    )  # as a YAML preset writes it


@pytest.fixture(scope="module")
def tiny_model_and_tokenizer():
    tokenizer = make_char_tokenizer()
    model = make_tiny_qwen3(len(tokenizer), seed=3)
    model.generation_config.top_k = 50  # like real models: evaluation must still sample with top_k=0
    return model, tokenizer


def _problems():
    return {
        "gsm8k": [Problem(f"g{i}", f"What is {i} + {i}?", [str(2 * i)]) for i in range(3)],
        "aime24": [Problem("a0", "Find 7.", ["7"]), Problem("a1", "Find 8.", ["8", "08"])],
    }


def test_evaluate_model_structure_and_consistency(tiny_model_and_tokenizer, tmp_path):
    import torch

    model, tokenizer = tiny_model_and_tokenizer
    cfg = EvalConfig(benchmarks=("gsm8k", "aime24"), n=3, max_new_tokens=12, batch_size=4, seed=1)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    results, samples = evaluate_model(model, tokenizer, _problems(), cfg, progress=False)
    assert torch.equal(torch.rand(1), before)  # the caller's RNG stream is untouched

    assert list(results) == ["gsm8k", "aime24", "mean"]
    for name in results:
        assert set(results[name]) == RESULT_KEYS
        assert 0 <= results[name]["avg@3"] <= results[name]["pass@3"] <= 1
        assert 0 < results[name]["mean_length"] <= 12
    assert results["gsm8k"]["n_problems"] == 3 and results["aime24"]["n_problems"] == 2
    assert results["mean"]["n_problems"] == 5
    assert results["mean"]["mean_length"] == pytest.approx(
        (results["gsm8k"]["mean_length"] + results["aime24"]["mean_length"]) / 2
    )

    assert len(samples) == 5 * 3
    assert all(set(row) == SAMPLE_KEYS for row in samples)
    gsm = [r for r in samples if r["benchmark"] == "gsm8k"]
    assert sorted((r["id"], r["sample"]) for r in gsm) == [(f"g{i}", s) for i in range(3) for s in range(3)]
    assert results["gsm8k"]["avg@3"] == pytest.approx(sum(r["correct"] for r in gsm) / 9)
    assert results["gsm8k"]["mean_length"] == pytest.approx(sum(r["length"] for r in gsm) / 9)
    assert results["gsm8k"]["truncated_frac"] == pytest.approx(sum(r["truncated"] for r in gsm) / 9)
    assert all(r["length"] == 12 for r in samples if r["truncated"])
    assert [r["gold"] for r in samples if r["id"] == "a1"][0] == ["8", "08"]

    again, _ = evaluate_model(model, tokenizer, _problems(), cfg, progress=False)
    assert again == results  # same seed, same samples

    table = format_table(results)
    assert table.splitlines()[0].startswith("| Benchmark | Problems | Avg@3 | Pass@3 | Len")
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == ["GSM8K", "AIME24", "Mean"]

    write_results(tmp_path / "out", results, samples, cfg)
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == results
    rows = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").open()]
    assert rows == samples
    assert json.loads((tmp_path / "out" / "config.json").read_text())["n"] == 3


def test_batching_does_not_change_which_samples_exist(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    problems = {"gsm8k": _problems()["gsm8k"]}
    cfg = EvalConfig(benchmarks=("gsm8k",), n=2, max_new_tokens=6, batch_size=5, temperature=0)
    results, samples = evaluate_model(model, tokenizer, problems, cfg, progress=False)
    one_by_one, samples_1 = evaluate_model(
        model,
        tokenizer,
        problems,
        EvalConfig(benchmarks=("gsm8k",), n=2, max_new_tokens=6, batch_size=1, temperature=0),
        progress=False,
    )
    # Greedy decoding of left-padded batches gives the same responses as one prompt at a time.
    assert [r["response"] for r in samples] == [r["response"] for r in samples_1]
    assert results == one_by_one


def test_cli_eval_smoke(tiny_pair, tmp_path, capsys):
    student_dir, _, prompts = tiny_pair
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "gsm8k_test.jsonl").write_text(prompts.read_text())
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(student_dir), "--benchmarks", "gsm8k", "--data-dir", str(data_dir)]
    argv += ["--n", "2", "--limit", "3", "--max-new-tokens", "8", "--batch-size", "4", "--no-progress"]
    assert main([*argv, "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| GSM8K | 3 |" in printed and "| Mean | 3 |" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"gsm8k", "mean"} and set(results["gsm8k"]) == {
        "avg@2",
        "pass@2",
    } | RESULT_KEYS - {
        "avg@3",
        "pass@3",
    }
    assert len((out / "samples.jsonl").read_text().splitlines()) == 6

    # Running again into the same folder would overwrite those results: refused, files intact.
    before = (out / "results.json").read_text()
    assert main([*argv, "--output-dir", str(out)]) == 2
    assert "already holds results.json" in capsys.readouterr().err
    assert (out / "results.json").read_text() == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--benchmarks", "gsm9k"], "unknown benchmark"),
        (["--n", "0"], "--n"),
        (["--top-p", "0"], "--top-p"),
        (["--limit", "0"], "--limit"),
        (["--data-dir", "/nonexistent/poweropd"], "--data-dir"),
    ],
)
def test_cli_eval_bad_inputs_exit_2_with_one_line(tiny_pair, tmp_path, capsys, extra, message):
    student_dir, _, _ = tiny_pair
    argv = ["eval", "--model", str(student_dir), "--benchmarks", "gsm8k", "--data-dir", str(tmp_path)]
    assert main([*argv, *extra, "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_eval_bad_model_exit_2(tmp_path, capsys):
    (tmp_path / "gsm8k_test.jsonl").write_text(
        json.dumps({"id": "1", "problem": "1+1?", "answer": "2"}) + "\n"
    )
    argv = [
        "eval",
        "--model",
        str(tmp_path / "no_model"),
        "--benchmarks",
        "gsm8k",
        "--data-dir",
        str(tmp_path),
    ]
    assert main(argv) == 2
    assert "--model" in capsys.readouterr().err
