"""The demo's verdicts, figures and report, computed from its numbers (``demo.run_demo``'s results dict).

A claim's verdict needs an effect larger than twice its standard error: "holds" when the effect in the
claimed direction exceeds 2 SE, "does not hold" when it is more than 2 SE the other way, "inconclusive"
otherwise. Accuracy comparisons are paired by seed (seed s of every method shares its data order and its
first samples), so the SE is that of the mean per-seed difference; with one seed it falls back to the
binomial error of the two Avg@8 estimates.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

ACC = "avg@n"
BASELINES = ("log_ratio", "clip", "tanh", "zscore")
"""The paper's vanilla OPD and post-hoc baselines, which claim C4 compares PowerOPD with."""
CRITERION = {"full_kl": 0.20, "sampled_mean": 0.05}
"""The testbed's learning criterion (docs/testbed.md), fixed before rewards were compared: Avg@8 gains over
the initial student of full_kl, and of the mean over every sampled-token method."""


def _verdict(effect: float, se: float | None) -> str:
    if se is None or not math.isfinite(effect):
        return "inconclusive"
    if effect > 2 * se:
        return "holds"
    if effect < -2 * se:
        return "does not hold"
    return "inconclusive"


def paired(a: list[float], b: list[float]) -> tuple[float, float | None]:
    """(mean of a_s − b_s, its standard error); the error is None with fewer than two seeds."""
    d = [x - y for x, y in zip(a, b)]
    if len(d) < 2:
        return statistics.fmean(d), None
    return statistics.fmean(d), statistics.stdev(d) / math.sqrt(len(d))


def score(results: dict) -> dict:
    """What the claims compare methods on: {"key": a per-seed number, higher is better, "label": its name}.
    The demo's is test Avg@8; the real-pair study's the reduction of the held-out reverse KL."""
    return results.get("score") or {"key": ACC, "label": f"test Avg@{results['config']['n']}"}


def _score_difference(results: dict, m: str, other: dict) -> tuple[float, float | None]:
    """Paired difference of the score (test Avg@8) between method ``m`` and ``other`` (a method row or a fixed
    row); with one seed the error is binomial for Avg@8, None for another score."""
    key = score(results)["key"]
    row = results["methods"][m]
    if "per_seed" in other:
        effect, se = paired(row["per_seed"][key], other["per_seed"][key])
    else:
        effect, se = statistics.fmean(row["per_seed"][key]) - other[key], None
        if len(row["per_seed"][key]) > 1:
            se = statistics.stdev(row["per_seed"][key]) / math.sqrt(len(row["per_seed"][key]))
    if se is None and key == ACC:  # one seed: the binomial errors of the two estimates
        n = results["config"]["test_problems"] * results["config"]["n"]
        p, q = row[ACC], other[ACC]
        se = math.sqrt(p * (1 - p) / n + q * (1 - q) / n)
    return effect, se


def _fixed_powers(methods: dict) -> list[str]:
    """Power rewards with one fixed α over every token (no schedule, no token selection, the teacher at the
    rollout temperature): the paper's."""
    return [m for m, row in methods.items() if row["reward"] == "power" and not row.get("alpha_end")
            and not row.get("token_select") and row.get("teacher_temperature") is None]  # fmt: skip


def best_power(methods: dict) -> str | None:
    """The power α with the highest final validation accuracy (never chosen on the test problems)."""
    powers = _fixed_powers(methods)
    return max(powers, key=lambda m: methods[m]["validation_final"]) if powers else None


def _fmt_effect(effect: float, se: float | None, spec: str = "+.3f") -> str:
    return f"{effect:{spec}} ± {se:.3f}" if se is not None else f"{effect:{spec}} (no error: one seed)"


def claims(results: dict) -> dict:
    methods = results["methods"]
    dist = results["reward_distributions"]
    stats = dist["stats"]
    best = best_power(methods)
    c: dict[str, dict] = {}

    # C1: heavy negative tail of the log ratio; every power reward within [−1, 1]
    lr = stats["log_ratio"]
    trained = [
        (methods[m]["reward_min"], methods[m]["reward_max"])
        for m in methods
        if methods[m]["reward"] == "power"
    ]
    bounds = [(stats[k]["min"], stats[k]["max"]) for k in stats if k.startswith("power@")] + trained
    in_bounds = all(lo >= -1 and hi <= 1 for lo, hi in bounds)
    heavy = lr["min"] < -5 and -lr["p01"] > 3 * max(lr["p99"], 0.1)
    c["C1"] = {
        "claim": "the log-ratio reward has a heavy negative tail while PowerOPD stays in [−1, 1]",
        "verdict": "holds" if heavy and in_bounds else "does not hold",
        "numbers": f"log ratio on the initial student's rollouts ({dist['tokens']} tokens): min {lr['min']:.2f}, "
        f"p01 {lr['p01']:.2f}, median {lr['p50']:.2f}, p99 {lr['p99']:.2f}; every power reward (all α, before "
        f"and during training) within [{min(lo for lo, _ in bounds):.3f}, {max(hi for _, hi in bounds):.3f}]",
    }

    # C2: the negative tail sits at early positions more than the tokens do
    share, n_below = dist["early_share"], dist["below_counts"]["-5"]
    early, below = share["frac_tokens"], share.get("share_below_-5")
    if below is None or not n_below:
        c2_effect, c2_se = float("nan"), None
    else:
        c2_effect, c2_se = below - early, math.sqrt(max(below * (1 - below), 1e-12) / n_below)
    c["C2"] = {
        "claim": "extremes of the log ratio concentrate at early positions (0–7)",
        "verdict": _verdict(c2_effect, c2_se),
        "effect": c2_effect,
        "se": c2_se,
        "numbers": f"positions 0–7 hold {early:.1%} of the tokens and {below if below is not None else float('nan'):.1%} "
        f"of the {n_below} tokens below −5: effect {_fmt_effect(c2_effect, c2_se)} (share of the tail − share of tokens)",
    }

    # C3: PowerOPD's peak gradient norm far (4×) below vanilla OPD's, per seed
    if "log_ratio" in methods and best:
        ratios = [math.log10(v / p) for v, p in zip(methods["log_ratio"]["per_seed"]["grad_norm_max"],
                                                     methods[best]["per_seed"]["grad_norm_max"])]  # fmt: skip
        effect = statistics.fmean(ratios) - math.log10(4)
        se = statistics.stdev(ratios) / math.sqrt(len(ratios)) if len(ratios) > 1 else None
        c["C3"] = {
            "claim": "PowerOPD's gradient norm stays far (more than 4×) below vanilla OPD's peak",
            "verdict": _verdict(effect, se),
            "effect": effect,
            "se": se,
            "numbers": f"peak pre-clip gradient norm, mean over seeds: log_ratio {methods['log_ratio']['grad_norm_max']:.3g}, "
            f"{best} {methods[best]['grad_norm_max']:.3g} (ratio {10 ** -statistics.fmean(ratios):.3f}); "
            f"effect log10(vanilla / power) − log10 4 = {_fmt_effect(effect, se, '+.2f')}",
        }

    # C4: best α beats vanilla and every post-hoc baseline, and matches or beats full KL
    if best:
        parts, verdicts = [], []
        for b in [x for x in BASELINES if x in methods]:
            effect, se = _score_difference(results, best, methods[b])
            verdicts.append(_verdict(effect, se))
            parts.append(f"vs {b} {_fmt_effect(effect, se)}")
        if "full_kl" in methods:
            effect, se = _score_difference(results, best, methods["full_kl"])
            # "matches or beats": not below full KL by more than 2 SE
            verdicts.append("inconclusive" if se is None else "does not hold" if effect < -2 * se else "holds")
            parts.append(f"vs full_kl {_fmt_effect(effect, se)}")
        if verdicts:
            verdict = ("does not hold" if "does not hold" in verdicts
                       else "holds" if all(v == "holds" for v in verdicts) else "inconclusive")  # fmt: skip
            c["C4"] = {
                "claim": "PowerOPD (best α) beats vanilla and every post-hoc baseline, and matches or beats full-vocabulary KL",
                "verdict": verdict,
                "numbers": f"{score(results)['label']} of {best} (α chosen on the validation problems) "
                f"{methods[best][score(results)['key']]:.3f}; "
                "paired differences " + ", ".join(parts),
            }

    # C5: larger α shortens responses (slope of mean test length on log10 α, every α and seed)
    xs, ys = [], []
    for row in (methods[m] for m in _fixed_powers(methods)):
        if row["reward"] == "power":
            xs += [math.log10(row["alpha"])] * len(row["per_seed"]["mean_length"])
            ys += row["per_seed"]["mean_length"]
    if len(set(xs)) >= 2:
        slope, se = _ols_slope(xs, ys)
        span = max(xs) - min(xs)
        # a change under one token over the α range is not a length effect, whatever its error
        verdict = _verdict(-slope, se)
        if verdict == "holds" and abs(slope) * span < 1.0:
            verdict = "inconclusive"
        lengths = {
            f"α={10**x:g}": statistics.fmean(y for xx, y in zip(xs, ys) if xx == x) for x in sorted(set(xs))
        }
        c["C5"] = {
            "claim": "larger α shortens responses",
            "verdict": verdict,
            "effect": -slope,
            "se": se,
            "numbers": "mean test length: "
            + ", ".join(f"{k} {v:.1f}" for k, v in lengths.items())
            + f"; slope {_fmt_effect(slope, se, '+.2f')} tokens per decade of α "
            f"({slope * span:+.1f} tokens over the range; 'holds' also needs at least 1 token)",
        }
    return c


def _ols_slope(xs: list[float], ys: list[float]) -> tuple[float, float | None]:
    n = len(xs)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    if n <= 2:
        return slope, None
    residual = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys)) / (n - 2)
    return slope, math.sqrt(residual / sxx)


def criterion(results: dict) -> dict:
    """The testbed's learning criterion on this run: gains over the initial student's test Avg@8."""
    methods, init = results["methods"], results["student_init"][ACC]
    sampled = [m for m in methods if m != "full_kl"]
    out = {"thresholds": CRITERION}
    if "full_kl" in methods:
        out["full_kl_gain"] = methods["full_kl"][ACC] - init
    if sampled:
        out["sampled_mean_gain"] = statistics.fmean(methods[m][ACC] for m in sampled) - init
    out["met"] = (
        out.get("full_kl_gain", -1) >= CRITERION["full_kl"]
        and out.get("sampled_mean_gain", -1) >= CRITERION["sampled_mean"]
    )
    return out


# ---- figures and report --------------------------------------------------------------------------------


def _curves(results: dict, method: str, key: str):
    from ..plots.runs import SeedCurves

    row = results["methods"][method]
    if key == "validation":  # the initial student's validation accuracy is step 0 of every curve
        steps = [0, *row["curves"]["eval_steps"]]
        values = [[results["student_init_validation"][ACC], *v] for v in row["curves"]["validation"]]
    else:
        values = row["curves"][key]
        steps = list(range(1, len(values[0]) + 1))
    return SeedCurves(method, steps, values)


def method_colors(methods) -> dict:
    """One colour per method in every figure of a report (tab20, in the order the methods ran)."""
    from matplotlib import colormaps

    return {m: colormaps["tab20"](i % 20) for i, m in enumerate(methods)}


def figures(results: dict, out: Path) -> list[str]:
    from ..plots.runs import seed_band_figure

    methods = results["methods"]
    best = best_power(methods)
    headline = [m for m in ("log_ratio", best, "full_kl") if m in methods]
    teacher = {f"teacher (test Avg@8 {results['teacher'][ACC]:.2f})": results["teacher"][ACC]}
    palette = method_colors(methods)
    colors = [palette[m] for m in methods]
    paths = [
        seed_band_figure(
            [{"curves": [_curves(results, m, "validation") for m in headline], "title": "accuracy on the "
              "validation problems (1 sample each, T = 0.6)", "ylabel": "accuracy", "hlines": teacher,
              "colors": [palette[m] for m in headline]}],
            out / "accuracy_vs_step.png",
            width=7.0,
        ),
        seed_band_figure(
            [
                {"curves": [_curves(results, m, "length") for m in methods], "title": "response length of "
                 "the training rollouts (5-step mean)", "ylabel": "tokens", "smooth": 5, "colors": colors,
                 "hlines": {f"teacher, test ({results['teacher']['mean_length']:.1f})": results["teacher"]["mean_length"]}},
                {"curves": [_curves(results, m, "grad_norm") for m in methods], "title": "pre-clip gradient "
                 "norm", "ylabel": "‖g‖ (log scale)", "log": True, "colors": colors},
            ],
            out / "length_grad_norm_vs_step.png",
        ),
    ]  # fmt: skip
    paths += [out / "reward_distributions.png", out / "reward_positions.png"]
    return [str(Path(p).relative_to(out)) for p in paths]


def _pm(row: dict, key: str, spec: str = ".3f") -> str:
    return f"{row[key]:{spec}} ± {row[f'{key}_std']:{spec}}" if row["seeds"] > 1 else f"{row[key]:{spec}}"


def results_table(results: dict) -> str:
    n = results["config"]["n"]
    lines = [
        f"| method | Avg@{n} | Pass@{n} | mean length | gain over the initial student (± SE) | peak grad norm "
        "| reward min | reward max | log-ratio min |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for role in ("teacher", "student_init"):
        r = results[role]
        lines.append(f"| {role.replace('_', ' ')} | {r[ACC]:.3f} | {r['pass@n']:.3f} | {r['mean_length']:.1f} "
                     "| – | – | – | – | – |")  # fmt: skip
    init = results["student_init"]
    for method, r in results["methods"].items():
        effect, se = _score_difference(results, method, init)
        lines.append(
            f"| {method} | {_pm(r, ACC)} | {_pm(r, 'pass@n')} | {_pm(r, 'mean_length', '.1f')} | "
            f"{_fmt_effect(effect, se)} | {_pm(r, 'grad_norm_max', '.3g')} | {r['reward_min']:.3g} | "
            f"{r['reward_max']:.3g} | {r['log_ratio_min']:.3g} |"
        )
    return "\n".join(lines)


def report(results: dict) -> str:
    cfg, crit = results["config"], results["criterion"]
    seeds = cfg["seeds"]
    p = results["student_init_validation"][ACC]
    point_se = math.sqrt(p * (1 - p) / cfg["validation_problems"]) / math.sqrt(seeds)
    best = best_power(results["methods"])
    parts = [
        "# poweropd demo",
        "",
        f"Task: synthetic step-by-step arithmetic (`poweropd.demo.tasks`); every method trains the same initial student "
        f"for {cfg['steps']} steps (batch {cfg['batch_size']}, lr {cfg['lr']:g}), {seeds} seed(s) each. Final "
        f"numbers: Avg@{cfg['n']} / Pass@{cfg['n']} / mean length on {cfg['test_problems']} test problems "
        f"(temperature 0.6, top-p 0.95), mean ± std over seeds. Wall time {results['wall_time_s']:.0f} s.",
        "",
        "![accuracy vs step](accuracy_vs_step.png)",
        "",
        f"Accuracy on {cfg['validation_problems']} validation problems during training, for vanilla OPD, the best "
        f"PowerOPD α on the validation problems ({best}) and full-vocabulary KL; lines are means over {seeds} "
        f"seed(s), bands ± one standard error; a point's binomial standard error alone is about {point_se:.3f}.",
        "",
        f"**Learning criterion** (docs/testbed.md): full_kl gains {crit.get('full_kl_gain', float('nan')):+.3f} "
        f"Avg@{cfg['n']} (needs ≥ {crit['thresholds']['full_kl']}), the mean over sampled-token methods "
        f"{crit.get('sampled_mean_gain', float('nan')):+.3f} (needs ≥ {crit['thresholds']['sampled_mean']}): "
        f"**{'met' if crit['met'] else 'not met'}**.",
        "",
        results_table(results),
        "",
        "## Claims of the paper, checked on these numbers",
        "",
        "A verdict needs an effect larger than twice its standard error (accuracy differences paired by seed).",
        "",
    ]
    for key, claim in results["claims"].items():
        parts.append(f"- **{key}** — {claim['claim']}: **{claim['verdict']}**. {claim['numbers']}")
    parts += ["", "## Figures", ""] + [f"![{f}]({f})" for f in results["figures"][1:]]
    return "\n".join(parts) + "\n"


__all__ = [
    "BASELINES",
    "CRITERION",
    "best_power",
    "claims",
    "criterion",
    "figures",
    "paired",
    "report",
    "score",
    "results_table",
]
