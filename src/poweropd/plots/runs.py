"""Figures of training runs (``poweropd plot RUN_DIR ...``) and of the demo's seeds (curves with bands).

Run directories hold ``metrics.jsonl`` (one JSON object per optimizer step), ``config.yaml`` (its
``reward`` section names the method) and, optionally, ``positions.jsonl`` (per-bucket reward extremes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..data import read_jsonl
from ..errors import UserError
from ..run import metric_names as M
from .diagnose import _colors, _save

# ---- training runs ----------------------------------------------------------------------------------------


@dataclass
class Run:
    """One training run directory, read: ``label`` names the method in legends."""

    path: Path
    label: str
    metrics: list[dict]
    positions: list[dict] = field(default_factory=list)


def run_label(run_dir: str | Path) -> str:
    """The method id (``power@10``, ``log_ratio``) from config.yaml's ``reward`` section; else the folder name."""
    import yaml

    run_dir = Path(run_dir)
    from ..config.sections import RewardConfig

    try:
        reward = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["reward"]
        return RewardConfig(**reward).label  # the method id: power@10, proximal@0.5, power@1:10, ...
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return run_dir.resolve().name


def load_run(run_dir: str | Path, *, what: str = "RUN_DIR") -> Run:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{what} {run_dir}: directory not found (expected a training run directory)")
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        raise UserError(f"{what} {run_dir}: expected a metrics.jsonl file in it (a training run directory)")
    metrics = [
        row
        for row in read_jsonl(metrics_path, required=(), what=what, allow_empty=True)
        if isinstance(row.get("step"), (int, float))
    ]
    if not metrics:
        raise UserError(f"{what} {metrics_path}: expected at least one row with a 'step'")
    positions_path = run_dir / "positions.jsonl"
    positions = (
        read_jsonl(positions_path, required=(), what=what, allow_empty=True)
        if positions_path.is_file()
        else []
    )
    return Run(run_dir, run_label(run_dir), metrics, positions)


def _distinct_labels(runs: list[Run]) -> None:
    # Two runs of the same method (seeds, learning rates) need their folder name to be told apart.
    labels = [r.label for r in runs]
    for run in runs:
        if labels.count(run.label) > 1:
            run.label = f"{run.label} ({run.path.resolve().name})"


def _series(metrics: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the rows that carry a finite ``key``."""
    pairs = [
        (row["step"], row[key])
        for row in metrics
        if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])
    ]
    steps, values = zip(*pairs) if pairs else ((), ())
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def _run_colors(runs: list[Run]) -> list:
    from matplotlib import colormaps

    return [colormaps["tab10"](i % 10) for i in range(len(runs))]


def _extremes_panel(ax, runs: list[Run], prefix: str, title: str) -> None:
    """Per run: p05–p95 band, mean as a solid line (when logged), min and max as thin dashed lines."""
    for run, color in zip(runs, _run_colors(runs)):
        label = run.label  # on the first artist of the run only: one legend entry per run
        steps, p05 = _series(run.metrics, f"{prefix}/p05")
        steps95, p95 = _series(run.metrics, f"{prefix}/p95")
        if len(steps) and np.array_equal(steps, steps95):
            ax.fill_between(steps, p05, p95, color=color, alpha=0.2, linewidth=0, label=label)
            label = None
        for key, style, width in (("mean", "-", 1.5), ("min", "--", 0.8), ("max", "--", 0.8)):
            x, y = _series(run.metrics, f"{prefix}/{key}")
            if len(x):
                ax.plot(x, y, style, color=color, linewidth=width, label=label)
                label = None
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set(title=title, xlabel="step")
    ax.legend(fontsize="small")


def run_rewards_figure(runs: list[Run], path: str | Path) -> Path:
    """Reward that was trained on (left) and the log ratio (right) per step: band p05–p95, dashed min/max."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    _extremes_panel(left, runs, "reward", "training reward per token")
    _extremes_panel(right, runs, "log_ratio", "log π_T − log π_S per token")
    fig.suptitle("band: p05–p95, solid: mean, dashed: min and max")
    return _save(fig, path)


def eval_keys(runs: list[Run]) -> list[str]:
    """Every ``eval/<benchmark>/<metric>`` key present in any run, sorted."""
    return sorted({k for run in runs for row in run.metrics for k in row if k.startswith(M.EVAL)})


def run_dynamics_figure(runs: list[Run], path: str | Path) -> Path:
    """Accuracy (Avg@n) and response length of every evaluated benchmark vs step, and the rollouts' length."""
    keys = [k for k in eval_keys(runs) if "/avg@" in k or k.endswith("/mean_length")] + [
        M.RESPONSE_LENGTH_MEAN
    ]
    fig = Figure(figsize=(4.5 * len(keys), 4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(keys)))
    for ax, key in zip(axes, keys):
        for run, color in zip(runs, _run_colors(runs)):
            x, y = _series(run.metrics, key)
            if len(x):
                ax.plot(x, y, "o-" if key.startswith(M.EVAL) else "-", color=color, label=run.label)
        ax.set(title=key, xlabel="step", ylabel="tokens" if "length" in key else "accuracy")
        ax.legend(fontsize="small")
    return _save(fig, path)


def run_grad_norm_figure(runs: list[Run], path: str | Path) -> Path:
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for run, color in zip(runs, _run_colors(runs)):
        x, y = _series(run.metrics, M.GRAD_NORM)
        if len(x):
            ax.plot(x, y, color=color, label=run.label)
    ax.set(title="gradient norm (before clipping)", xlabel="step", ylabel="‖g‖", yscale="log")
    ax.legend(fontsize="small")
    return _save(fig, path)


def run_positions_figure(runs: list[Run], path: str | Path) -> Path:
    """Do the extremes at early positions persist? Per run (row): min of the log ratio and of the trained
    reward in each position bucket, vs step; one line per bucket, early buckets dark."""
    runs = [r for r in runs if r.positions]
    fig = Figure(figsize=(11, 3.5 * max(len(runs), 1)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(max(len(runs), 1), 2, squeeze=False))
    for run, (left, right) in zip(runs, axes):
        buckets = sorted({(b["start"], b["stop"]) for row in run.positions for b in row.get("buckets", [])})
        for (start, stop), color in zip(buckets, _colors(len(buckets), "plasma")):
            for ax, key in ((left, "log_ratio_min"), (right, "reward_min")):
                points = [
                    (row["step"], b[key])
                    for row in run.positions
                    for b in row.get("buckets", [])
                    if (b["start"], b["stop"]) == (start, stop) and isinstance(b.get(key), (int, float))
                ]
                if points:
                    ax.plot(*zip(*points), color=color, label=f"tokens {start}–{stop - 1}")
        left.set(title=f"{run.label}: min log ratio per position bucket", xlabel="step")
        right.set(title=f"{run.label}: min training reward per position bucket", xlabel="step")
        left.legend(fontsize="x-small")
    return _save(fig, path)


def plot_runs(run_dirs: list[str | Path], output_dir: str | Path) -> list[Path]:
    """All run figures for the runs overlaid; returns the written paths."""
    runs = [load_run(d) for d in run_dirs]
    _distinct_labels(runs)
    output_dir = Path(output_dir)
    paths = [
        run_rewards_figure(runs, output_dir / "rewards.png"),
        run_dynamics_figure(runs, output_dir / "dynamics.png"),
        run_grad_norm_figure(runs, output_dir / "grad_norm.png"),
    ]
    if any(r.positions for r in runs):
        paths.append(run_positions_figure(runs, output_dir / "positions.png"))
    return paths


# ---- seed bands (the demo) ------------------------------------------------------------------------------


@dataclass
class SeedCurves:
    """One method's curve over several seeds: ``values_SN[s][i]`` at ``steps_N[i]`` for seed s."""

    label: str
    steps_N: list[float]
    values_SN: list[list[float]]

    def mean_and_band(self, smooth: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(steps, mean over seeds, standard error of that mean); the error is 0 for one seed. ``smooth`` > 1
        first averages each seed's curve over a trailing window of that many points."""
        values = np.asarray(self.values_SN, dtype=float)
        if smooth > 1:
            kernel = np.ones(smooth)
            counts = np.convolve(np.ones(values.shape[1]), kernel)[: values.shape[1]]
            values = np.stack([np.convolve(v, kernel)[: len(v)] / counts for v in values])
        mean = values.mean(axis=0)
        se = values.std(axis=0, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else np.zeros_like(mean)
        return np.asarray(self.steps_N, dtype=float), mean, se


def seed_band_figure(
    panels: list[dict], path: str | Path, *, title: str | None = None, width: float = 5.5
) -> Path:
    """Panels side by side; each ``{"curves": [SeedCurves], "title", "ylabel", "log": bool, "hlines":
    {label: y}, "colors": [...], "smooth": K}``. A line is the mean over seeds, its band ± one standard error
    of that mean."""
    fig = Figure(figsize=(width * len(panels), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, panel in zip(axes, panels):
        colors = panel.get("colors") or _colors(len(panel["curves"]), "tab10")
        for curves, color in zip(panel["curves"], colors):
            steps, mean, se = curves.mean_and_band(panel.get("smooth", 1))
            n = len(curves.values_SN)
            ax.plot(steps, mean, "-", color=color, linewidth=1.8, label=f"{curves.label} ({n} seeds)")
            ax.fill_between(steps, mean - se, mean + se, color=color, alpha=0.2, linewidth=0)
        for label, y in panel.get("hlines", {}).items():
            ax.axhline(y, color="grey", linestyle="--", linewidth=1.0, label=label)
        if panel.get("log"):
            ax.set_yscale("log")
        ax.set(title=panel["title"], xlabel="step", ylabel=panel["ylabel"])
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
