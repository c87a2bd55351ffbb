"""Figures of the reward diagnostics (``diagnostics.py`` output) and the diagnose report.

Each figure function writes one PNG and returns its path. Matplotlib's object API (``Figure`` + Agg canvas)
is used instead of ``pyplot``: no global state, no display needed.

Figures of training runs and of the demo's seeds are in ``plots/runs.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from ..diagnostics import reward_surface

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
    for name in [n for n in rewards if n != "log_ratio" and n not in _power_names(rewards)]:
        s = rewards[name]  # every other reward of the registry, as diagnostics.reward_values labels it
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
