#!/usr/bin/env python
"""The paper's comparison on a real pretrained pair (issue #25): does on-policy distillation move a real student
toward its teacher, and how do the rewards compare?

    .venv/bin/python scripts/real_pair_study.py [--quick] [--output-dir DIR] [--workers 2]

The pair: SmolLM2-135M-Instruct (alias ``smollm2-135m-instruct``) teaches a copy of itself with 4 of its 30 decoder
layers removed (``poweropd prune``). The measure is what OPD optimises, on held-out GSM8K prompts: the exact
per-token reverse KL(π_S‖π_T) over the vocabulary on the student's own samples, with the teacher's NLL of those
samples and their health (``eval.distance``). The criterion was fixed before any reward was compared:

- ``full_kl`` lowers the held-out reverse KL by ≥ 30% from the initial student, and
- the mean over the sampled-token methods lowers it by ≥ 10%.

Stages, each skipped when its file is already there (the study resumes where it stopped, across days):

1. the pruned student (in $POWEROPD_CACHE), and ``candidates.json``: every candidate student of ``CANDIDATES``
   measured before training, with the rule that picks the pair (``choose``);
2. ``initial.json``: the initial student and the teacher on the held-out prompts, and every reward on the initial
   student's own samples (the paper's C1/C2);
3. the learning rate: ``full_kl``, seed 0, at each rate of ``lr_grid``; the lowest validation KL wins (a choice
   blind to how the rewards compare);
4. every method × seed at that rate (``runs/<method>-seed<s>/row.json``);
5. ``results.json``, ``report.md`` and the figures, with the claims C1–C5 computed exactly as the demo's.

``--quick`` runs the whole pipeline on a few steps, short rollouts and a handful of prompts (a few minutes), into
its own folder; its numbers say nothing about the methods.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEACHER = "smollm2-135m-instruct"
DROPPED_LAYERS = (10, 14, 18, 22)
"""The layers the student lacks: one in four of the middle layers. Chosen before any reward was compared, from
the initial students alone (docs/real_pair_study/report.md, "How the pair was chosen")."""
CANDIDATES = ((26, 27), (28, 29), (1, 2), (10, 14, 18, 22), (24, 25, 26, 27), (22, 23, 24, 25, 26, 27),
              (20, 21, 22, 23, 24, 25, 26, 27))  # fmt: skip
"""Depth-pruned students that were measured before training (stage 1b, ``candidates.json``)."""
KL_CEILING = 1.0
"""The choice among them: the most layers dropped while the initial held-out reverse KL stays below 1 nat per
token (a student still close enough to be distilled, the state a compressed model is in after pruning)."""
MEASURE_KEYS = ("reverse_kl", "teacher_nll", "student_nll", "stop_frac", "repetition", "mean_length")
CRITERION = {"full_kl": 0.30, "sampled_mean": 0.10}
"""Reductions of the held-out reverse KL from the initial student's, fixed before any reward was compared."""


@dataclass(frozen=True)
class Study:
    methods: tuple[str, ...] = ("log_ratio", "clip", "power@1", "power@10", "full_kl")
    """The paper's vanilla OPD, one post-hoc baseline, PowerOPD at two α a decade apart, full-vocabulary KL."""
    seeds: int = 3
    steps: int = 20
    batch_size: int = 8
    max_new_tokens: int = 64
    eval_every: int = 5
    lr_grid: tuple[float, ...] = (3e-5, 1e-4)
    validation_prompts: int = 16
    """GSM8K test problems 0..N-1: the curves and the choices (learning rate, best α)."""
    test_prompts: int = 48
    """GSM8K test problems 100..100+N-1: the final numbers, measured once per run."""
    test_samples: int = 1
    data: str = "gsm8k_train.jsonl"
    held_out: str = "gsm8k_test.jsonl"
    engine: str = "vllm"
    candidates: tuple[tuple[int, ...], ...] = CANDIDATES

    @classmethod
    def quick(cls) -> Study:
        return cls(seeds=1, steps=2, batch_size=2, max_new_tokens=12, eval_every=1, validation_prompts=2,
                   test_prompts=3, candidates=(DROPPED_LAYERS, CANDIDATES[0]))  # fmt: skip


# ---- paths ------------------------------------------------------------------------------------------------


def student_dir() -> Path:
    from poweropd.models.hf import cache_dir

    return (
        cache_dir() / "real_pair_study" / ("smollm2-135m-instruct-drop-" + "-".join(map(str, DROPPED_LAYERS)))
    )


def run_name(method: str, seed: int, lr: float | None = None) -> str:
    return f"{method}-seed{seed}" + (f"-lr{lr:g}" if lr is not None else "")


def write_json(path: Path, value) -> None:
    """Written whole or not at all: a killed study never leaves a half-written file that a resume would trust."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


# ---- jobs (each in a fresh process: one thread, its own vLLM engine) --------------------------------------


def _held_out(study: Study, data_dir: Path, which: str) -> list[str]:
    rows = [json.loads(line) for line in (data_dir / study.held_out).read_text().splitlines()]
    if which == "validation":
        return [r["problem"] for r in rows[: study.validation_prompts]]
    return [r["problem"] for r in rows[100 : 100 + study.test_prompts]]


def _measure(student, teacher, tokenizer, study: Study, data_dir: Path, which: str) -> dict:
    from poweropd.eval.distance import distance

    samples = study.test_samples if which == "test" else 1
    return distance(student, teacher, tokenizer, _held_out(study, data_dir, which), seed=1234,
                    max_new_tokens=study.max_new_tokens, samples_per_prompt=samples, engine=study.engine)  # fmt: skip


def _load(folder) -> tuple:
    from poweropd.models.hf import load_causal_lm, load_tokenizer, resolve_model

    folder = resolve_model(str(folder))
    return load_causal_lm(folder, dtype="float32"), load_tokenizer(folder)


def make_student(out: Path) -> str:
    """``poweropd prune`` of the teacher without DROPPED_LAYERS, into the cache (once)."""
    from poweropd.cli import main as poweropd

    if not out.is_dir():
        keep = ",".join(str(i) for i in range(30) if i not in DROPPED_LAYERS)
        if poweropd(["prune", "--model", TEACHER, "--keep-layers", keep, "--output-dir", str(out)]) != 0:
            raise SystemExit(2)  # poweropd printed the one-line reason
    return str(out)


def search_job(study: Study, data_dir: Path, candidates: tuple[tuple[int, ...], ...]) -> dict:
    """Each candidate student (the teacher without some layers) on the validation prompts, before any training."""
    from poweropd.models.prune import prune_layers

    teacher, tokenizer = _load(TEACHER)
    rows = []
    for dropped in candidates:
        student = prune_layers(
            teacher, [i for i in range(teacher.config.num_hidden_layers) if i not in dropped]
        )
        row = _measure(student, teacher, tokenizer, study, data_dir, "validation")
        rows.append({"dropped": list(dropped), **row})
        del student
    return {"candidates": rows, "rule": f"the most layers dropped with an initial reverse KL < {KL_CEILING} nat",
            "chosen": choose(rows)}  # fmt: skip


def choose(rows: list[dict]) -> list[int] | None:
    """KL_CEILING's rule: the most layers dropped below the ceiling, then the lower KL."""
    below = [r for r in rows if r["reverse_kl"] < KL_CEILING]
    return min(below, key=lambda r: (-len(r["dropped"]), r["reverse_kl"]))["dropped"] if below else None


def initial_job(study: Study, data_dir: Path, out: Path) -> dict:
    """The initial student and the teacher on the held-out prompts; every reward on the initial student's samples."""
    import torch

    from poweropd.demo.experiment import reward_distributions
    from poweropd.diagnostics import sample_and_score

    student, tokenizer = _load(student_dir())
    teacher, _ = _load(TEACHER)
    row = {
        which: _measure(student, teacher, tokenizer, study, data_dir, which)
        for which in ("validation", "test")
    }
    row["teacher_test"] = _measure(teacher, teacher, tokenizer, study, data_dir, "test")
    torch.manual_seed(0)
    scored = sample_and_score(student, teacher, tokenizer, _held_out(study, data_dir, "test"),
                              max_new_tokens=study.max_new_tokens, batch_size=16, engine=study.engine)  # fmt: skip
    row["reward_distributions"] = reward_distributions(scored, [1.0, 10.0], out)
    return row


def run_job(study: Study, data_dir: Path, method: str, seed: int, lr: float, run_dir: Path) -> dict:
    """One method and seed: `poweropd train` in process, measured on the validation prompts every K steps, then
    the final student once on the test prompts. The run folder keeps its logs; the final weights are deleted."""
    import shutil

    from poweropd.config.sections import (
        EvalConfig,
        ModelConfig,
        OptimConfig,
        RolloutConfig,
        RunConfig,
        TrainConfig,
    )
    from poweropd.demo.experiment import method_config
    from poweropd.eval.distance import distance_evaluator
    from poweropd.run import metric_names as M
    from poweropd.training.loop import train

    shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished run starts over
    teacher, tokenizer = _load(TEACHER)
    cfg = TrainConfig(
        model=ModelConfig(student=str(student_dir()), teacher=TEACHER, device="cpu"),
        rollout=RolloutConfig(max_new_tokens=study.max_new_tokens, engine=study.engine, vllm_kv_cache_gb=0.25),
        reward=method_config(method),
        optim=OptimConfig(lr=lr),
        eval=EvalConfig(every=study.eval_every),
        run=RunConfig(data=str(data_dir / study.data), output_dir=str(run_dir), max_steps=study.steps,
                      batch_size=study.batch_size, seed=seed, save_every=0, positions_every=study.eval_every,
                      report_to=("jsonl",)),
    )  # fmt: skip
    evaluator = distance_evaluator(teacher, tokenizer, _held_out(study, data_dir, "validation"), name="validation",
                                   seed=1234, max_new_tokens=study.max_new_tokens, engine=study.engine)  # fmt: skip
    started = time.perf_counter()
    final = train(cfg, progress=False, evaluator=evaluator)
    wall = time.perf_counter() - started
    student, _ = _load(final)
    test = _measure(student, teacher, tokenizer, study, data_dir, "test")
    shutil.rmtree(final)  # 0.5 GB of weights; the logs stay
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    evaluated = [m for m in metrics if M.eval_key("validation", "reverse_kl") in m]
    return {
        "method": method, "seed": seed, "lr": lr, "wall_time_s": wall, "test": test,
        "grad_norm_max": max(m[M.GRAD_NORM] for m in metrics),
        "reward_min": min(m[M.REWARD_MIN] for m in metrics),
        "reward_max": max(m[M.REWARD_MAX] for m in metrics),
        "log_ratio_min": min(m[M.LOG_RATIO_MIN] for m in metrics),
        "curves": {
            "eval_steps": [m["step"] for m in evaluated],
            **{k: [m[M.eval_key("validation", k)] for m in evaluated] for k in MEASURE_KEYS},
            "length": [m[M.RESPONSE_LENGTH_MEAN] for m in metrics],
            "grad_norm": [m[M.GRAD_NORM] for m in metrics],
            "reward_p05": [m[M.stats(M.REWARD)["p05"]] for m in metrics],
            "log_ratio_mean": [m[M.stats(M.LOG_RATIO)["mean"]] for m in metrics],
        },
    }  # fmt: skip


def _in_worker(job, target: Path, *args):
    """``job(*args)`` in a worker process, its result also written to ``target`` once it is complete."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    result = job(*args)
    write_json(target, result)
    return result


# ---- the study --------------------------------------------------------------------------------------------


def run_study(study: Study, out: Path, data_dir: Path, workers: int, progress: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    threads = max(1, (os.cpu_count() or 2) // workers)  # the runs side by side share the cores
    os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by the workers, before they import torch
    make_student(student_dir())
    context = multiprocessing.get_context("spawn")

    def pool():
        return ProcessPoolExecutor(workers, mp_context=context, max_tasks_per_child=1)

    def done(path: Path) -> dict | None:
        return json.loads(path.read_text()) if path.is_file() else None

    def say(text: str) -> None:
        if progress:
            print(f"[{time.perf_counter() - started:6.0f} s] {text}", flush=True)

    # stages 2 and 3: the initial measures and the learning-rate runs, side by side
    with pool() as ex:
        initial_file, search_file = out / "initial.json", out / "candidates.json"
        initial, search = done(initial_file), done(search_file)
        jobs = (
            {}
            if initial
            else {"initial": ex.submit(_in_worker, initial_job, initial_file, study, data_dir, out)}
        )
        if search is None:
            jobs["search"] = ex.submit(_in_worker, search_job, search_file, study, data_dir, study.candidates)
        lr_rows = {}
        for lr in study.lr_grid:
            folder = out / "runs" / run_name("full_kl", 0, lr)
            lr_rows[lr] = done(folder / "row.json")
            if lr_rows[lr] is None:
                jobs[lr] = ex.submit(
                    _in_worker, run_job, folder / "row.json", study, data_dir, "full_kl", 0, lr, folder
                )
        for key, future in jobs.items():
            result = future.result()
            if key == "initial":
                initial = result
            elif key == "search":
                search = result
            else:
                lr_rows[key] = result
            say(f"finished {key if isinstance(key, str) else run_name('full_kl', 0, key)}")
    lr = min(study.lr_grid, key=lambda x: lr_rows[x]["curves"]["reverse_kl"][-1])
    finals = ", ".join(f"{x:g}: {r['curves']['reverse_kl'][-1]:.4f}" for x, r in lr_rows.items())
    say(f"learning rate {lr:g} (final validation KL {finals})")

    # stage 4: every method and seed at that rate (full_kl seed 0 is the learning-rate run)
    rows: dict[tuple[str, int], dict] = {("full_kl", 0): lr_rows[lr]}
    with pool() as ex:
        jobs = {}
        for seed in range(study.seeds):
            for method in study.methods:
                if (method, seed) in rows:
                    continue
                folder = out / "runs" / run_name(method, seed)
                rows[method, seed] = done(folder / "row.json")
                if rows[method, seed] is None:
                    jobs[method, seed] = ex.submit(
                        _in_worker, run_job, folder / "row.json", study, data_dir, method, seed, lr, folder
                    )
        for (method, seed), future in jobs.items():
            rows[method, seed] = future.result()
            say(f"finished {run_name(method, seed)} in {rows[method, seed]['wall_time_s']:.0f} s")

    results = aggregate(study, initial, lr_rows, lr, rows, out)
    results["search"] = search
    results["wall_time_s_this_invocation"] = time.perf_counter() - started
    write_json(out / "results.json", results)
    (out / "report.md").write_text(report(results))
    return results


# ---- numbers, claims, figures -----------------------------------------------------------------------------


def reduction(kl: float, initial_kl: float) -> float:
    """1 − KL / KL₀: the fraction of the initial student's reverse KL that training removed."""
    return 1.0 - kl / initial_kl


def aggregate(study: Study, initial: dict, lr_rows: dict, lr: float, rows: dict, out: Path) -> dict:
    from poweropd.demo import report as demo_report
    from poweropd.demo.experiment import method_config

    kl_test, kl_val = initial["test"]["reverse_kl"], initial["validation"]["reverse_kl"]
    methods = {}
    for m in study.methods:
        runs = [rows[m, s] for s in range(study.seeds)]
        per_seed = {
            "kl_reduction": [reduction(r["test"]["reverse_kl"], kl_test) for r in runs],
            "validation_final": [reduction(r["curves"]["reverse_kl"][-1], kl_val) for r in runs],
            **{k: [r["test"][k] for r in runs] for k in MEASURE_KEYS},
            **{
                k: [r[k] for r in runs]
                for k in ("grad_norm_max", "reward_min", "reward_max", "log_ratio_min", "wall_time_s")
            },  # fmt: skip
        }
        reward = method_config(m)
        row = {"reward": reward.name, "alpha": reward.alpha if reward.name == "power" else None, "seeds": len(runs),
               "per_seed": per_seed,
               "curves": {"eval_steps": [0, *runs[0]["curves"]["eval_steps"]],
                          **{k: [[initial["validation"][k], *r["curves"][k]] for r in runs] for k in MEASURE_KEYS},
                          **{k: [r["curves"][k] for r in runs] for k in ("length", "grad_norm", "reward_p05",
                                                                          "log_ratio_mean")}}}  # fmt: skip
        for key, values in per_seed.items():
            row[key] = statistics.fmean(values)
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        methods[m] = row
    results = {
        "study": dataclasses.asdict(study),
        "config": {"n": study.test_samples, "test_problems": study.test_prompts},
        "pair": {"teacher": TEACHER, "student": f"{TEACHER} without decoder layers {list(DROPPED_LAYERS)} "
                 f"(26 of 30, `poweropd prune`)"},  # fmt: skip
        "score": {"key": "kl_reduction", "label": "reduction of the held-out reverse KL (test prompts)"},
        "lr": {"grid": list(study.lr_grid), "chosen": lr,
               "validation_kl_final": {f"{x:g}": r["curves"]["reverse_kl"][-1] for x, r in lr_rows.items()}},
        "initial": {k: initial[k] for k in ("validation", "test", "teacher_test")},
        "reward_distributions": initial["reward_distributions"],
        "methods": methods,
    }  # fmt: skip
    results["criterion"] = criterion(results)
    results["claims"] = demo_report.claims(results)
    results["figures"] = figures(results, out)
    results["run_wall_time_s"] = sum(r["wall_time_s"] for r in rows.values()) + sum(
        r["wall_time_s"] for x, r in lr_rows.items() if x != lr
    )
    return results


def criterion(results: dict) -> dict:
    """The criterion, stated before the comparison: full_kl's and the sampled-token methods' mean reductions."""
    methods = results["methods"]
    sampled = [m for m in methods if m != "full_kl"]
    out = {
        "statement": "full_kl lowers the held-out reverse KL(π_S‖π_T) on the student's own samples by ≥ 30% from "
        "the initial student, and the mean over the sampled-token methods lowers it by ≥ 10%",
        "thresholds": CRITERION,
        "full_kl_reduction": methods["full_kl"]["kl_reduction"] if "full_kl" in methods else None,
        "sampled_mean_reduction": statistics.fmean(methods[m]["kl_reduction"] for m in sampled)
        if sampled
        else None,
    }
    out["met"] = (out["full_kl_reduction"] or -1) >= CRITERION["full_kl"] and (
        out["sampled_mean_reduction"] or -1
    ) >= CRITERION["sampled_mean"]
    return out


def figures(results: dict, out: Path) -> list[str]:
    from poweropd.demo.report import method_colors
    from poweropd.plots.runs import SeedCurves, seed_band_figure

    methods = results["methods"]
    palette = method_colors(methods)
    colors = [palette[m] for m in methods]

    def curves(key: str) -> list:
        """Held-out measures at the evaluation steps (step 0: the initial student), training metrics per step."""
        rows = []
        for m, row in methods.items():
            values = row["curves"][key]
            steps = row["curves"]["eval_steps"] if key in MEASURE_KEYS else list(range(1, len(values[0]) + 1))
            rows.append(SeedCurves(m, steps, values))
        return rows

    teacher = results["initial"]["teacher_test"]

    def panel(key: str, title: str, ylabel: str, teacher_label: str | None = None, **extra) -> dict:
        lines = {f"{teacher_label} ({teacher[key]:.2f})": teacher[key]} if teacher_label else {}
        return {
            "curves": curves(key),
            "title": title,
            "ylabel": ylabel,
            "colors": colors,
            "hlines": lines,
            **extra,
        }

    figure_1 = seed_band_figure(
        [panel("reverse_kl", "held-out reverse KL(π_S‖π_T) per token", "nats"),
         panel("teacher_nll", "teacher NLL of the student's samples", "nats", "teacher's own samples")],
        out / "distance_vs_step.png",
    )  # fmt: skip
    health = seed_band_figure(
        [panel("repetition", "repeated 4-grams (validation samples)", "fraction", "teacher"),
         panel("stop_frac", "responses ending before the cap", "fraction", "teacher")],
        out / "health_vs_step.png",
    )  # fmt: skip
    training = seed_band_figure(
        [panel("grad_norm", "pre-clip gradient norm", "‖g‖ (log scale)", log=True),
         panel("log_ratio_mean", "mean log π_T − log π_S of the training rollouts", "nats")],
        out / "training_vs_step.png",
    )  # fmt: skip
    paths = [figure_1, health, training, out / "reward_distributions.png", out / "reward_positions.png"]
    return [str(Path(p).relative_to(out)) for p in paths]


def report(results: dict) -> str:
    from poweropd.demo.report import _fmt_effect, _pm, paired

    study, crit, init, teacher = (
        results["study"],
        results["criterion"],
        results["initial"],
        results["initial"]["teacher_test"],
    )
    lines = [
        "| student | reverse KL | KL reduction (± SE) | teacher NLL | student NLL | ends before cap | repeated 4-grams "
        "| length | peak grad norm | log-ratio min |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| teacher (its own samples) | {teacher['reverse_kl']:.4f} | – | {teacher['teacher_nll']:.3f} | "
        f"{teacher['student_nll']:.3f} | {teacher['stop_frac']:.2f} | {teacher['repetition']:.3f} | "
        f"{teacher['mean_length']:.1f} | – | – |",
        f"| initial student | {init['test']['reverse_kl']:.4f} | – | {init['test']['teacher_nll']:.3f} | "
        f"{init['test']['student_nll']:.3f} | {init['test']['stop_frac']:.2f} | {init['test']['repetition']:.3f} | "
        f"{init['test']['mean_length']:.1f} | – | – |",
    ]  # fmt: skip
    for m, row in results["methods"].items():
        zeros = [0.0] * row["seeds"]
        effect, se = paired(row["per_seed"]["kl_reduction"], zeros)
        lines.append(
            f"| {m} | {_pm(row, 'reverse_kl', '.4f')} | {_fmt_effect(effect, se)} | {_pm(row, 'teacher_nll')} | "
            f"{_pm(row, 'student_nll')} | {_pm(row, 'stop_frac', '.2f')} | {_pm(row, 'repetition')} | "
            f"{_pm(row, 'mean_length', '.1f')} | {_pm(row, 'grad_norm_max', '.3g')} | {row['log_ratio_min']:.3g} |"
        )
    per_run = [r for row in results["methods"].values() for r in row["per_seed"]["wall_time_s"]]
    parts = [
        "# A real pretrained pair, distilled on policy",
        "",
        f"Teacher: {results['pair']['teacher']}; student: {results['pair']['student']}.",
        "",
        f"**Criterion, fixed before any reward was compared**: {crit['statement']}. Measured: full_kl "
        f"{_percent(crit['full_kl_reduction'])} (needs ≥ {CRITERION['full_kl']:.0%}), the mean over the sampled-token "
        f"methods {_percent(crit['sampled_mean_reduction'])} (needs ≥ {CRITERION['sampled_mean']:.0%}): "
        f"**{'met' if crit['met'] else 'not met'}**.",
        "",
        f"Every method trains the same initial student for {study['steps']} steps of {study['batch_size']} rollouts "
        f"(≤ {study['max_new_tokens']} new tokens, temperature 1, GSM8K training prompts, chat template), AdamW at lr "
        f"{results['lr']['chosen']:g} (of {', '.join(f'{x:g}' for x in study['lr_grid'])}, chosen by full_kl's final "
        f"validation KL, seed 0), {study['seeds']} seed(s) each, rollouts by the `{study['engine']}` engine. Held-out "
        f"measures: the student's own samples (temperature 1, one fixed sampling seed) on GSM8K test problems, "
        f"{study['validation_prompts']} for the curves and choices, {study['test_prompts']} others for the final "
        "numbers; mean ± std over seeds.",
        "",
        f"Command: `.venv/bin/python scripts/real_pair_study.py{' --quick' if study['steps'] < 5 else ''}` "
        "(each stage is skipped when its file is here: delete a run's folder to run it again). Wall time of the "
        f"{len(per_run)} runs: {sum(per_run) / 60:.0f} min of training in all, {max(per_run) / 60:.1f} min the "
        "longest, two runs side by side on the 2 cores (one thread each) of the machine described in "
        "../shared/FINDINGS.md.",
        "",
        "![distance vs step](distance_vs_step.png)",
        "",
        "Lines are means over seeds, bands ± one standard error; step 0 is the initial student.",
        "",
        "\n".join(lines),
        "",
        *_search_section(results.get("search")),
        "## Claims of the paper, checked on these numbers",
        "",
        "As `poweropd demo` reports them, with the reduction of the held-out reverse KL in place of Avg@8: a verdict "
        "needs an effect larger than twice its standard error (paired by seed).",
        "",
        *[f"- **{key}** — {c['claim']}: **{c['verdict']}**. {c['numbers']}" for key, c in results["claims"].items()],
        "",
        "## Figures",
        "",
        *[f"![{f}]({f})" for f in results["figures"][1:]],
    ]  # fmt: skip
    return "\n".join(parts) + "\n"


def _search_section(search: dict | None) -> list[str]:
    """How the pair was chosen: every candidate student before training, and the rule."""
    if not search:
        return []
    lines = [
        "## How the pair was chosen",
        "",
        f"Before any training, each candidate student (the teacher without some decoder layers) was measured on the "
        f"validation prompts. The rule, fixed before any reward was compared: {search['rule']} (still close enough "
        f"to distil; the state a compressed model is in after pruning). It picks layers {search['chosen']}; the "
        f"study uses {list(DROPPED_LAYERS)}.",
        "",
        "| layers dropped | reverse KL | teacher NLL | student NLL | ends before cap | repeated 4-grams |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in search["candidates"]:
        lines.append(f"| {r['dropped']} | {r['reverse_kl']:.3f} | {r['teacher_nll']:.2f} | {r['student_nll']:.2f} | "
                     f"{r['stop_frac']:.2f} | {r['repetition']:.3f} |")  # fmt: skip
    return [*lines, ""]


def _percent(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.1%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the whole pipeline on a few steps (minutes)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="default docs/real_pair_study; with --quick $POWEROPD_CACHE/real_pair_study/quick")  # fmt: skip
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data",
                        help="the JSONL data (default ../shared/data)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="runs trained at the same time (default 2)")
    args = parser.parse_args(argv)
    study = Study.quick() if args.quick else Study()
    if args.output_dir is not None:
        out = args.output_dir
    else:
        from poweropd.models.hf import cache_dir

        out = cache_dir() / "real_pair_study" / "quick" if args.quick else REPO / "docs" / "real_pair_study"
    for name in (study.data, study.held_out):
        if not (args.data_dir / name).is_file():
            print(f"error: --data-dir {args.data_dir}: expected {name} in it", file=sys.stderr)
            return 2
    if args.workers < 1:
        print(f"error: --workers {args.workers}: expected an integer ≥ 1", file=sys.stderr)
        return 2
    results = run_study(study, out, args.data_dir, args.workers)
    crit = results["criterion"]
    print(f"criterion {'met' if crit['met'] else 'not met'}: full_kl {_percent(crit['full_kl_reduction'])}, "
          f"sampled-token mean {_percent(crit['sampled_mean_reduction'])} -> {out / 'report.md'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
