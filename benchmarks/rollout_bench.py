"""Rollout engines side by side: generated tokens per second of `generate` and `loop` on the same prompts.

    .venv/bin/python benchmarks/rollout_bench.py [--batch-sizes 32,256] [--repeats 5] [--max-new-tokens 64]

The model is the shipped task student (what the demo samples from), one thread, temperature 1, top-k 0. The
engines alternate within one process (the same machine state for both), each call re-seeded, so both draw
the same samples (tests/test_rollout.py checks that); the time ratio is the median over the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    import torch

    from poweropd.data import encode_prompts
    from poweropd.models import stop_token_ids
    from poweropd.rollout import SAMPLERS, SamplingConfig
    from poweropd.tasks import arithmetic
    from poweropd.tasks.recipe import SHIPPED_DIR
    from poweropd.tasks.sft import load_task_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="32,256")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tokenizer = load_task_model(SHIPPED_DIR / "student")
    problems = [
        row["problem"]
        for row in arithmetic.make_test(seed=1, n_test=max(map(int, args.batch_sizes.split(","))))
    ]
    config = SamplingConfig(
        max_new_tokens=args.max_new_tokens, stop_token_ids=tuple(stop_token_ids(tokenizer))
    )
    samplers = {name: cls(model, tokenizer.pad_token_id, config) for name, cls in SAMPLERS.items()}
    print("| batch | engine | median s per call | generated tokens / s | time vs generate |")
    print("|---|---|---|---|---|")
    for batch in map(int, args.batch_sizes.split(",")):
        prompts = encode_prompts(tokenizer, problems[:batch])
        times = {name: [] for name in samplers}
        tokens = {}
        for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
            for name, sampler in samplers.items():
                torch.manual_seed(repeat)
                start = time.perf_counter()
                rollouts = sampler.sample(prompts)
                if repeat:
                    times[name].append(time.perf_counter() - start)
                    tokens.setdefault(name, []).append(int(rollouts.response_lengths_B.sum()))
        base = statistics.median(times["generate"])
        for name in samplers:
            median = statistics.median(times[name])
            rate = statistics.fmean(tokens[name]) / median
            print(f"| {batch} | {name} | {median:.3f} | {rate:,.0f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
