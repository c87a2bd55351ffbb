"""Avg@n / Pass@n / response length of a model on math benchmarks, as the PowerOPD paper reports them.

``evaluate_model`` is a plain function of (model, tokenizer, problems, config): the CLI and the training loop
(every --eval-every steps) call the same code.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from ..collective import Collective, SingleProcess
from ..config.sections import EvalConfig
from ..data import encode_prompts
from ..errors import UserError
from ..models.hf import stop_token_ids
from ..rollout.engines import make_sampler
from ..rollout.samplers import Sampler
from .benchmarks import BENCHMARKS, Problem
from .grading import extract_answer, grade


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 − C(n−c, k) / C(n, k).

    Chen et al. 2021 ("Evaluating Large Language Models Trained on Code", eq. 1), in the product form
    1 − Π_{i=n−c+1}^{n} (1 − k/i), which never forms the huge binomials.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k: expected 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def _metric_names(n: int) -> tuple[str, str]:
    return f"avg@{n}", f"pass@{n}"


def summarize(correct: list[list[bool]], lengths: list[int], truncated: list[bool]) -> dict:
    """Per-benchmark numbers from per-problem correctness (P lists of n) and per-sample lengths/truncation.

    avg@n = mean fraction of correct samples; pass@n = fraction of problems with at least one correct sample
    (pass_at_k with k = n); fractions in [0, 1]; mean_length in generated tokens, stop token included.
    """
    n = len(correct[0])
    avg_name, pass_name = _metric_names(n)
    return {
        avg_name: sum(sum(c) / n for c in correct) / len(correct),
        pass_name: sum(pass_at_k(n, sum(c), n) for c in correct) / len(correct),
        "mean_length": sum(lengths) / len(lengths),
        "truncated_frac": sum(truncated) / len(truncated),
        "n_problems": len(correct),
    }


def mean_over_benchmarks(per_benchmark: dict[str, dict]) -> dict:
    """The paper's "Avg." column: an unweighted mean over benchmarks (n_problems is summed)."""
    rows = list(per_benchmark.values())
    out = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0] if k != "n_problems"}
    out["n_problems"] = sum(r["n_problems"] for r in rows)
    return out


def evaluate_model(
    model,
    tokenizer,
    problems_by_benchmark: dict[str, list[Problem]],
    cfg: EvalConfig,
    progress: bool = True,
    comm: Collective | None = None,
    vllm=None,
) -> tuple[dict, list[dict]]:
    """Sample ``cfg.n`` responses per problem, grade them, and summarise each benchmark.

    Returns (results, samples): results maps each benchmark name, then "mean", to
    {"avg@n", "pass@n", "mean_length", "truncated_frac", "n_problems"}; samples has one row per response.
    The global RNG state is restored afterwards, so a training loop that evaluates keeps its own stream.

    With ``comm`` over several processes, process r samples and grades problems r, r + W, r + 2W, … (its own
    seed, ``cfg.seed + r``) and every process returns the gathered results of all problems.
    ``vllm``: the vLLM engine's settings (vllm_engine.VLLMOptions) for ``cfg.engine`` vllm; a training run's
    engine on the same model is shared, and takes the model's current weights first.
    """
    from tqdm.auto import tqdm

    if not problems_by_benchmark or any(not p for p in problems_by_benchmark.values()):
        raise UserError("evaluate_model: expected at least one benchmark with at least one problem")
    stop_ids = stop_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    device = next(model.parameters()).device
    sampler = make_sampler(cfg.engine, model, pad_id, cfg.sampling(stop_ids, len(tokenizer)), vllm=vllm)
    sampler.sync_weights()  # an engine's copy of the weights (vLLM) may be a step behind the model
    fork_devices = [device] if device.type == "cuda" else []
    comm = comm or SingleProcess()

    results: dict[str, dict] = {}
    samples: list[dict] = []
    mine = {name: range(comm.rank, len(p), comm.world_size) for name, p in problems_by_benchmark.items()}
    total = sum(len(r) for r in mine.values()) * cfg.n
    try:
        with tqdm(total=total, desc="eval", unit="sample", disable=not progress) as bar:
            for name, problems in problems_by_benchmark.items():
                bar.set_description(f"eval {name}")
                with torch.random.fork_rng(devices=fork_devices):
                    torch.manual_seed(cfg.seed + comm.rank)
                    generated = _sample_benchmark(sampler, tokenizer, problems, mine[name], cfg, bar)
                rows = [
                    _graded_row(name, i, problems[i], s, *generated[i, s]) for i, s in sorted(generated)
                ]  # this process's problems, graded here
                rows = sorted(
                    (row for part in comm.gather_objects(rows) for row in part), key=lambda r: (r["index"], r["sample"])
                )  # fmt: skip
                correct = [[False] * cfg.n for _ in problems]
                for row in rows:
                    correct[row["index"]][row["sample"]] = row["correct"]
                rows = [{k: v for k, v in row.items() if k != "index"} for row in rows]
                samples.extend(rows)
                results[name] = summarize(
                    correct, [r["length"] for r in rows], [r["truncated"] for r in rows]
                )
    finally:
        sampler.close()
    results["mean"] = mean_over_benchmarks(results)
    return results, samples


def _graded_row(benchmark: str, index: int, problem: Problem, sample: int, response: str, length: int,
                truncated: bool) -> dict:  # fmt: skip
    return {
        "benchmark": benchmark,
        "id": problem.id,
        "index": index,  # dropped again once the rows of every process are in
        "sample": sample,
        "response": response,
        "extracted": extract_answer(response),
        "gold": problem.golds,
        "correct": grade(response, problem.golds),
        "length": length,
        "truncated": truncated,
    }


def _sample_benchmark(
    sampler: Sampler, tokenizer, problems: list[Problem], indices: range, cfg: EvalConfig, bar
) -> dict:
    """{(problem index, sample index): (response text, generated tokens, truncated)} for ``indices``.

    A streaming engine gets them all in one call (n samples forked per prompt); a fixed-batch engine gets
    batches of ``cfg.batch_size`` sequences, longest prompts first so that a batch holds similar lengths.
    """
    if not indices:  # more processes than problems
        return {}
    prompt_ids = encode_prompts(tokenizer, [problems[i].problem for i in indices])
    by_index = dict(zip(indices, prompt_ids, strict=True))
    order = sorted(indices, key=lambda i: -len(by_index[i]))
    if sampler.streams:
        calls = [([(i, s) for i in order for s in range(cfg.n)], cfg.n)]
    else:
        jobs = [(i, s) for i in order for s in range(cfg.n)]
        calls = [(jobs[start : start + cfg.batch_size], 1) for start in range(0, len(jobs), cfg.batch_size)]
    out = {}
    for batch, n in calls:
        rollouts = sampler.sample([by_index[i] for i, s in batch if s % n == 0], n=n)
        response_ids_BT, mask_BT = rollouts.response_ids_BT.cpu(), rollouts.response_mask_BT.cpu()
        lengths_B, truncated_B = rollouts.response_lengths_B.tolist(), rollouts.truncated_B.tolist()
        for b, key in enumerate(batch):
            text = tokenizer.decode(response_ids_BT[b][mask_BT[b]].tolist(), skip_special_tokens=True)
            out[key] = (text, int(lengths_B[b]), bool(truncated_B[b]))
        bar.update(len(batch))
    return out


def format_table(results: dict) -> str:
    """A paper-like Markdown table: one row per benchmark then Mean; Avg@n and Pass@n in percent."""
    names = [k for k in results if k != "mean"] + (["mean"] if "mean" in results else [])
    n = next(int(k.split("@")[1]) for k in results[names[0]] if k.startswith("avg@"))
    avg_name, pass_name = _metric_names(n)
    lines = [
        f"| Benchmark | Problems | Avg@{n} | Pass@{n} | Len | Truncated |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        r = results[name]
        title = "Mean" if name == "mean" else BENCHMARKS[name].title if name in BENCHMARKS else name
        lines.append(
            f"| {title} | {r['n_problems']} | {100 * r[avg_name]:.1f} | {100 * r[pass_name]:.1f} "
            f"| {r['mean_length']:.0f} | {100 * r['truncated_frac']:.0f}% |"
        )
    return "\n".join(lines)


def write_results(
    out_dir: str | Path, results: dict, samples: list[dict], config: EvalConfig | None = None
) -> None:
    """OUT/results.json, OUT/samples.jsonl (and OUT/config.json when given), each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    _write_atomic(
        out_dir / "samples.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in samples)
    )
    if config is not None:
        _write_atomic(out_dir / "config.json", json.dumps(asdict(config), indent=2) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
