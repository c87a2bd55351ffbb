"""Supervised fine-tuning of a task model, and measuring it: the recipe's building blocks.

``sft`` trains on teacher-forced cross-entropy of the response tokens; ``accuracy`` (greedy) and
``sampled_accuracy`` (Avg@n at temperature 0.6, as the demo evaluates) measure a model on task rows through
the same sampler and grader as OPD and `poweropd eval`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import require


@dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning on reference responses: AdamW, linear warmup, cosine decay to lr/10."""

    steps: int
    """Optimizer steps (a fixed count, not a time budget, so the result is deterministic)."""
    lr: float
    """Peak learning rate."""
    batch_size: int = 32
    """Problems per step; each step draws fresh problems from the training stream. Accuracy grows with the
    number of steps more than with the batch (teacher at 400 steps: 18% at batch 32, 17% at batch 64), so
    small batches are cheaper for the same result."""
    warmup_steps: int = 50
    """Steps of linear warmup from 0 to lr."""
    weight_decay: float = 0.01
    """AdamW weight decay."""

    def __post_init__(self):
        require(self.steps >= 1, "SFTConfig.steps", "an integer ≥ 1", self.steps)
        require(self.lr > 0, "SFTConfig.lr", "a number > 0", self.lr)
        require(self.batch_size >= 1, "SFTConfig.batch_size", "an integer ≥ 1", self.batch_size)
        require(
            0 <= self.warmup_steps <= self.steps,
            "SFTConfig.warmup_steps",
            f"an integer in [0, steps={self.steps}]",
            self.warmup_steps,
        )
        require(self.weight_decay >= 0, "SFTConfig.weight_decay", "a number ≥ 0", self.weight_decay)

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@contextlib.contextmanager
def num_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def encode_sft_batch(tokenizer, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids_BL, attention_mask_BL, labels_BL): chat prompt + response + ``<|im_end|>``, right-padded.

    Labels are -100 on the prompt and the padding, so the loss covers the response and its stop token only.
    """
    from ...data import encode_prompts

    prompts = encode_prompts(tokenizer, [row["problem"] for row in rows])
    responses = [
        tokenizer(row["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        for row in rows
    ]
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    input_ids_BL = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask_BL = torch.zeros((len(rows), width), dtype=torch.long)
    labels_BL = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        input_ids_BL[i, : len(p) + len(r)] = torch.tensor(p + r)
        attention_mask_BL[i, : len(p) + len(r)] = 1
        labels_BL[i, len(p) : len(p) + len(r)] = torch.tensor(r)
    return input_ids_BL, attention_mask_BL, labels_BL


def sft(
    model, tokenizer, rows: Iterable[dict], config: SFTConfig, *, progress: bool = True, desc: str = "SFT"
) -> float:
    """Teacher-forced cross-entropy on response tokens, ``config.steps`` batches from ``rows``; returns the
    mean loss of the last 20 steps."""
    from tqdm.auto import tqdm

    stream: Iterator[dict] = iter(rows)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay
    )
    model.train()
    recent: list[float] = []
    bar = tqdm(range(config.steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        rows_in_batch = [next(stream) for _ in range(config.batch_size)]
        input_ids_BL, attention_mask_BL, labels_BL = encode_sft_batch(tokenizer, rows_in_batch)
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)
        loss = model(input_ids=input_ids_BL, attention_mask=attention_mask_BL, labels=labels_BL).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        recent = (recent + [loss.item()])[-20:]
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
    model.eval()
    return sum(recent) / len(recent)


@torch.no_grad()
def generate_greedy(
    model, tokenizer, problems: list[str], *, max_new_tokens: int = 48, batch_size: int = 256
) -> list[str]:
    """Greedy responses (special tokens removed), through the same sampler and stop tokens as OPD rollouts."""
    from ...data import encode_prompts
    from ...models.hf import stop_token_ids
    from ...rollout.samplers import HFSampler, SamplingConfig

    sampling = SamplingConfig(
        max_new_tokens=max_new_tokens, temperature=0.0, stop_token_ids=tuple(stop_token_ids(tokenizer))
    )
    sampler = HFSampler(model, tokenizer.pad_token_id, sampling)
    responses = []
    for start in range(0, len(problems), batch_size):
        rollouts = sampler.sample(encode_prompts(tokenizer, problems[start : start + batch_size]))
        for ids_T, mask_T in zip(rollouts.response_ids_BT, rollouts.response_mask_BT):
            responses.append(tokenizer.decode(ids_T[mask_T].tolist(), skip_special_tokens=True))
    return responses


def accuracy(model, tokenizer, rows: list[dict], *, max_new_tokens: int = 48) -> float:
    """Fraction of rows whose greedy response ``poweropd.eval.grading.grade``s equal to the row's answer."""
    from ...eval.grading import grade

    responses = generate_greedy(
        model, tokenizer, [row["problem"] for row in rows], max_new_tokens=max_new_tokens
    )
    return sum(grade(response, row["answer"]) for response, row in zip(responses, rows)) / len(rows)


def sampled_accuracy(model, tokenizer, rows: list[dict], *, max_new_tokens: int = 48, n: int = 8) -> float:
    """Avg@n at temperature 0.6, top-p 0.95 (the demo's evaluation), sampling seed 0."""
    from ...config.sections import EvalConfig
    from ...eval.benchmarks import Problem
    from ...eval.harness import evaluate_model

    problems = {"arithmetic": [Problem(r["id"], r["problem"], [r["answer"]]) for r in rows]}
    harness = EvalConfig(
        benchmarks=("arithmetic",), n=n, max_new_tokens=max_new_tokens, limit=None, batch_size=256
    )
    results, _ = evaluate_model(model, tokenizer, problems, harness, progress=False)
    return results["arithmetic"][f"avg@{n}"]


def load_task_model(folder: str | Path):
    """(model, tokenizer) from a prepared folder, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


__all__ = [
    "SFTConfig",
    "accuracy",
    "encode_sft_batch",
    "generate_greedy",
    "load_task_model",
    "num_threads",
    "sampled_accuracy",
    "sft",
]
