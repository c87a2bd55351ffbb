"""AdamW step time: torch's default (foreach) update against the fused kernel that update.make_optimizer uses.

Parameters shaped like step_bench.py's CPU student (39.3M: two 151,936 × 128 matrices and the small layers),
random gradients, median of ``--repeats`` steps after a warm-up, both optimizers in this process, in turn.

    python benchmarks/optimizer_bench.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def step_time(params: list[torch.nn.Parameter], repeats: int, **kwargs) -> float:
    optimizer = torch.optim.AdamW(params, lr=1e-6, **kwargs)
    optimizer.step()  # warm-up: the state exists before timing
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2, help="alternate the two optimizers this many times")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    shapes = [(args.vocab, args.hidden)] * 2 + [(args.hidden, 3 * args.hidden)] * 20
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    for param in params:
        param.grad = torch.randn_like(param)
    results = {"foreach": [], "fused": []}
    for _ in range(args.rounds):
        results["foreach"].append(step_time(params, args.repeats, foreach=True))
        results["fused"].append(step_time(params, args.repeats, fused=True))
    foreach, fused = (statistics.median(v) for v in results.values())
    n = sum(param.numel() for param in params)
    print(
        f"{n / 1e6:.1f}M parameters: foreach {foreach * 1e3:.1f} ms, fused {fused * 1e3:.1f} ms, "
        f"fused / foreach = {fused / foreach:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
