"""Figures from plain data (``diagnostics.py`` output and training run directories), and the diagnose report.

Each figure function writes one PNG and returns its path. Matplotlib's object API (``Figure`` + Agg canvas)
is used instead of ``pyplot``: no global state, no display needed.

Run directories hold ``metrics.jsonl`` (one JSON object per optimizer step), ``config.yaml`` (its
``reward`` section names the method) and, optionally, ``positions.jsonl`` (per-bucket reward extremes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from .data import read_jsonl
from .diagnostics import reward_surface
from .errors import UserError

DPI = 120
LOG_RATIO_COLOR = "tab:red"


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _bucket_label(bucket: dict) -> str:
    return f"{bucket['start']}–{bucket['stop'] - 1}"


def _power_names(names) -> list[str]:
    return sorted((n for n in names if n.startswith("power@")), key=lambda n: float(n.split("@")[1]))


def _alpha_label(name: str) -> str:
    return f"power α={name.split('@')[1]}" if name.startswith("power@") else name


def _colors(n: int, cmap: str = "viridis") -> list:
    from matplotlib import colormaps

    return [colormaps[cmap](x) for x in np.linspace(0.1, 0.85, max(n, 1))]


# ---- diagnose figures -------------------------------------------------------------------------------------


def reward_histogram(histograms: dict[str, dict], path: str | Path) -> Path:
    """Log-count histograms: the log ratio (left, its own axis) and every ``power@α`` reward (right, [−1, 1]).

    ``histograms`` maps a reward name to ``{"edges", "counts"}`` (``diagnostics.histogram``).
    """
    fig = Figure(figsize=(11, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    if "log_ratio" in histograms:
        h = histograms["log_ratio"]
        left.stairs(h["counts"], h["edges"], fill=True, color=LOG_RATIO_COLOR, alpha=0.7)
    left.set(title="vanilla OPD reward: log π_T − log π_S", xlabel="reward per token", ylabel="tokens")
    powers = _power_names(histograms)
    for name, color in zip(powers, _colors(len(powers))):
        h = histograms[name]
        right.stairs(h["counts"], h["edges"], color=color, linewidth=1.5, label=_alpha_label(name))
    right.set(title="PowerOPD reward: π_T^α − π_S^α", xlabel="reward per token", xlim=(-1.05, 1.05))
    if powers:
        right.legend(loc="upper left")
    for ax in (left, right):
        ax.set_yscale("log")
        ax.axvline(0, color="grey", linewidth=0.8)
    return _save(fig, path)


def position_figure(positions: dict[str, list[dict]], path: str | Path) -> Path:
    """Mean (line) and min–max range (band) per position bucket: log ratio (left), power rewards (right).

    ``positions`` maps a reward name to ``diagnostics.position_stats`` rows.
    """
    fig = Figure(figsize=(11, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    powers = _power_names(positions)
    panels = [(left, ["log_ratio"], [LOG_RATIO_COLOR]), (right, powers, _colors(len(powers)))]
    for ax, names, colors in panels:
        for name, color in zip(names, colors):
            rows = [r for r in positions.get(name, []) if r["count"]]
            if not rows:
                continue
            x = np.arange(len(rows))
            ax.fill_between(x, [r["min"] for r in rows], [r["max"] for r in rows], color=color, alpha=0.15)
            ax.plot(x, [r["mean"] for r in rows], "o-", color=color, label=f"{_alpha_label(name)} mean")
            ax.plot(x, [r["min"] for r in rows], "v", color=color, markersize=4)
            ax.set_xticks(x, [_bucket_label(r) for r in rows])
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xlabel("response position (token index)")
        if names:
            ax.legend(loc="lower right", fontsize="small")
    left.set(title="log ratio by position: mean, band = min..max", ylabel="reward per token")
    right.set(title="power rewards by position: mean, band = min..max")
    return _save(fig, path)


def reward_surface_figure(alphas: list[float], path: str | Path, *, grid: int = 200) -> Path:
    """Heatmaps of the reward over (π_S, π_T) ∈ (0, 1]²: the log ratio (α → 0, its own colour scale)
    and r = π_T^α − π_S^α for each α (shared scale [−1, 1]). Diverging colours: red = penalty."""
    probs_N = np.linspace(1.0 / grid, 1.0, grid)
    extent = (probs_N[0], 1.0, probs_N[0], 1.0)
    fig = Figure(figsize=(4 * (len(alphas) + 1) + 1, 4.2), layout="constrained")
    axes = fig.subplots(1, len(alphas) + 1, sharey=True)

    log_ratio_NN = reward_surface("log_ratio", probs_N)
    bound = float(np.abs(log_ratio_NN).max())
    image = axes[0].imshow(
        log_ratio_NN, origin="lower", extent=extent, cmap="RdBu", norm=TwoSlopeNorm(0.0, -bound, bound)
    )
    fig.colorbar(image, ax=axes[0], shrink=0.85, label="log π_T − log π_S")
    axes[0].set_title("α → 0: log ratio (vanilla OPD)")

    for ax, alpha in zip(axes[1:], alphas):
        image = ax.imshow(
            reward_surface("power", probs_N, alpha=float(alpha)),
            origin="lower",
            extent=extent,
            cmap="RdBu",
            vmin=-1,
            vmax=1,
        )
        ax.set_title(f"α = {alpha:g}: π_T^α − π_S^α")
    if alphas:
        fig.colorbar(image, ax=list(axes[1:]), shrink=0.85, label="reward")
    for ax in axes:
        ax.set_xlabel("π_S(token)")
    axes[0].set_ylabel("π_T(token)")
    return _save(fig, path)


# ---- training runs ----------------------------------------------------------------------------------------


@dataclass
class Run:
    """One training run directory, read: ``label`` names the method in legends."""

    path: Path
    label: str
    metrics: list[dict]
    positions: list[dict] = field(default_factory=list)


def run_label(run_dir: str | Path) -> str:
    """``power α=10`` / ``log_ratio`` from config.yaml's ``reward`` section; the folder name otherwise."""
    import yaml

    run_dir = Path(run_dir)
    try:
        reward = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["reward"]
        name = reward["name"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return run_dir.resolve().name
    alpha = reward.get("alpha") if isinstance(reward, dict) else None
    return f"power α={alpha:g}" if name == "power" and isinstance(alpha, (int, float)) else str(name)


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
    return sorted({k for run in runs for row in run.metrics for k in row if k.startswith("eval/")})


def run_dynamics_figure(runs: list[Run], path: str | Path) -> Path:
    """Accuracy (Avg@n) and response length of every evaluated benchmark vs step, and the rollouts' length."""
    keys = [k for k in eval_keys(runs) if "/avg@" in k or k.endswith("/mean_length")] + [
        "response_length/mean"
    ]
    fig = Figure(figsize=(4.5 * len(keys), 4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(keys)))
    for ax, key in zip(axes, keys):
        for run, color in zip(runs, _run_colors(runs)):
            x, y = _series(run.metrics, key)
            if len(x):
                ax.plot(x, y, "o-" if key.startswith("eval/") else "-", color=color, label=run.label)
        ax.set(title=key, xlabel="step", ylabel="tokens" if "length" in key else "accuracy")
        ax.legend(fontsize="small")
    return _save(fig, path)


def run_grad_norm_figure(runs: list[Run], path: str | Path) -> Path:
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for run, color in zip(runs, _run_colors(runs)):
        x, y = _series(run.metrics, "grad/norm")
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


# ---- the diagnose report ----------------------------------------------------------------------------------


def _fmt(x, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def diagnose_report(summary: dict) -> str:
    """Markdown that states the findings of ``poweropd diagnose`` in numbers (from summary.json)."""
    meta, rewards, early = summary["meta"], summary["rewards"], summary["early_positions"]
    lr = rewards["log_ratio"]
    lines = [
        "# Reward diagnostics",
        "",
        f"Teacher `{meta['teacher']}`, student `{meta['student']}`: {meta['num_prompts']} prompts × "
        f"{meta['samples_per_prompt']} sample(s), up to {meta['max_new_tokens']} new tokens at temperature "
        f"{meta['temperature']:g}; {meta['num_tokens']} scored tokens. Mean response length "
        f"{_fmt(meta['response_length']['mean'], '.1f')} tokens; {_pct(meta['truncated_fraction'])} of the "
        "rollouts hit the token cap without a stop token.",
        "",
        "## Findings",
        "",
        f"- The log ratio log π_T − log π_S has mean {_fmt(lr['mean'])}, median {_fmt(lr['p50'])}, and goes down "
        f"to {_fmt(lr['min'])} (p1 {_fmt(lr['p01'])}); {_pct(lr.get('frac_below_-5'))} of tokens are below −5, "
        f"{_pct(lr.get('frac_below_-10'))} below −10, {_pct(lr.get('frac_below_-20'))} below −20.",
        f"- Tokens 0–{early['stop'] - 1} are {_pct(early['frac_tokens'])} of tokens but hold "
        f"{_pct(early.get('share_below_-5'))} of those below −5 and {_pct(early.get('share_below_-10'))} of "
        "those below −10.",
    ]
    by_position = ", ".join(
        f"{_fmt(b['mean'])} ({_bucket_label(b)})" for b in summary["positions"]["log_ratio"] if b["count"]
    )
    lines.append(f"- Mean log ratio by position bucket: {by_position}.")
    for name in _power_names(rewards):
        s = rewards[name]
        lines.append(
            f"- {_alpha_label(name)}: range [{_fmt(s['min'], '.3f')}, {_fmt(s['max'], '.3f')}], mean "
            f"{_fmt(s['mean'], '.4f')}, median {_fmt(s['p50'], '.4f')}, p05–p95 "
            f"[{_fmt(s['p05'], '.3f')}, {_fmt(s['p95'], '.3f')}]."
        )
    for name in ("clip", "tanh", "zscore"):
        if name in rewards:
            s = rewards[name]
            lines.append(
                f"- {name}: range [{_fmt(s['min'])}, {_fmt(s['max'])}], mean {_fmt(s['mean'], '.3f')}, "
                f"p05 {_fmt(s['p05'])}."
            )
    lines += [
        "",
        "## Most negative log-ratio tokens",
        "",
        "| log ratio | position | token |",
        "|---|---|---|",
    ]
    for t in summary["most_negative"]:
        text = repr(t["text"]).replace("|", "\\|")  # a '|' would end the table cell
        lines.append(f"| {t['value']:.2f} | {t['position']} | `{text}` |")
    lines += [
        "",
        "Figures: `histogram.png`, `positions.png`, `surface.png`; all numbers in `summary.json`.",
        "",
    ]
    return "\n".join(lines)
