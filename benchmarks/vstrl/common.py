"""The setup every contestant shares (tokenizer, models, prompts) and the process's memory marks."""

from __future__ import annotations

import json
from pathlib import Path

VOCAB_ROWS, TOKENIZER_SIZE = 151_936, 151_669
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LR, BATCH, THREADS = 1e-5, 8, 2


def make_tokenizer():
    """Characters as tokens, padded with unused tokens to Qwen3's tokenizer size, with a ChatML template."""
    from stepbench.common import char_tokenizer

    return char_tokenizer(TOKENIZER_SIZE, CHATML)


def make_setup(root: Path, n_prompts: int = 64) -> None:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = make_tokenizer()
    for name, hidden, seed in (("student", 256, 0), ("teacher", 384, 1)):
        torch.manual_seed(seed)
        config = Qwen3Config(vocab_size=VOCAB_ROWS, hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
                             max_position_embeddings=1024, tie_word_embeddings=False)  # fmt: skip
        model = Qwen3ForCausalLM(config)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    # every prompt the same length, so that no contestant pads
    rows = [{"problem": f"Compute {i:02d} + {2 * i:03d}."} for i in range(n_prompts)]
    (root / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def prompts(root: Path) -> tuple[list[str], list[str]]:
    """(problem + instruction as the user turn, the whole rendered prompt) for every problem."""
    from poweropd.data import INSTRUCTION, render_prompt

    tokenizer = make_tokenizer()
    problems = [json.loads(line)["problem"] for line in (root / "prompts.jsonl").read_text().splitlines()]
    return [f"{p}\n{INSTRUCTION}" for p in problems], [render_prompt(tokenizer, p) for p in problems]


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


class Memory:
    """The resident set after step 1 and the peak above it through the last step (VmHWM reset: clear_refs 5).

    After step 1, not before it: AdamW allocates its moments in the first step, and transformers maps the
    weight files lazily, so before step 1 neither is resident yet."""

    def start(self) -> None:
        self.before_mb = _status_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")

    def stop(self) -> None:
        self.peak_mb = _status_mb("VmHWM")

    def report(self) -> dict:
        import resource

        return {
            "held_mb": self.before_mb,
            "peak_above_mb": self.peak_mb - self.before_mb,
            "process_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }


def trl_common(out: Path, steps: int) -> dict:
    return dict(output_dir=str(out), per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
                learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, max_steps=steps, max_grad_norm=1.0,
                optim="adamw_torch_fused", weight_decay=0.0, logging_steps=1, report_to="none", save_strategy="no",
                use_cpu=True, bf16=False, gradient_checkpointing=False, seed=0)  # fmt: skip
