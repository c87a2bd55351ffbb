"""`poweropd demo`: the paper's story on the embedded arithmetic task, every method from one student, on a CPU.

Same code path as a real run: ``train()`` (the loop of train.py) for each method, ``evaluate_model`` (the
harness of `poweropd eval`) for Avg@8 / Pass@8 / length, the task's teacher and weak student from
``poweropd.tasks``. Then the claims of the paper are checked against the numbers (``claims``), honestly:
a claim that does not reproduce at this scale says so.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import EvalConfig, ModelConfig, OptimConfig, RewardConfig, RolloutConfig, RunConfig, TrainConfig
from .errors import UserError

# method id -> reward section. α sweep as in the paper (0.1 … 500).
METHODS: dict[str, dict] = {
    "log_ratio": {"name": "log_ratio"},
    "clip": {"name": "clip"},
    "tanh": {"name": "tanh"},
    "zscore": {"name": "zscore"},
    "power@0.1": {"name": "power", "alpha": 0.1},
    "power@1": {"name": "power", "alpha": 1.0},
    "power@10": {"name": "power", "alpha": 10.0},
    "power@100": {"name": "power", "alpha": 100.0},
    "power@500": {"name": "power", "alpha": 500.0},
    "full_kl": {"name": "full_kl"},
}
QUICK_METHODS = ("log_ratio", "power@1", "full_kl")
BASELINES = ("log_ratio", "clip", "tanh", "zscore")
TASK = "arithmetic"


@dataclass(frozen=True)
class DemoConfig:
    output_dir: str = "demo"
    """Where results.json, report.md, figures and each run's folder go."""
    methods: tuple[str, ...] = tuple(METHODS)
    """Method ids (see METHODS); --quick keeps log_ratio, power@1 and full_kl."""
    seeds: int = 1
    """Independent OPD runs per method (different data order and samples); results are mean ± std."""
    steps: int = 100
    """Optimizer steps per run."""
    batch_size: int = 64
    """Rollouts per step."""
    lr: float = 3e-4
    """AdamW learning rate (tiny models take a larger one than the paper's 5e-7). Measured over 100 steps
    (full_kl / power@1 / log_ratio Avg@8 from a 0.098 student): 3e-4 gave 0.207 / 0.120 / 0.120; 2e-3 wrecked
    every method within 20 steps."""
    max_new_tokens: int = 48
    """Rollout cap; the longest reference response is 36 tokens."""
    eval_every: int = 20
    """Evaluate the student during training every K steps (accuracy-vs-step figure)."""
    eval_problems: int = 100
    """Held-out problems for every evaluation."""
    n: int = 8
    """Samples per problem: Avg@8 / Pass@8 as in the paper."""
    task_seed: int = 0
    """Seed of the task split and of the teacher/student preparation (cached per seed)."""
    workers: int = 2
    """Runs trained at the same time, one process and one thread each."""

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise UserError(
                f"--methods {','.join(unknown) or '(empty)'}: expected method ids among {', '.join(METHODS)}"
            )
        for name in (
            "seeds",
            "steps",
            "batch_size",
            "max_new_tokens",
            "eval_every",
            "eval_problems",
            "n",
            "workers",
        ):
            if getattr(self, name) < 1:
                raise UserError(
                    f"--{name.replace('_', '-')}: expected an integer ≥ 1, got {getattr(self, name)}"
                )

    @classmethod
    def quick(cls, **overrides) -> DemoConfig:
        """Three methods, 60 steps: 80 s here once the task models are cached (their SFT takes ~270 s)."""
        return cls(**{"methods": QUICK_METHODS, "steps": 60, **overrides})


@dataclass
class MethodResult:
    reward: str
    alpha: float | None
    per_seed: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        out = {"reward": self.reward, "alpha": self.alpha, "seeds": len(self.per_seed)}
        for key in self.per_seed[0]:
            if key == "run_dir":
                out["run_dirs"] = [r["run_dir"] for r in self.per_seed]
                continue
            values = [r[key] for r in self.per_seed]
            out[key] = statistics.fmean(values)
            if len(values) > 1:
                out[f"{key}_std"] = statistics.stdev(values)
        return out


def run_demo(cfg: DemoConfig, *, progress: bool = True) -> dict:
    """Prepare the task, train every method, evaluate, write results.json, report.md and figures."""
    from .benchmarks import Problem
    from .evaluate import EvalConfig as HarnessConfig
    from .tasks.models import TaskConfig, load_task_model, prepare_task_models

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.set_num_threads(1)
    task = prepare_task_models(TaskConfig(seed=cfg.task_seed), progress=progress)
    test_rows = [json.loads(line) for line in task.test_jsonl.read_text().splitlines()][: cfg.eval_problems]
    problems = {TASK: [Problem(r["id"], r["problem"], [r["answer"]]) for r in test_rows]}
    harness = HarnessConfig(
        benchmarks=(TASK,), n=cfg.n, max_new_tokens=cfg.max_new_tokens, batch_size=256, seed=0
    )

    results: dict = {
        "config": _config_dict(cfg),
        "task": {"teacher_dir": str(task.teacher_dir), "student_dir": str(task.student_dir)},
    }
    for role, folder in (("teacher", task.teacher_dir), ("student_init", task.student_dir)):
        model, tokenizer = load_task_model(folder)
        results[role] = _evaluate(model, tokenizer, problems, harness)

    # Two runs at a time, one process and one thread each: the models are too small for intra-op threads.
    jobs = [(method, seed) for seed in range(cfg.seeds) for method in cfg.methods]
    rows = {}
    with (
        ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn")) as pool,
        tqdm(total=len(jobs), desc="demo runs", unit="run", disable=not progress) as bar,
    ):
        futures = {
            pool.submit(
                _run_method, _train_config(cfg, task, m, s, out / "runs" / f"{m}-seed{s}"), problems, harness
            ): (m, s)
            for m, s in jobs
        }
        for future in as_completed(futures):
            rows[futures[future]] = future.result()
            bar.update()
    methods: dict[str, MethodResult] = {}
    for method, seed in jobs:
        spec = METHODS[method]
        methods.setdefault(method, MethodResult(spec["name"], spec.get("alpha"))).per_seed.append(
            rows[method, seed]
        )

    results["methods"] = {m: r.summary() for m, r in methods.items()}
    results["reward_distributions"] = _initial_reward_distributions(task, test_rows, cfg, out)
    results["claims"] = claims(results, out)
    results["figures"] = _figures(results, out)
    results["wall_time_s"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "report.md").write_text(report(results))
    return results


def _config_dict(cfg: DemoConfig) -> dict:
    from dataclasses import asdict

    return asdict(cfg)


def _train_config(cfg: DemoConfig, task, method: str, seed: int, run_dir: Path) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(student=str(task.student_dir), teacher=str(task.teacher_dir)),
        rollout=RolloutConfig(max_new_tokens=cfg.max_new_tokens),
        reward=RewardConfig(**METHODS[method]),
        optim=OptimConfig(lr=cfg.lr),
        eval=EvalConfig(
            every=cfg.eval_every, n=1, temperature=0.6, max_new_tokens=cfg.max_new_tokens, batch_size=256
        ),
        run=RunConfig(
            data=str(task.train_jsonl),
            output_dir=str(run_dir),
            max_steps=cfg.steps,
            batch_size=cfg.batch_size,
            seed=seed,
            save_every=0,
            positions_every=5,
        ),
    )


def _run_method(train_cfg: TrainConfig, problems: dict, harness) -> dict:
    """One method in a worker process: `poweropd train` in process, then Avg@8 / Pass@8 / length."""
    import shutil

    from transformers.utils import logging

    from .tasks.models import load_task_model
    from .train import train

    torch.set_num_threads(1)
    logging.disable_progress_bar()
    shutil.rmtree(train_cfg.run.output_dir, ignore_errors=True)  # the demo owns its run folders
    final = train(train_cfg, progress=False, eval_problems=problems)
    model, tokenizer = load_task_model(final)
    row = _evaluate(model, tokenizer, problems, harness)
    row.update(_run_extremes(Path(train_cfg.run.output_dir)))
    row["run_dir"] = train_cfg.run.output_dir
    return row


def _evaluate(model, tokenizer, problems, harness) -> dict:
    from .evaluate import evaluate_model

    results, _ = evaluate_model(model, tokenizer, problems, harness, progress=False)
    row = results[TASK]
    return {key: row[key] for key in (f"avg@{harness.n}", f"pass@{harness.n}", "mean_length")}


def _read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _run_extremes(run_dir: Path) -> dict:
    rows = _read_metrics(run_dir)
    return {
        "grad_norm_max": max(r["grad/norm"] for r in rows),
        "reward_min": min(r["reward/min"] for r in rows),
        "reward_max": max(r["reward/max"] for r in rows),
        "log_ratio_min": min(r["log_ratio/min"] for r in rows),
    }


def _initial_reward_distributions(task, test_rows: list[dict], cfg: DemoConfig, out: Path) -> dict:
    """Every reward on the initial student's own rollouts (one sample per held-out prompt), as statistics."""
    from .diagnostics import histogram, position_stats, reward_table, reward_values, sample_and_score
    from .plots import position_figure, reward_histogram
    from .tasks.models import load_task_model

    student, tokenizer = load_task_model(task.student_dir)
    teacher, _ = load_task_model(task.teacher_dir)
    torch.manual_seed(0)
    scored = sample_and_score(
        student,
        teacher,
        tokenizer,
        [r["problem"] for r in test_rows],
        max_new_tokens=cfg.max_new_tokens,
        batch_size=128,
    )
    alphas = [METHODS[m]["alpha"] for m in METHODS if METHODS[m]["name"] == "power"]
    args = (scored.teacher_logp_BT, scored.student_logp_BT, scored.mask_BT)
    values = reward_values(*args, alphas)
    mask = scored.mask_BT.bool()
    reward_histogram({k: histogram(v[mask]) for k, v in values.items()}, out / "reward_distributions.png")
    positions = {k: position_stats(values[k], mask) for k in ("log_ratio", "power@1")}
    position_figure(positions, out / "reward_positions.png")
    return {"stats": reward_table(*args, alphas), "positions": positions}


# ---------------------------------------------------------------------------------------------------
# Claims: each a verdict computed from the numbers, with the numbers shown
# ---------------------------------------------------------------------------------------------------
def _verdict(holds: bool | None) -> str:
    return {True: "holds", False: "does not hold", None: "inconclusive"}[holds]


def _power_methods(methods: dict) -> list[str]:
    return sorted((m for m in methods if methods[m]["reward"] == "power"), key=lambda m: methods[m]["alpha"])


def claims(results: dict, out: Path) -> dict:
    methods = results["methods"]
    powers = _power_methods(methods)
    stats = results["reward_distributions"]["stats"]
    c = {}

    # C1: heavy negative tail of the log ratio; power rewards within [−1, 1]
    lr = stats["log_ratio"]
    power_range = [(stats[k]["min"], stats[k]["max"]) for k in stats if k.startswith("power@")]
    trained_power = [(methods[m]["reward_min"], methods[m]["reward_max"]) for m in powers]
    in_bounds = all(lo >= -1 and hi <= 1 for lo, hi in power_range + trained_power)
    # heavy negative tail: reaches far outside [−1, 1], and the 1% tail below is 3× longer than the 1% above
    heavy = lr["min"] < -5 and -lr["p01"] > 3 * max(lr["p99"], 0.1)
    c["C1"] = {
        "claim": "the log-ratio reward has a heavy negative tail while PowerOPD stays in [−1, 1]",
        "verdict": _verdict(heavy and in_bounds),
        "numbers": f"log ratio on the initial student's rollouts: min {lr['min']:.2f}, p01 {lr['p01']:.2f}, median {lr['p50']:.2f}, p99 {lr['p99']:.2f}, max {lr['max']:.2f}; "
        f"power rewards (all α, before and during training) within [{min(lo for lo, _ in power_range + trained_power):.3f}, {max(hi for _, hi in power_range + trained_power):.3f}]",
    }

    # C2: extremes at early positions
    buckets = results["reward_distributions"]["positions"]["log_ratio"]
    filled = [b for b in buckets if b["count"]]
    if len(filled) >= 2:
        first, rest = filled[0], filled[1:]
        holds = first["mean"] < min(b["mean"] for b in rest) and first["min"] <= min(b["min"] for b in rest)
        c["C2"] = {
            "claim": "extremes of the log ratio concentrate at early positions",
            "verdict": _verdict(holds),
            "numbers": "mean / min per position bucket: "
            + "; ".join(f"{b['start']}–{b['stop'] - 1}: {b['mean']:.2f} / {b['min']:.2f}" for b in filled),
        }
    else:
        c["C2"] = {
            "claim": "extremes of the log ratio concentrate at early positions",
            "verdict": _verdict(None),
            "numbers": "too few positions",
        }

    # C3: gradient norm of PowerOPD far below vanilla's peak
    if "log_ratio" in methods and powers:
        best = _best_power(methods, powers)
        ratio = methods[best]["grad_norm_max"] / methods["log_ratio"]["grad_norm_max"]
        c["C3"] = {
            "claim": "PowerOPD's gradient norm is far below vanilla OPD's peak",
            "verdict": _verdict(ratio < 0.25),
            "numbers": f"peak pre-clip gradient norm: log_ratio {methods['log_ratio']['grad_norm_max']:.3g}, {best} {methods[best]['grad_norm_max']:.3g} (ratio {ratio:.3f}; 'far below' = < 0.25)",
        }

    # C4: best power beats vanilla and every post-hoc baseline, and matches or beats full KL
    acc = (
        "avg@8"
        if any("avg@8" in m for m in methods.values())
        else next(k for k in next(iter(methods.values())) if k.startswith("avg@"))
    )
    if powers:
        best = _best_power(methods, powers, acc)
        noise = _noise(methods, acc, results["config"]["eval_problems"] * results["config"]["n"])
        beats = [b for b in BASELINES if b in methods]
        wins = {b: methods[best][acc] - methods[b][acc] for b in beats}
        kl_gap = methods[best][acc] - methods["full_kl"][acc] if "full_kl" in methods else None
        if beats or kl_gap is not None:
            # "beats" needs a margin above the noise; "matches" full KL means not below it by more than the noise
            fails = any(w < -noise for w in wins.values()) or (kl_gap is not None and kl_gap < -noise)
            unclear = any(abs(w) <= noise for w in wins.values())
            verdict = _verdict(False) if fails else _verdict(None) if unclear else _verdict(True)
            c["C4"] = {
                "claim": "PowerOPD (best α) beats vanilla and every post-hoc baseline, and matches or beats full-vocabulary KL",
                "verdict": verdict,
                "numbers": f"{acc}: {best} {methods[best][acc]:.3f}; "
                + ", ".join(
                    f"{m} {methods[m][acc]:.3f}"
                    for m in [*beats, *(["full_kl"] if kl_gap is not None else [])]
                )
                + f"; margin treated as noise: ±{noise:.3f}",
            }

    # C5: larger α shortens responses
    if len(powers) >= 2:
        alphas = [methods[m]["alpha"] for m in powers]
        lengths = [methods[m]["mean_length"] for m in powers]
        rho = _spearman(alphas, lengths)
        c["C5"] = {
            "claim": "larger α shortens responses",
            "verdict": _verdict(True if rho < -0.5 else False if rho > 0 else None),
            "numbers": "mean length by α: "
            + ", ".join(f"α={a:g}: {n:.1f}" for a, n in zip(alphas, lengths))
            + f" (Spearman ρ = {rho:.2f})",
        }
    return c


def _best_power(methods: dict, powers: list[str], acc: str = "avg@8") -> str:
    key = acc if acc in methods[powers[0]] else next(k for k in methods[powers[0]] if k.startswith("avg@"))
    return max(powers, key=lambda m: methods[m][key])


def _noise(methods: dict, acc: str, n_samples: int) -> float:
    """Differences below this are not called: the largest seed std when several seeds ran, else two binomial
    standard errors of an accuracy measured on ``n_samples`` graded samples (at least 0.02)."""
    stds = [m.get(f"{acc}_std", 0.0) for m in methods.values()]
    if any(stds):
        return max(stds)
    p = statistics.fmean(m[acc] for m in methods.values())
    return max(0.02, 2 * math.sqrt(p * (1 - p) / n_samples))


def _spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r

    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (sx * sy) if sx and sy else 0.0


# ---------------------------------------------------------------------------------------------------
# Figures and report
# ---------------------------------------------------------------------------------------------------
def _figures(results: dict, out: Path) -> list[str]:
    from .plots import load_run, run_dynamics_figure, run_grad_norm_figure

    runs = [load_run(d) for m in results["methods"].values() for d in m["run_dirs"][:1]]
    paths = [
        run_dynamics_figure(runs, out / "accuracy_length_vs_step.png"),
        run_grad_norm_figure(runs, out / "grad_norm_vs_step.png"),
        out / "reward_distributions.png",
        out / "reward_positions.png",
    ]
    return [str(Path(p).relative_to(out)) for p in paths]


def _fmt(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        return "–"
    std = row.get(f"{key}_std")
    return f"{value:.3f} ± {std:.3f}" if std is not None else f"{value:.3f}"


def results_table(results: dict) -> str:
    lines = [
        "| method | Avg@8 | Pass@8 | mean length | peak grad norm | reward min | reward max | log-ratio min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for role in ("teacher", "student_init"):
        r = results[role]
        lines.append(
            f"| {role.replace('_', ' ')} | {r['avg@8']:.3f} | {r['pass@8']:.3f} | {r['mean_length']:.1f} | – | – | – | – |"
        )
    for method, r in results["methods"].items():
        lines.append(
            f"| {method} | {_fmt(r, 'avg@8')} | {_fmt(r, 'pass@8')} | {r['mean_length']:.1f} | {r['grad_norm_max']:.3g} | "
            f"{r['reward_min']:.3g} | {r['reward_max']:.3g} | {r['log_ratio_min']:.3g} |"
        )
    return "\n".join(lines)


def report(results: dict) -> str:
    cfg = results["config"]
    parts = [
        "# poweropd demo",
        "",
        f"Task: synthetic step-by-step arithmetic; every method trains the same initial student for {cfg['steps']} steps "
        f"(batch {cfg['batch_size']}, lr {cfg['lr']:g}, {cfg['seeds']} seed(s)); Avg@8 / Pass@8 / mean length on "
        f"{cfg['eval_problems']} held-out problems (temperature 0.6, top-p 0.95). Wall time {results['wall_time_s']:.0f} s.",
        "",
        results_table(results),
        "",
        "## Claims of the paper, checked on these numbers",
        "",
    ]
    for key, claim in results["claims"].items():
        parts += [f"- **{key}** — {claim['claim']}: **{claim['verdict']}**. {claim['numbers']}"]
    parts += ["", "## Figures", ""] + [f"![{p}]({p})" for p in results["figures"]]
    return "\n".join(parts) + "\n"
