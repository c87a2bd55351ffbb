"""Ratios against the targets, the Markdown report, and merging result files."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict

from .common import TARGETS, BenchConfig
from .measure import merge_rounds, run_mode_subprocess


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------
def target_rows(modes: dict) -> list[dict]:
    rows = []
    for ours, ref, metric, bound in TARGETS:
        if ours in modes and ref in modes and "error" not in modes[ours] and "error" not in modes[ref]:
            ratio = modes[ours][metric] / max(modes[ref][metric], 1e-9)
            rows.append(
                {
                    "ours": ours,
                    "ref": ref,
                    "metric": metric,
                    "ratio": ratio,
                    "bound": bound,
                    "pass": ratio <= bound,
                }
            )
    return rows


def format_report(result: dict) -> str:
    modes = result["modes"]
    floor = modes.get("body_floor", {})
    floor = None if "error" in floor else floor
    lines = [
        "| mode | step s (median) | score s | update s | process CPU s | peak MB above start "
        "| s above floor | MB above floor | step times s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in modes.items():
        if "error" in m:
            lines.append(f"| {name} | error: {m['error']} | | | | | | | |")
            continue
        times = ", ".join(f"{t:.2f}" for t in m["times"])
        above = (
            f"{m['time_s'] - floor['time_s']:.2f} | {m['peak_mb'] - floor['peak_mb']:.0f}"
            if floor and name != "body_floor"
            else " | "
        )
        lines.append(
            f"| {name} | {m['time_s']:.2f} | {m['score_s']:.2f} | {m['update_s']:.2f} | {m['cpu_s']:.2f} "
            f"| {m['peak_mb']:.0f} | {above} | {times} |"
        )
    lines += ["", "| target | ratio | bound | result |", "|---|---|---|---|"]
    for row in result.get("targets", []):
        verdict = "PASS" if row["pass"] else "FAIL"
        lines.append(
            f"| {row['ours']} / {row['ref']} {row['metric']} | {row['ratio']:.3f} | ≤ {row['bound']} | {verdict} |"
        )
    matmul_floor = modes.get("matmul_floor", {"error": "not run"})
    floor_rows = [
        f"| {name} / matmul_floor time | {modes[name]['time_s'] / matmul_floor['time_s']:.3f} |"
        for name in ("power_sampled", "full_kl_chunked", "naive_sampled", "full_kl_naive")
        if "error" not in matmul_floor and "error" not in modes.get(name, {"error": "not run"})
    ]
    if floor_rows:
        lines += ["", "| against the floor set by the matmuls | ratio |", "|---|---|", *floor_rows]
    return "\n".join(lines)


def bench(cfg: BenchConfig, modes: list[str], *, rounds: int = 1, echo: bool = True) -> dict:
    """Each mode in a fresh process, ``rounds`` times in rotation (so that a change in the machine's load
    hits every mode alike); medians over the pooled steps."""
    runs: dict[str, list[dict]] = {name: [] for name in modes}
    for _ in range(rounds):
        for name in modes:
            t0 = time.perf_counter()
            m = run_mode_subprocess(name, cfg)
            runs[name].append(m)
            if echo:
                summary = m.get("error") or f"{m['time_s']:.2f} s, {m['peak_mb']:.0f} MB"
                print(
                    f"  {name}: {summary}  ({time.perf_counter() - t0:.0f} s with start-up)", file=sys.stderr
                )
    result = {
        "config": asdict(cfg) | {"rounds": rounds},
        "modes": {n: merge_rounds(r) for n, r in runs.items()},
    }
    result["targets"] = target_rows(result["modes"])
    return result


def merge_results(results: list[dict]) -> dict:
    """Results of runs with the same config and different modes (e.g. ours and the naive recipes under
    separate timeouts) as one result, with the targets recomputed across them."""
    configs = {json.dumps(r["config"], sort_keys=True) for r in results}
    if len(configs) > 1:
        raise ValueError("the results were measured with different configs")
    merged = {"config": results[0]["config"], "modes": {}}
    for r in results:
        merged["modes"].update(r["modes"])
    merged["targets"] = target_rows(merged["modes"])
    return merged
