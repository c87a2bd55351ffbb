"""Multi-teacher OPD on the embedded task: two teachers, each better on its own half of the problems, routed per
row, against one teacher for all (3 seeds, effect ± SE). Writes OUT/results.json and OUT/report.md.

    .venv/bin/python scripts/multi_teacher_example.py --output-dir docs/multi_teacher   # ~15 min on 2 CPU cores

The halves: problems whose first operation is + ("plus") or - ("minus"). Teacher "plus" is the shipped task
teacher fine-tuned (SFT) on a stream where the minus half's responses slip at every step (±1 or ±10, the base
corpus's slips), so it stays right on its half and turns wrong on the other; teacher "minus" the mirror image.
Then `poweropd train` from the shipped student (power α = 10, the demo's settings) with
- routed: ``--teacher plus=… --teacher minus=…``, each row to the teacher of its half;
- one teacher: ``--teacher plus=…`` for every row (the plus teacher; the minus one is its mirror image);
and the final students' Avg@8 on the 300 test problems, per half and overall, paired by seed.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HALVES = ("plus", "minus")


def half_of(problem: str) -> str:
    from poweropd.demo.tasks.arithmetic import parse_problem

    return "plus" if parse_problem(problem)[1][0][0] == "+" else "minus"


def skewed_stream(own: str, seed: int):
    """Training rows: the teacher's own half answered right, the other half with every step slipped."""
    from poweropd.demo.tasks.arithmetic import base_response, iter_train, parse_problem

    rng = random.Random(f"multi-teacher-{own}-{seed}")
    for row in iter_train(seed, exclude=set()):
        if half_of(row["problem"]) != own:
            first, steps = parse_problem(row["problem"])
            row = {**row, "response": base_response(first, steps, "steps", rng, slip_rate=1.0)}
        yield row


def make_teacher(task, own: str, out: Path, steps: int) -> dict:
    import torch

    from poweropd.demo.tasks.sft import SFTConfig, accuracy, load_task_model, num_threads, sft

    torch.manual_seed(0)
    model, tokenizer = load_task_model(task.teacher_dir)
    model.train()
    with num_threads(1):
        sft(model, tokenizer, skewed_stream(own, seed=1), SFTConfig(steps=steps, lr=1e-3, warmup_steps=20),
            progress=False, desc=f"teacher {own}")  # fmt: skip
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    test = [json.loads(line) for line in task.test_jsonl.read_text().splitlines()]
    with num_threads(1):
        return {h: accuracy(model, tokenizer, [r for r in test if half_of(r["problem"]) == h]) for h in HALVES}


def run_one(job: dict) -> dict:
    """One `poweropd train` (in this worker process, one thread) and its student's test Avg@8 per half."""
    import torch

    torch.set_num_threads(1)
    from poweropd.cli import main
    from poweropd.config.sections import EvalConfig
    from poweropd.demo.tasks.sft import load_task_model
    from poweropd.eval.benchmarks import Problem
    from poweropd.eval.harness import evaluate_model

    out = Path(job["out"])
    argv = ["train", "--student", job["student"], *job["teachers"], "--data", job["data"], "--output-dir", str(out),
            "--reward", "power", "--alpha", "10", "--lr", "3e-4", "--batch-size", "32", "--max-steps", str(job["steps"]),
            "--max-new-tokens", "64", "--seed", str(job["seed"]), "--save-every", "0", "--device", "cpu",
            "--rollout-engine", "loop", "--report-to", "jsonl", "--no-progress"]  # fmt: skip
    if main(argv) != 0:
        raise RuntimeError(f"poweropd train failed: {argv}")
    model, tokenizer = load_task_model(out / "final")
    test = [json.loads(line) for line in Path(job["test"]).read_text().splitlines()]
    harness = EvalConfig(benchmarks=("arithmetic",), n=8, temperature=0.6, max_new_tokens=64, batch_size=256, seed=0)
    scores = {}
    for h in HALVES:
        problems = [Problem(r["id"], r["problem"], [r["answer"]]) for r in test if half_of(r["problem"]) == h]
        results, _ = evaluate_model(model, tokenizer, {"arithmetic": problems}, harness, progress=False)
        scores[h] = results["arithmetic"]["avg@8"]
    counts = {h: sum(half_of(r["problem"]) == h for r in test) for h in HALVES}
    scores["all"] = sum(scores[h] * counts[h] for h in HALVES) / len(test)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {**job, "avg@8": scores, "teacher_metrics": {k: v for k, v in metrics[-1].items() if k.startswith("teacher/")}}


def mean_se(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output-dir", type=Path, default=Path("runs/multi_teacher"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--teacher-sft-steps", type=int, default=400)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    from poweropd.demo.tasks.recipe import TaskConfig, prepare_task_models

    started = time.perf_counter()
    out = args.output_dir
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    task = prepare_task_models(TaskConfig(), progress=False)
    with ProcessPoolExecutor(args.workers) as pool:
        futures = {h: pool.submit(make_teacher, task, h, work / f"teacher-{h}", args.teacher_sft_steps) for h in HALVES}
        teacher_accuracy = {h: f.result() for h, f in futures.items()}
    print(f"teachers (greedy accuracy per half of the test problems): {teacher_accuracy}", flush=True)
    routed_data = work / "train_routed.jsonl"
    rows = [json.loads(line) for line in task.train_jsonl.read_text().splitlines()]
    routed_data.write_text("".join(json.dumps({**r, "teacher": half_of(r["problem"])}) + "\n" for r in rows))
    setups = {
        "routed": [arg for h in HALVES for arg in ("--teacher", f"{h}={work / f'teacher-{h}'}")],
        "one teacher (plus)": ["--teacher", str(work / "teacher-plus")],
    }
    jobs = [{"setup": name, "seed": seed, "teachers": teachers, "student": str(task.student_dir),
             "data": str(routed_data), "test": str(task.test_jsonl), "steps": args.steps,
             "out": str(work / f"{name.split()[0]}-seed{seed}")}
            for seed in range(args.seeds) for name, teachers in setups.items()]  # fmt: skip
    with ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(run_one, jobs))
    for r in runs:
        print(f"{r['setup']} seed {r['seed']}: {r['avg@8']}", flush=True)
    summary = {}
    for name in setups:
        mine = [r for r in runs if r["setup"] == name]
        summary[name] = {k: mean_se([r["avg@8"][k] for r in mine]) for k in ("plus", "minus", "all")}
    effect = {
        k: mean_se([a["avg@8"][k] - b["avg@8"][k] for a, b in zip(
            (r for r in runs if r["setup"] == "routed"), (r for r in runs if r["setup"] != "routed"), strict=True)])
        for k in ("plus", "minus", "all")
    }  # fmt: skip
    wall = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps({"teacher_accuracy": teacher_accuracy, "runs": runs, "summary": summary,
                                                  "effect_routed_minus_one": effect, "wall_s": wall,
                                                  "args": {k: str(v) for k, v in vars(args).items()}}, indent=1) + "\n")  # fmt: skip
    lines = [
        "# Multi-teacher OPD on the embedded task: routed teachers vs one teacher for all",
        "",
        f"`{' '.join(['.venv/bin/python', *sys.argv])}` ({wall / 60:.1f} min on 2 CPU cores); {args.seeds} seeds, "
        f"{args.steps} steps of 32 rollouts, power α = 10, lr 3e-4, from the shipped student. Avg@8 on the 300 test "
        "problems at temperature 0.6, per half (first operation + or -).",
        "",
        "Teachers (greedy accuracy on each half of the test problems):",
        "",
        "| teacher | plus half | minus half |",
        "|---|---|---|",
        *[f"| {h} | {teacher_accuracy[h]['plus']:.3f} | {teacher_accuracy[h]['minus']:.3f} |" for h in HALVES],
        "",
        "| setup | Avg@8 plus half | Avg@8 minus half | Avg@8 all |",
        "|---|---|---|---|",
        *[f"| {name} | " + " | ".join(f"{m:.3f} ± {se:.3f}" for m, se in (s[k] for k in ("plus", "minus", "all")))
          + " |" for name, s in summary.items()],  # fmt: skip
        "| routed − one (paired by seed) | " + " | ".join(f"{m:+.3f} ± {se:.3f}" for m, se in
                                                          (effect[k] for k in ("plus", "minus", "all"))) + " |",  # fmt: skip
        "",
        "(mean ± standard error over seeds)",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
