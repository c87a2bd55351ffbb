"""Run under `accelerate launch --cpu --num_processes 2`: gradients of a fixed batch split over the
processes, compared with the single-process gradient of the whole batch. Rank 0 writes a JSON report."""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # conftest
from conftest import make_char_tokenizer, make_tiny_qwen3  # noqa: E402

from poweropd.collective import AcceleratorCollective, SingleProcess  # noqa: E402
from poweropd.config.sections import RewardConfig  # noqa: E402
from poweropd.objectives.losses import make_objective  # noqa: E402
from poweropd.rollout.samplers import build_rollouts  # noqa: E402
from poweropd.teachers.scorers import HFScorer  # noqa: E402
from poweropd.training.update import compute_gradients  # noqa: E402


def main(out: str) -> None:
    accelerator = Accelerator(cpu=True)
    comm = AcceleratorCollective(accelerator)
    vocab = len(make_char_tokenizer())
    student = make_tiny_qwen3(vocab, hidden=32, seed=0)
    teacher = make_tiny_qwen3(vocab, hidden=48, seed=1, extra_rows=5)
    # A fixed batch of 4 rollouts with different lengths: some stop (id 2), one is truncated.
    g = torch.Generator().manual_seed(0)
    B, P, T = 4, 5, 9
    sequences_BL = torch.randint(3, vocab, (B, P + T), generator=g)
    sequences_BL[0, P + 3] = 2
    sequences_BL[1, P + 6] = 2
    sequences_BL[2, P + 1] = 0
    prompt_mask_BP = torch.ones(B, P, dtype=torch.long)
    prompt_mask_BP[1, :2] = 0
    prompt_mask_BP[3, :1] = 0
    rollouts = build_rollouts(sequences_BL, prompt_mask_BP, (2, 0), pad_token_id=0)
    scores = HFScorer(teacher).score(rollouts, keep_hidden=True)
    half = slice(comm.rank * B // 2, (comm.rank + 1) * B // 2)

    report = {}
    for name in ("power", "log_ratio", "zscore", "full_kl"):
        objective = make_objective(RewardConfig(name=name, alpha=0.5))
        common = dict(vocab_size=vocab)
        student.zero_grad(set_to_none=True)
        compute_gradients(
            student, rollouts, scores, objective, micro_batch_size=B, comm=SingleProcess(), **common
        )
        single = [p.grad.clone() for p in student.parameters()]
        student.zero_grad(set_to_none=True)
        part = scores.select(half)
        result = compute_gradients(
            student, rollouts.select(half), part, objective, micro_batch_size=1, comm=comm, **common
        )
        split = [p.grad.clone() for p in student.parameters()]
        diff = max((a - b).abs().max().item() for a, b in zip(single, split))
        scale = max(a.abs().max().item() for a in single)
        report[name] = {"max_abs_diff": diff, "max_abs_grad": scale, "loss": result.loss}
    if accelerator.is_main_process:
        Path(out).write_text(json.dumps({"world_size": comm.world_size, **report}))
    # left to interpreter shutdown, gloo's threads sometimes abort the process ("terminate called without an
    # active exception", 1–2 runs in 10 here)
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
