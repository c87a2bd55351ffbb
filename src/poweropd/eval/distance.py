"""How far a student is from its teacher on held-out prompts: what on-policy distillation optimises.

Accuracy on a benchmark says little when neither model solves the problems (SmolLM2-135M solves 1 in 32 GSM8K
problems). The distance does: on the student's own samples (temperature 1, as in training), the exact per-token
reverse KL(π_S‖π_T) over the vocabulary, the teacher's negative log-likelihood of the sampled tokens, and the
samples' health: how many end before the token cap, how much they repeat themselves, how long they are.

``distance`` measures a student once; ``distance_evaluator`` measures it during training (``train(...,
evaluator=...)``), every time on the same prompts and with the same sampling seed, so that two students (or one
student at two steps) differ by what they learned, not by which samples they drew.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

MEASURES = ("reverse_kl", "teacher_nll", "student_nll", "stop_frac", "repetition", "mean_length")
"""What ``summarize`` returns, besides the token count: lower is closer to the teacher for the first three."""
REPEAT_N = 4
"""Repetition counts repeated 4-grams: a response that loops (", and, and, …") repeats most of its 4-grams."""


def repeated_ngram_fraction(ids: list[int], n: int = REPEAT_N) -> float:
    """The fraction of a sequence's n-grams that already occurred earlier in it (0.0 without n-grams)."""
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def summarize(scored) -> dict[str, float]:
    """The measures of ``diagnostics.sample_and_score``'s rollouts (scored with ``kl_BT``): per-token means over
    every valid token (KL, teacher and student NLL), per-response means (stop fraction, repetition, length)."""
    mask_BT = scored.mask_BT.bool()
    lengths_B = scored.response_lengths_B
    responses = [row[: int(n)].tolist() for row, n in zip(scored.response_ids_BT, lengths_B)]
    return {
        "reverse_kl": scored.kl_BT[mask_BT].double().mean().item(),
        "teacher_nll": -scored.teacher_logp_BT[mask_BT].double().mean().item(),
        "student_nll": -scored.student_logp_BT[mask_BT].double().mean().item(),
        "stop_frac": 1.0 - scored.truncated_B.double().mean().item(),
        "repetition": sum(map(repeated_ngram_fraction, responses)) / len(responses),
        "mean_length": lengths_B.double().mean().item(),
        "tokens": int(mask_BT.sum()),
    }


def distance(student, teacher, tokenizer, problems: list[str], *, max_new_tokens: int, seed: int = 0,
             samples_per_prompt: int = 1, batch_size: int = 16, engine: str = "generate", vllm=None) -> dict:  # fmt: skip
    """``summarize`` of the student's samples on ``problems`` (temperature 1, top-p 1, top-k 0), drawn with
    ``seed``; the caller's random state is left as it was."""
    from ..diagnostics import sample_and_score

    was_training = student.training
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        scored = sample_and_score(student, teacher, tokenizer, problems, max_new_tokens=max_new_tokens,
                                  samples_per_prompt=samples_per_prompt, batch_size=batch_size, engine=engine,
                                  vllm=vllm)  # fmt: skip
    student.train(was_training)
    return summarize(scored)


def distance_evaluator(teacher, tokenizer, problems: list[str], *, name: str = "heldout",
                       **kwargs) -> Callable[[torch.nn.Module], dict[str, float]]:  # fmt: skip
    """student -> {``eval/<name>/<measure>``: value}: ``distance`` for ``train(cfg, evaluator=...)``."""
    from ..run.metric_names import eval_key

    def evaluate(student) -> dict[str, float]:
        row = distance(student, teacher, tokenizer, problems, **kwargs)
        return {eval_key(name, k): v for k, v in row.items()}

    return evaluate
