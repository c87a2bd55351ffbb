"""Whole-step benchmark against TRL, side by side in one run: our `poweropd train` step against TRL's
DistillationTrainer (reverse KL, β = 1), IWOPDTrainer (sampled-token OPD) and, with --gkd, GKDTrainer (λ = 1).

    .venv/bin/pip install -e '.[bench]'            # trl==1.16.0, pinned; never a runtime dependency
    .venv/bin/python benchmarks/vs_trl.py --quick  # 12 min here: 64 new tokens, 4 steps, 3 rounds, no GKD
    .venv/bin/python benchmarks/vs_trl.py --gkd --json benchmarks/results/vs_trl_cpu.json   # 128 tokens: 45 min

Every contestant gets the same models (random Qwen3 student hidden 256 × 4 layers, teacher hidden 384 × 4, at
the Qwen3 vocabulary of 151,936 rows; a 151,669-token tokenizer like Qwen3's), the same prompts (one token
sequence, rendered by our chat template and handed to TRL as text or messages that render the same), batch 8,
the same number of new tokens in every row (TRL: min_new_tokens = max; ours: a random model almost never samples
a stop token, and the mean length is reported), temperature 1, top-k 0, top-p 1, fp32, AdamW (torch's fused
kernel), lr 1e-5 constant, gradient norm clipped at 1, no gradient checkpointing. Each contestant runs in a fresh
process (2 threads); rounds rotate the order so that the machine's load falls on all alike. Per run: the median
of steps 2…N of the step time and of its parts, generation / teacher scoring / update (update = step − the
other two: loss, backward, optimizer), the resident set that the process holds between steps (after step 1:
models and AdamW moments in memory), the peak above it during steps 2…N (Linux VmHWM, reset after step 1), and
the process's whole peak (ru_maxrss).
The table holds the median over rounds.

Where the parts are cut: ours from our own timers (metrics.jsonl: time/sample_s, time/score_s, time/update_s);
TRL's by wrapping its methods from outside (no TRL file is changed): DistillationTrainer `_generate_single_turn`
and the teacher's `_get_last_hidden_state` (its teacher output layer runs inside the loss, as ours does for
full_kl); IWOPDTrainer `_generate_student_completions` and `_get_teacher_logits`; GKDTrainer
`generate_on_policy_outputs` and the teacher's forward. The step is TRL's on_step_begin → on_step_end window.

Before any timing, `check` runs both losses on the same fixed rollouts: our full_kl loss and DistillationTrainer's
compute_loss must agree (reverse KL, token mean over the completion tokens). How the peers count differently is
printed with it: TRL trains on the stop token (ours leaves it out unless --include-stop-token), TRL's KL runs
over every output row (ours over the tokenizer's 151,669 of 151,936), and IWOPDTrainer / GKDTrainer need
`model_accepts_loss_kwargs = False`, or transformers divides their loss by the prompt-only dataset's label count
(0 for IWOPD: loss −inf, then NaN weights) or by the dataset's answer tokens (GKD) instead of the generated ones.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the vstrl package beside this script
from vstrl.agreement import check, loss_agreement  # noqa: E402, F401 (loss_agreement: tests/bench/test_vs_trl.py)
from vstrl.common import BATCH, THREADS, TOKENIZER_SIZE, VOCAB_ROWS, make_setup  # noqa: E402
from vstrl.contestants import OURS, THEIRS, run_ours, run_trl  # noqa: E402


def worker(args) -> None:
    import torch

    torch.set_num_threads(THREADS)
    root, out = Path(args.setup), Path(args.out)
    if args.worker == "check":
        result = check(root)
    elif args.worker in OURS:
        result = run_ours(*OURS[args.worker], root, args.steps, args.new_tokens, out.parent / "run")
    else:
        result = run_trl(args.worker, root, args.steps, args.new_tokens, out.parent / "run")
    out.write_text(json.dumps(result))


def spawn(name: str, root: Path, tmp: Path, steps: int, new_tokens: int) -> dict:
    folder = Path(tempfile.mkdtemp(dir=tmp))
    out = folder / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, __file__, "--worker", name, "--setup", str(root), "--out", str(out), "--steps", str(steps),
           "--new-tokens", str(new_tokens)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def summarise(run: dict) -> dict:
    timed = run["steps"][1:]  # step 1 warms up (allocations, lazy init)
    med = {k: statistics.median(s.get(k, 0.0) for s in timed) for k in ("step_s", "generate_s", "score_s", "sync_s")}
    med["update_s"] = statistics.median(s["step_s"] - s["generate_s"] - s["score_s"] for s in timed)
    med["no_generate_s"] = statistics.median(s["step_s"] - s["generate_s"] for s in timed)
    return {**med, **{k: run[k] for k in ("held_mb", "peak_above_mb", "process_peak_mb", "mean_length")}}


def versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("trl", "transformers", "torch", "accelerate")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 new tokens, 4 steps, no GKD (12 min here)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 6; --quick 4)")
    parser.add_argument(
        "--new-tokens", type=int, default=None, help="tokens per row (default 128; --quick 64)"
    )
    parser.add_argument(
        "--gkd", action="store_true", help="also GKDTrainer (slow: it scores full logits twice)"
    )
    parser.add_argument("--contestants", default=None,
                        help="comma list of the contestants to run (default: all but GKD unless --gkd)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps or (4 if args.quick else 6)
    args.new_tokens = args.new_tokens or (64 if args.quick else 128)
    if args.worker:
        return worker(args)
    if args.steps < 2:
        parser.error("--steps: expected 2 or more (step 1 is not timed)")

    contestants = [*OURS, *THEIRS[: 3 if args.gkd else 2]]
    if args.contestants:
        contestants = [c.strip() for c in args.contestants.split(",")]
        if unknown := set(contestants) - {*OURS, *THEIRS}:
            parser.error(f"--contestants: unknown {sorted(unknown)}; expected names from {[*OURS, *THEIRS]}")
    print(f"versions: {versions()}; batch {BATCH}, {args.new_tokens} new tokens, {args.steps} steps (median of "
          f"2…{args.steps}), {args.rounds} rounds, {THREADS} threads", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = tmp / "setup"
        make_setup(root)
        agreement = spawn("check", root, tmp, args.steps, args.new_tokens)
        print(f"loss agreement (reverse KL on fixed rollouts): TRL {agreement['trl_reverse_kl']:.6f}, ours "
              f"{agreement['ours_full_kl_same_tokens']:.6f} (relative difference {agreement['relative_difference']:.1e});"
              f" ours by default leaves out the stop token ({agreement['loss_tokens']['ours']} of "
              f"{agreement['loss_tokens']['trl']} tokens: {agreement['ours_default_without_stop_token']:.6f}) and "
              f"sums over the tokenizer's {TOKENIZER_SIZE:,} of {VOCAB_ROWS:,} rows "
              f"({agreement['ours_over_the_tokenizer_range']:.6f})", flush=True)  # fmt: skip
        if not agreement["agrees"]:
            raise SystemExit(
                "the reverse-KL losses disagree: not timing contestants that compute different things"
            )
        rounds: dict[str, list[dict]] = {c: [] for c in contestants}
        for r in range(args.rounds):
            order = contestants[r % len(contestants) :] + contestants[: r % len(contestants)]
            for name in order:
                rounds[name].append(summarise(spawn(name, root, tmp, args.steps, args.new_tokens)))
                row = rounds[name][-1]
                print(f"round {r + 1} {name}: step {row['step_s']:.2f} s (generate {row['generate_s']:.2f}), peak "
                      f"above held {row['peak_above_mb']:,.0f} MB", flush=True)  # fmt: skip
    table = {
        name: {k: statistics.median(run[k] for run in runs) for k in runs[0]} for name, runs in rounds.items()
    }
    print_table(table)
    if args.json:
        args.json.write_text(json.dumps({"versions": versions(), "args": {k: v for k, v in vars(args).items()
                                         if k not in ("json", "worker", "setup", "out")}, "agreement": agreement,
                                         "rounds": rounds, "median": table}, indent=1) + "\n")  # fmt: skip


def print_table(table: dict) -> None:
    print("\n| contestant | step s | generate s | score s | update s | step without generation s | held between "
          "steps MB | peak above it MB | process peak MB | mean length |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, m in table.items():
        print(f"| {name} | {m['step_s']:.2f} | {m['generate_s']:.2f} | {m['score_s']:.2f} | {m['update_s']:.2f} | "
              f"{m['no_generate_s']:.2f} | {m['held_mb']:,.0f} | {m['peak_above_mb']:,.0f} | "
              f"{m['process_peak_mb']:,.0f} | {m['mean_length']:.1f} |")  # fmt: skip
    if "TRL DistillationTrainer" not in table:
        return
    peer = table["TRL DistillationTrainer"]
    if "ours power vllm" in table:
        m = table["ours power vllm"]
        print(f"\nours power vllm: weight sync {m['sync_s']:.2f} s = {m['sync_s'] / m['step_s']:.1%} of its step "
              f"(target ≤ 10%); step / DistillationTrainer {m['step_s'] / peer['step_s']:.2f} (target ≤ 0.5)")  # fmt: skip
    print("\nratios ours / DistillationTrainer (targets: power step ≤ 0.6, power peak above held ≤ 0.5, full_kl step"
          " ≤ 0.8):")  # fmt: skip
    for ours in (o for o in OURS if o in table):
        m = table[ours]
        print(f"  {ours}: step {m['step_s'] / peer['step_s']:.2f}, step without generation "
              f"{m['no_generate_s'] / peer['no_generate_s']:.2f}, peak above held "
              f"{m['peak_above_mb'] / peer['peak_above_mb']:.2f}, process peak "
              f"{m['process_peak_mb'] / peer['process_peak_mb']:.2f}")  # fmt: skip
    if "TRL IWOPDTrainer" not in table or "ours power" not in table:
        return
    iw = table["TRL IWOPDTrainer"]
    m = table["ours power"]
    print(f"  ours power / IWOPDTrainer (the sampled-token peer): step {m['step_s'] / iw['step_s']:.2f}, step without "
          f"generation {m['no_generate_s'] / iw['no_generate_s']:.2f}, peak above held "
          f"{m['peak_above_mb'] / iw['peak_above_mb']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
