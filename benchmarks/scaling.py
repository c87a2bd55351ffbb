"""How the sampled-token step's extra memory grows with the vocabulary V and the response length T.

For every (V, T) in the grid, ``power_sampled`` (our path), ``naive_sampled`` (the paper repo's recipe) and
``body_floor`` (the decoder bodies alone) each run in a fresh process through ``step_bench.py`` (one
warm-up step, then ``--repeats`` measured steps). Reported: each mode's peak memory above the step's start,
the two sampled paths' peak above ``body_floor`` (what the output layer and the loss cost), and per V the
slope of that extra memory in T. Ours holds one chunk of V-sized buffers whatever T is, so its slope is
~0 at every V; the naive recipe holds B×T×V tensors, so its slope grows with V. The plot shows the extra
memory against T, one colour per V.

    python benchmarks/scaling.py --json scaling.json --png scaling.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dataclasses import asdict  # noqa: E402

import stepbench as step_bench  # noqa: E402

MODES = ("power_sampled", "naive_sampled", "body_floor")
SAMPLED = ("power_sampled", "naive_sampled")


def sweep(vocabs: list[int], seqs: list[int], base: step_bench.BenchConfig) -> list[dict]:
    rows = []
    for vocab in vocabs:
        for seq in seqs:
            cfg = step_bench.BenchConfig(**{**asdict(base), "vocab": vocab, "seq": seq})
            result = step_bench.bench(cfg, list(MODES), echo=False)
            row = {"vocab": vocab, "seq": seq, "positions": cfg.batch * seq}
            for mode, m in result["modes"].items():
                row[f"{mode}_peak_mb"] = m.get("peak_mb")
                row[f"{mode}_time_s"] = m.get("time_s")
                if "error" in m:
                    row[f"{mode}_error"] = m["error"]
            for mode in SAMPLED:
                if row.get(f"{mode}_peak_mb") is not None and row.get("body_floor_peak_mb") is not None:
                    row[f"{mode}_extra_mb"] = row[f"{mode}_peak_mb"] - row["body_floor_peak_mb"]
            rows.append(row)
            print(format_row(row), file=sys.stderr)
    return rows


def _mb(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def format_row(row: dict) -> str:
    cells = [f"{row['vocab']:,}", str(row["seq"]), str(row["positions"])]
    cells += [_mb(row.get(f"{m}_peak_mb")) for m in MODES]
    cells += [_mb(row.get(f"{m}_extra_mb")) for m in SAMPLED]
    return "| " + " | ".join(cells) + " |"


def slopes(rows: list[dict]) -> list[dict]:
    """Per V: the least-squares slope of each sampled path's extra memory in positions (MB per 1k)."""
    out = []
    for vocab in sorted({r["vocab"] for r in rows}):
        cells = [r for r in rows if r["vocab"] == vocab]
        row = {"vocab": vocab}
        for mode in SAMPLED:
            points = [(r["positions"], r[f"{mode}_extra_mb"]) for r in cells if f"{mode}_extra_mb" in r]
            if len(points) >= 2:
                mx = sum(x for x, _ in points) / len(points)
                my = sum(y for _, y in points) / len(points)
                sxx = sum((x - mx) ** 2 for x, _ in points)
                row[f"{mode}_mb_per_1k"] = 1000 * sum((x - mx) * (y - my) for x, y in points) / sxx
        out.append(row)
    return out


def format_table(rows: list[dict]) -> str:
    head = (
        "| V | T | positions (B·T) | power_sampled MB | naive_sampled MB | body_floor MB "
        "| power_sampled above floor | naive_sampled above floor |\n|---|---|---|---|---|---|---|---|"
    )
    slope_lines = [
        "",
        "| V | power_sampled MB per 1k positions | naive_sampled MB per 1k positions |",
        "|---|---|---|",
    ]
    for r in slopes(rows):
        cells = [f"{r.get(f'{m}_mb_per_1k', float('nan')):.0f}" for m in SAMPLED]
        slope_lines.append(f"| {r['vocab']:,} | {cells[0]} | {cells[1]} |")
    return "\n".join([head, *(format_row(r) for r in rows), *slope_lines])


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    vocabs = sorted({r["vocab"] for r in rows})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for color, vocab in zip(colors, vocabs):
        cells = sorted((r for r in rows if r["vocab"] == vocab), key=lambda r: r["seq"])
        seqs = [r["seq"] for r in cells]
        for mode, style in (("power_sampled", "-o"), ("naive_sampled", "--s")):
            ax.plot(
                seqs,
                [r.get(f"{mode}_extra_mb", float("nan")) for r in cells],
                style,
                color=color,
                label=f"{mode}, V={vocab:,}",
            )
    ax.set_xlabel("response tokens T per rollout (batch 1)")
    ax.set_ylabel("peak memory above the decoder bodies' (MB)")
    ax.set_xticks(sorted({r["seq"] for r in rows}))
    ax.set_title("Output-layer memory of one sampled-token OPD step (CPU RSS)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocabs", type=int, nargs="+", default=[8192, 32768, step_bench.QWEN3_VOCAB])
    p.add_argument("--seqs", type=int, nargs="+", default=[128, 256, 512])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--chunk-size", type=int, default=128, help="our path's positions per chunk")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--student-shape", default="bench-student", choices=tuple(step_bench.SHAPES))
    p.add_argument("--teacher-shape", default="bench-teacher", choices=tuple(step_bench.SHAPES))
    p.add_argument("--json", type=Path, required=True, help="write the grid's results here")
    p.add_argument("--png", type=Path, required=True, help="write the plot here")
    args = p.parse_args(argv)
    base = step_bench.BenchConfig(
        batch=args.batch,
        prompt_len=args.prompt_len,
        chunk_size=args.chunk_size,
        repeats=args.repeats,
        student_shape=args.student_shape,
        teacher_shape=args.teacher_shape,
    )
    rows = sweep(args.vocabs, args.seqs, base)
    print(format_table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {"config": asdict(base), "rows": rows, "slopes": slopes(rows)}
    args.json.write_text(json.dumps(result, indent=2))
    plot(rows, args.png)
    return 1 if any(k.endswith("_error") for r in rows for k in r) else 0


if __name__ == "__main__":
    sys.exit(main())
