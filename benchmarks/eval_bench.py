"""`poweropd eval` end to end per rollout engine: wall time of the whole command, start-up included.

    .venv/bin/python benchmarks/eval_bench.py                 # SmolLM2-135M-Instruct, 8 GSM8K problems × 4 × 128

Each round runs the command once per engine, each in a fresh process, the order rotating between rounds; the
table gives the median wall time over the rounds and its ratio to ``generate``'s. The model, its loading and the
grading are the same for every engine, so the difference is the sampling and the engine's start-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


def run_once(engine: str, args, out: Path) -> float:
    cmd = [sys.executable, "-m", "poweropd.cli", "eval", "--model", args.model, "--benchmarks", args.benchmark,
           "--limit", str(args.problems), "--n", str(args.n), "--max-new-tokens", str(args.max_new_tokens),
           "--data-dir", str(DATA_DIR), "--rollout-engine", engine, "--output-dir", str(out), "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{engine}: {proc.stderr[-2000:]}")
    return wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--engines", default="generate,vllm")
    p.add_argument("--benchmark", default="gsm8k")
    p.add_argument("--problems", type=int, default=8)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    engines = args.engines.split(",")
    walls: dict[str, list[float]] = {e: [] for e in engines}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for engine in engines[r % len(engines) :] + engines[: r % len(engines)]:
                walls[engine].append(run_once(engine, args, Path(tmp) / f"{engine}-{r}"))
                print(f"round {r + 1} {engine}: {walls[engine][-1]:.1f} s", flush=True)
    base = statistics.median(walls[engines[0]])
    print(f"\n{args.model}: {args.problems} {args.benchmark} problems × {args.n} samples × {args.max_new_tokens} "
          f"tokens, {args.threads} threads, median of {args.rounds}")  # fmt: skip
    print(f"| engine | wall s (median) | rounds | vs {engines[0]} |\n|---|---|---|---|")
    for engine in engines:
        med = statistics.median(walls[engine])
        print(f"| {engine} | {med:.1f} | {', '.join(f'{w:.1f}' for w in walls[engine])} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
