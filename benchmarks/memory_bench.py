"""Peak memory of `poweropd train` per process: full fine-tune, LoRA, gradient checkpointing, FSDP.

    .venv/bin/python benchmarks/memory_bench.py [--steps 2] [--json benchmarks/results/memory_cpu.json]

One fixed shape on CPU: a random 2-layer Qwen3 student (hidden 256) and teacher (hidden 384) at the Qwen3
vocabulary (151,936 rows), batch 8, up to 128 new tokens, 2 steps, fp32. Each variant is a fresh
`poweropd train` (two processes through `accelerate launch` for data parallelism and FSDP, the batch split
between them); its peak resident set per process (the kernel's ru_maxrss through os.wait4: the largest of the
launched processes) is reported with the ratio to the full fine-tune, and next to it what the process holds
between steps (`memory/held_mb` of the last step: weights and AdamW state, of a shard its local part, plus
FSDP's unsharded rollout copy of the student).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = {  # name: (processes, extra flags)
    "full fine-tune": (1, []),
    "LoRA r=8": (1, ["--lora-rank", "8"]),
    "gradient checkpointing": (1, ["--gradient-checkpointing"]),
    "LoRA r=8 + checkpointing": (1, ["--lora-rank", "8", "--gradient-checkpointing"]),
    "data parallel, 2 processes": (2, []),
    "FSDP, 2 processes": (2, ["--fsdp"]),
}
VOCAB = 151_936


def make_pair(root: Path) -> None:
    from stepbench.common import char_tokenizer
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = char_tokenizer()
    for name, hidden, seed in (("student", 256, 0), ("teacher", 384, 1)):
        import torch

        torch.manual_seed(seed)
        config = Qwen3Config(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
                             max_position_embeddings=1024, tie_word_embeddings=False)  # fmt: skip
        Qwen3ForCausalLM(config).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    rows = [{"problem": f"Compute {i} + {2 * i}."} for i in range(16)]
    (root / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def peak_mb(argv: list[str], processes: int = 1) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    cmd = [*(launch if processes > 1 else [sys.executable]), "-m", "poweropd.cli", *argv]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(proc.stderr.read().decode()[-2000:])
    return usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_pair(root)
        base = ["train", "--student", str(root / "student"), "--teacher", str(root / "teacher"), "--data",
                str(root / "prompts.jsonl"), "--batch-size", "8", "--max-new-tokens", "128", "--max-steps",
                str(args.steps), "--save-every", "0", "--device", "cpu", "--no-progress"]  # fmt: skip
        results, held = {}, {}
        print(
            "| variant | peak RSS per process (MB) | vs full fine-tune | weights + AdamW held (MB) | vs full |"
        )
        print("|---|---|---|---|---|")
        for name, (processes, extra) in VARIANTS.items():
            out = root / name.replace(" ", "_").replace(",", "")
            results[name] = peak_mb([*base, "--output-dir", str(out), *extra], processes)
            last = (out / "metrics.jsonl").read_text().splitlines()[-1]
            held[name] = json.loads(last)["memory/held_mb"]
            ratio, held_ratio = results[name] / results["full fine-tune"], held[name] / held["full fine-tune"]
            print(
                f"| {name} | {results[name]:,.0f} | {ratio:.2f} | {held[name]:,.0f} | {held_ratio:.2f} |",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps({"peak_rss_mb": results, "held_mb": held}, indent=1) + "\n")


if __name__ == "__main__":
    main()
