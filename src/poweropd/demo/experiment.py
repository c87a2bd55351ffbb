"""`poweropd demo`: the paper's comparison on the embedded arithmetic task, every method from one student, on a CPU.

Same code path as a real run: ``train()`` (the loop of training/loop.py) for each method and seed, ``evaluate_model``
(the harness of `poweropd eval`) for Avg@8 / Pass@8 / length, the task's shipped teacher and student from
``poweropd.demo.tasks``. Choices made while training (the in-training curves, the best α) use the validation
problems; the final numbers use the test problems once. ``demo_report`` turns the numbers into the paper's
claims, each with its effect and standard error across seeds, and into the report.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config.sections import (
    EvalConfig,
    ModelConfig,
    OptimConfig,
    RewardConfig,
    RolloutConfig,
    RunConfig,
    TrainConfig,
)
from ..errors import UserError
from ..run import metric_names as M
from .report import BASELINES

# Method ids are RewardConfig labels: log_ratio, power@10, proximal@0.5, power@1:10 (an α schedule),
# power@10+entropy:0.5 (token selection), full_kl; any registered reward works the same way.
PAPER_ALPHAS = (0.1, 0.5, 1.0, 5.0, 10.0, 50.0, 100.0, 500.0)
DEFAULT_METHODS = (*BASELINES, "power@0.1", "power@1", "power@10", "full_kl")
"""Every baseline, three α a decade apart (chosen before any comparison), and full-vocabulary KL."""
QUICK_METHODS = ("log_ratio", "power@1", "full_kl")
FULL_METHODS = (*BASELINES, *(f"power@{a:g}" for a in PAPER_ALPHAS), "full_kl")
TASK = "arithmetic"


TEACHER_TEMPERATURE = "+teacher-temperature:"
"""A method id's suffix that sets --teacher-temperature for its runs: power@10+teacher-temperature:2."""


def method_config(method: str) -> RewardConfig:
    """The reward section of a method id; a bad id is a one-line error naming it."""
    try:
        method_teacher_temperature(method)
        return RewardConfig.from_label(method.partition(TEACHER_TEMPERATURE)[0])
    except UserError as err:
        raise UserError(
            f"--methods {method}: expected a method id such as log_ratio, power@10, proximal@0.5, power@1:10, "
            f"power@10+entropy:0.5, log_ratio+kl or power@10+teacher-temperature:2 ({err})"
        ) from None


def method_teacher_temperature(method: str) -> float | None:
    """The teacher temperature a method id sets (``+teacher-temperature:T``), None: the rollout's."""
    _, found, value = method.partition(TEACHER_TEMPERATURE)
    if not found:
        return None
    try:
        return float(value)
    except ValueError:
        raise UserError(f"{TEACHER_TEMPERATURE[1:]}{value}: expected a number > 0") from None


@dataclass(frozen=True)
class DemoConfig:
    output_dir: str = "demo"
    """Where results.json, report.md, figures and each run's folder go."""
    methods: tuple[str, ...] = DEFAULT_METHODS
    """Method ids (``method_config``); --quick: log_ratio, power@1, full_kl; --full: every baseline and α."""
    seeds: int = 3
    """Independent OPD runs per method (data order and samples); results are mean ± std, claims are tested
    on the paired per-seed differences."""
    steps: int = 80
    """Optimizer steps per run."""
    batch_size: int = 32
    """Rollouts per step."""
    lr: float = 3e-4
    """AdamW learning rate of every run (docs/testbed.md: 1e-3 gave lower final accuracy for 3 of 4
    methods)."""
    max_new_tokens: int = 64
    """Rollout cap: the longest base-style response (three steps, each checked) is 63 tokens."""
    eval_every: int = 20
    """Evaluate on the validation problems every K steps (the accuracy-vs-step figure)."""
    validation_problems: int = 200
    """Validation problems per in-training evaluation (one sample each at temperature 0.6)."""
    test_problems: int = 300
    """Test problems for the final Avg@8 / Pass@8 / length."""
    n: int = 8
    """Samples per test problem: Avg@8 / Pass@8 as in the paper."""
    task_seed: int = 0
    """Seed of the task split and models; 0 is the shipped pair, others are trained and cached on first use."""
    retrain_task_models: bool = False
    """Train the teacher and student by the recipe (into the cache) instead of using the shipped files."""
    workers: int = 2
    """Runs trained at the same time, one process and one thread each."""
    rollout_engine: str = "loop"
    """Sampler of the runs and evaluations (engines.ENGINES): loop gives the same samples as ``generate``,
    3–5% faster on these models (benchmarks/rollout_bench.py)."""

    def __post_init__(self):
        from ..rollout.engines import ENGINES

        if not self.methods:
            raise UserError("--methods: expected at least one method id")
        for method in self.methods:
            method_config(method)
        for name in ("seeds", "steps", "batch_size", "max_new_tokens", "eval_every", "validation_problems",
                     "test_problems", "n", "workers"):  # fmt: skip
            if getattr(self, name) < 1:
                raise UserError(
                    f"--{name.replace('_', '-')}: expected an integer ≥ 1, got {getattr(self, name)}"
                )
        if self.lr <= 0:
            raise UserError(f"--lr: expected a number > 0, got {self.lr}")
        if self.rollout_engine not in ENGINES:
            raise UserError(f"--rollout-engine {self.rollout_engine}: expected one of {', '.join(ENGINES)}")

    @classmethod
    def quick(cls, **overrides) -> DemoConfig:
        """Three methods, three seeds, 60 steps."""
        return cls(**{"methods": QUICK_METHODS, "steps": 60, **overrides})

    @classmethod
    def full(cls, **overrides) -> DemoConfig:
        """The paper's α sweep and every baseline."""
        return cls(**{"methods": FULL_METHODS, **overrides})


def run_demo(cfg: DemoConfig, *, progress: bool = True) -> dict:
    """Prepare the task, train every method and seed, evaluate, write results.json, report.md and figures."""
    from . import report as demo_report
    from .tasks import floatpath
    from .tasks.recipe import TaskConfig, prepare_task_models

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    task = prepare_task_models(
        TaskConfig(seed=cfg.task_seed), retrain=cfg.retrain_task_models, progress=progress
    )
    _check_engine(cfg.rollout_engine, task)
    validation = _problems(task.validation_jsonl, cfg.validation_problems)
    test = _problems(task.test_jsonl, cfg.test_problems)
    results: dict = {
        "config": asdict(cfg),
        "task": {
            "teacher_dir": _shown(task.teacher_dir),
            "student_dir": _shown(task.student_dir),
            "shipped": task.shipped,
        },  # fmt: skip
    }
    runs = [(m, s) for s in range(cfg.seeds) for m in cfg.methods]
    with (
        floatpath.pinned_pool(cfg.workers) as pool,
        tqdm(total=len(runs) + 4, desc="demo", unit="job", disable=not progress) as bar,
    ):
        # the short jobs first, so their results are there while the runs train
        setup = {
            "teacher": pool.submit(_evaluate_folder, task.teacher_dir, test, _test_harness(cfg)),
            "student_init": pool.submit(_evaluate_folder, task.student_dir, test, _test_harness(cfg)),
            "student_init_validation": pool.submit(
                _evaluate_folder, task.student_dir, validation, _validation_harness(cfg)
            ),
            "reward_distributions": pool.submit(_initial_reward_distributions, task, test, cfg, out),
        }
        futures = {
            pool.submit(_run_method, _train_config(cfg, task, m, s, out), validation, test, cfg): (m, s)
            for m, s in runs
        }
        for key, future in setup.items():
            results[key] = future.result()
            bar.update()
        per_run = {}
        for future, key in futures.items():
            per_run[key] = future.result()
            bar.update()

    results["methods"] = {m: _summarise(m, [per_run[m, s] for s in range(cfg.seeds)]) for m in cfg.methods}
    results["claims"] = demo_report.claims(results)
    results["criterion"] = demo_report.criterion(results)
    results["figures"] = demo_report.figures(results, out)
    results["wall_time_s"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "report.md").write_text(demo_report.report(results))
    return results


def _check_engine(engine: str, task) -> None:
    """``--rollout-engine vllm`` on models vLLM cannot run is one line here, not a failure in every worker."""
    if engine != "vllm":
        return
    from ..rollout.vllm_engine import check_supported
    from .tasks.sft import load_task_model

    for name, folder in (("student", task.student_dir), ("teacher", task.teacher_dir)):
        model, _ = load_task_model(folder)
        check_supported(model, "cpu", f"the task {name} ({_shown(folder)})")


def _shown(path: Path) -> str:
    """A path as results.json records it: relative to the working folder when inside it (no machine paths)."""
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _problems(path: Path, limit: int) -> list:
    from ..eval.benchmarks import Problem

    rows = [json.loads(line) for line in path.read_text().splitlines()][:limit]
    return [Problem(r["id"], r["problem"], [r["answer"]]) for r in rows]


def _test_harness(cfg: DemoConfig) -> EvalConfig:
    return EvalConfig(benchmarks=(TASK,), n=cfg.n, max_new_tokens=cfg.max_new_tokens, batch_size=256,
                         seed=0, engine=cfg.rollout_engine)  # fmt: skip


def _validation_harness(cfg: DemoConfig) -> EvalConfig:
    return EvalConfig(benchmarks=(TASK,), n=1, max_new_tokens=cfg.max_new_tokens, batch_size=256,
                         seed=0, engine=cfg.rollout_engine)  # fmt: skip


def _train_config(cfg: DemoConfig, task, method: str, seed: int, out: Path) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(
            student=str(task.student_dir), teacher=str(task.teacher_dir), device="cpu",
            teacher_temperature=method_teacher_temperature(method),
        ),  # the pinned CPU float path; fmt: skip
        rollout=RolloutConfig(max_new_tokens=cfg.max_new_tokens, engine=cfg.rollout_engine),
        reward=method_config(method),
        optim=OptimConfig(lr=cfg.lr),
        eval=EvalConfig(
            every=cfg.eval_every, n=1, temperature=0.6, max_new_tokens=cfg.max_new_tokens, batch_size=256
        ),  # fmt: skip
        run=RunConfig(
            data=str(task.train_jsonl),
            output_dir=str(out / "runs" / f"{method}-seed{seed}"),
            max_steps=cfg.steps,
            batch_size=cfg.batch_size,
            seed=seed,
            save_every=0,
            positions_every=10,
        ),
    )


# ---- jobs (each in a worker process on the pinned float path, one thread) --------------------------------


def _worker_setup() -> None:
    """One torch thread (these models are too small for more) and no per-file loading bars from transformers."""
    from transformers.utils import logging

    torch.set_num_threads(1)
    logging.disable_progress_bar()


def _evaluate(model, tokenizer, problems: list, harness) -> dict:
    from ..eval.harness import evaluate_model

    results, _ = evaluate_model(model, tokenizer, {TASK: problems}, harness, progress=False)
    row = results[TASK]
    return {
        "avg@n": row[f"avg@{harness.n}"],
        "pass@n": row[f"pass@{harness.n}"],
        "mean_length": row["mean_length"],
        "truncated_frac": row["truncated_frac"],
    }


def _evaluate_folder(folder: Path, problems: list, harness) -> dict:
    from .tasks.sft import load_task_model

    _worker_setup()
    return _evaluate(*load_task_model(folder), problems, harness)


def _run_method(train_cfg: TrainConfig, validation: list, test: list, cfg: DemoConfig) -> dict:
    """One method and seed: `poweropd train` in process (evaluating on the validation problems every K
    steps), then Avg@8 / Pass@8 / length of the final student on the test problems."""
    import shutil

    from ..training.loop import train
    from .tasks.sft import load_task_model

    _worker_setup()
    shutil.rmtree(train_cfg.run.output_dir, ignore_errors=True)  # the demo owns its run folders
    final = train(train_cfg, progress=False, eval_problems={TASK: validation})
    row = _evaluate(*load_task_model(final), test, _test_harness(cfg))
    metrics = [json.loads(line) for line in (Path(train_cfg.run.output_dir) / "metrics.jsonl").open()]
    evaluated = [m for m in metrics if M.eval_key(TASK, "avg@1") in m]
    row.update(
        {
            "grad_norm_max": max(m[M.GRAD_NORM] for m in metrics),
            "reward_min": min(m[M.REWARD_MIN] for m in metrics),
            "reward_max": max(m[M.REWARD_MAX] for m in metrics),
            "log_ratio_min": min(m[M.LOG_RATIO_MIN] for m in metrics),
            "validation_final": evaluated[-1][M.eval_key(TASK, "avg@1")],
            "curves": {
                "eval_steps": [m["step"] for m in evaluated],
                "validation": [m[M.eval_key(TASK, "avg@1")] for m in evaluated],
                "length": [m[M.RESPONSE_LENGTH_MEAN] for m in metrics],
                "grad_norm": [m[M.GRAD_NORM] for m in metrics],
            },
            "run_dir": train_cfg.run.output_dir,
        }
    )
    return row


def _initial_reward_distributions(task, test: list, cfg: DemoConfig, out: Path) -> dict:
    """Every reward on the initial student's own rollouts (one sample per test prompt, temperature 1, as in
    training): ``reward_distributions`` of them."""
    from ..diagnostics import sample_and_score
    from .tasks.sft import load_task_model

    _worker_setup()
    student, tokenizer = load_task_model(task.student_dir)
    teacher, _ = load_task_model(task.teacher_dir)
    torch.manual_seed(0)
    scored = sample_and_score(
        student,
        teacher,
        tokenizer,
        [p.problem for p in test],
        max_new_tokens=cfg.max_new_tokens,
        batch_size=128,
    )
    return reward_distributions(scored, list(PAPER_ALPHAS), out)


def reward_distributions(scored, alphas: list[float], out: Path) -> dict:
    """Every reward on scored rollouts (``diagnostics.sample_and_score``): statistics, the early share of the
    negative tail (claims C1, C2), and the figures ``reward_distributions.png`` and ``reward_positions.png``."""
    from ..diagnostics import early_share, histogram, position_stats, reward_table, reward_values
    from ..plots.diagnose import position_figure, reward_histogram

    args = (scored.teacher_logp_BT, scored.student_logp_BT, scored.mask_BT)
    values = reward_values(*args, alphas)
    mask = scored.mask_BT.bool()
    reward_histogram({k: histogram(v[mask]) for k, v in values.items()}, out / "reward_distributions.png")
    positions = {k: position_stats(values[k], mask) for k in ("log_ratio", "power@1")}
    position_figure(positions, out / "reward_positions.png")
    log_ratio_BT = values["log_ratio"]
    return {
        "stats": reward_table(*args, alphas),
        "positions": positions,
        "early_share": early_share(log_ratio_BT, mask),
        "below_counts": {f"{t:g}": int((mask & (log_ratio_BT < t)).sum()) for t in (-5.0, -10.0)},
        "tokens": int(mask.sum()),
    }


# ---- aggregation ---------------------------------------------------------------------------------------


def _summarise(method: str, rows: list[dict]) -> dict:
    """Mean and std over seeds of every number, the per-seed values (claims pair them by seed), the curves."""
    reward = method_config(method)
    out: dict = {
        "reward": reward.name,
        "alpha": reward.alpha if reward.record is not None and "alpha" in reward.record.hparams else None,
        "alpha_end": reward.alpha_end,
        "token_select": reward.token_select,
        "baseline": reward.baseline,
        "teacher_temperature": method_teacher_temperature(method),
        "seeds": len(rows),
    }
    for key in ("avg@n", "pass@n", "mean_length", "truncated_frac", "grad_norm_max", "reward_min",
                "reward_max", "log_ratio_min", "validation_final"):  # fmt: skip
        values = [r[key] for r in rows]
        out[key] = statistics.fmean(values)
        out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.setdefault("per_seed", {})[key] = values
    out["curves"] = {
        "eval_steps": rows[0]["curves"]["eval_steps"],
        **{k: [r["curves"][k] for r in rows] for k in ("validation", "length", "grad_norm")},
    }
    out["run_dirs"] = [r["run_dir"] for r in rows]
    return out
