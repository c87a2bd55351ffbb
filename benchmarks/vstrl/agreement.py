"""The loss-agreement check: our full_kl loss and TRL DistillationTrainer's reverse KL on the same rollouts."""

from __future__ import annotations

from pathlib import Path

from .common import make_tokenizer, prompts, trl_common


def check(root: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = make_tokenizer()
    student = AutoModelForCausalLM.from_pretrained(root / "student", dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(root / "teacher", dtype=torch.float32)
    _, rendered = prompts(root)
    return loss_agreement(student, teacher, tokenizer, rendered[:4], root / "check")[0]


def loss_agreement(student, teacher, tokenizer, rendered: list[str], out: Path) -> tuple[dict, dict]:
    """Our full_kl loss and DistillationTrainer's compute_loss (β = 1) on the same fixed rollouts: 4 rows of 24
    random tokens, two of them stopped early (TRL's completion mask runs up to and including the stop token).
    The teacher's output layer is sharpened ×30 first, so that reverse and forward KL differ clearly.
    Returns the report and the rollout tensors (prompt_ids_BP, completion_BC, completion_mask_BC)."""
    import torch
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    from poweropd.config.sections import RewardConfig
    from poweropd.objectives.losses import make_objective
    from poweropd.rollout.samplers import build_rollouts
    from poweropd.teachers.scorers import HFScorer
    from poweropd.training.update import compute_gradients

    with torch.no_grad():
        teacher.lm_head.weight.mul_(30.0)
    prompt_ids_BP = torch.tensor([tokenizer(r, add_special_tokens=False)["input_ids"] for r in rendered])
    B = prompt_ids_BP.shape[0]
    g = torch.Generator().manual_seed(0)
    completion_BC = torch.randint(3, len(tokenizer), (B, 24), generator=g)
    eos = tokenizer.eos_token_id
    completion_mask_BC = torch.ones_like(completion_BC)
    for row, stop in ((1, 6), (2, 15)):  # rows 1 and 2 stop; the others run to the end
        completion_BC[row, stop] = eos
        completion_mask_BC[row, stop + 1 :] = 0

    config = DistillationConfig(**trl_common(out, 1), beta=1.0, temperature=1.0, use_vllm=False)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config, processing_class=tokenizer,
                                  train_dataset=Dataset.from_dict({"prompt": rendered}))  # fmt: skip
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, {
            "prompt_ids": prompt_ids_BP, "prompt_mask": torch.ones_like(prompt_ids_BP),
            "completion_ids": completion_BC, "completion_mask": completion_mask_BC,
        }).item()  # fmt: skip

    rollouts = build_rollouts(torch.cat([prompt_ids_BP, completion_BC], 1), torch.ones_like(prompt_ids_BP), (eos,),
                              pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    scores = HFScorer(teacher).score(rollouts, keep_hidden=True, logprobs=False)
    objective = make_objective(RewardConfig(name="full_kl"))

    def ours(include_stop_token: bool, vocab_size: int | None) -> float:
        student.zero_grad(set_to_none=True)
        return compute_gradients(student, rollouts, scores, objective, micro_batch_size=B,
                                 include_stop_token=include_stop_token,
                                 vocab_size=vocab_size).loss  # fmt: skip

    same = ours(include_stop_token=True, vocab_size=None)
    report = {
        "trl_reverse_kl": theirs,
        "ours_full_kl_same_tokens": same,
        "relative_difference": abs(same - theirs) / abs(theirs),
        "ours_default_without_stop_token": ours(include_stop_token=False, vocab_size=None),
        "ours_over_the_tokenizer_range": ours(include_stop_token=True, vocab_size=len(tokenizer)),
        "loss_tokens": {"trl": int(completion_mask_BC.sum()), "ours": int(rollouts.loss_mask(False).sum())},
    }
    report["agrees"] = report["relative_difference"] < 1e-5
    batch = {
        "prompt_ids_BP": prompt_ids_BP,
        "completion_BC": completion_BC,
        "completion_mask_BC": completion_mask_BC,
    }
    return report, batch
