"""Run under `accelerate launch --multi_gpu --num_processes 2` on CPU (gloo): the gradient of a fixed batch with
the student (and, for full_kl, the teacher) sharded by FSDP2, each process holding half the rows, against the
single-process gradient of the whole batch on an unsharded copy. Rank 0 writes a JSON report."""

import contextlib
import copy
import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # conftest
from conftest import make_char_tokenizer, make_tiny_qwen3  # noqa: E402

from poweropd.collective import SingleProcess  # noqa: E402
from poweropd.config.sections import OptimConfig, RewardConfig  # noqa: E402
from poweropd.objectives.losses import make_objective  # noqa: E402
from poweropd.rollout.samplers import build_rollouts  # noqa: E402
from poweropd.teachers.scorers import HFScorer  # noqa: E402
from poweropd.training import fsdp  # noqa: E402
from poweropd.training.update import compute_gradients, make_optimizer  # noqa: E402


def fixed_batch(vocab: int):
    """4 rollouts of different lengths: two stop (id 2), one is truncated, two prompts left-padded."""
    g = torch.Generator().manual_seed(0)
    B, P, T = 4, 5, 9
    sequences_BL = torch.randint(3, vocab, (B, P + T), generator=g)
    sequences_BL[0, P + 3] = 2
    sequences_BL[1, P + 6] = 2
    prompt_mask_BP = torch.ones(B, P, dtype=torch.long)
    prompt_mask_BP[1, :2] = 0
    prompt_mask_BP[3, :1] = 0
    return build_rollouts(sequences_BL, prompt_mask_BP, (2, 0), pad_token_id=0)


def main(out: str) -> None:
    accelerator = Accelerator(cpu=True)
    comm = fsdp.ShardedCollective(accelerator)
    mesh = fsdp.device_mesh(accelerator.device, comm.world_size)
    vocab = len(make_char_tokenizer())
    rollouts = fixed_batch(vocab)
    B = rollouts.response_ids_BT.shape[0]
    half = slice(comm.rank * B // 2, (comm.rank + 1) * B // 2)
    report = {"world_size": comm.world_size}
    for tied in (False, True):
        student = make_tiny_qwen3(vocab, hidden=32, seed=0)
        if tied:  # Qwen3-0.6B ties its output layer to the embeddings
            student.config.tie_word_embeddings = True
            student.lm_head.weight = student.model.embed_tokens.weight
        teacher = make_tiny_qwen3(vocab, hidden=48, seed=1, extra_rows=5)
        reference, reference_teacher = copy.deepcopy(student), copy.deepcopy(teacher)
        sharded = fsdp.shard(student, mesh)
        sharded_teacher = fsdp.shard(teacher.eval().requires_grad_(False), mesh)
        shard_scorer = HFScorer(teacher, forward=sharded_teacher.run_frozen)
        for name, micro in (("power", 1), ("zscore", 1), ("full_kl", 2)):
            objective = make_objective(RewardConfig(name=name, alpha=0.5))
            full_kl = objective.needs_teacher_hidden
            scores = HFScorer(reference_teacher).score(rollouts, keep_hidden=full_kl)
            reference.zero_grad(set_to_none=True)
            single = compute_gradients(
                reference, rollouts, scores, objective, micro_batch_size=B, comm=SingleProcess(), vocab_size=vocab,
            )  # fmt: skip
            single_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 1e9).item()
            expected = {n: p.grad.clone() for n, p in reference.named_parameters()}

            part = shard_scorer.score(rollouts.select(half), keep_hidden=full_kl)
            sharded.zero_grad(set_to_none=True)
            with sharded_teacher.gathered() if full_kl else contextlib.nullcontext():
                split = compute_gradients(
                    student, rollouts.select(half), part, objective, micro_batch_size=micro, comm=comm, vocab_size=vocab, forward=sharded,
                )  # fmt: skip
            split_norm = fsdp.full_tensor(
                torch.nn.utils.clip_grad_norm_(student.parameters(), 1e9)
            ).item()
            got = {n: fsdp.full_tensor(p.grad) for n, p in student.named_parameters()}
            sharded_shapes = sorted(
                {tuple(p.to_local().shape) != tuple(p.shape) for p in student.parameters()}
            )
            report[f"{name}/tied={tied}"] = {
                "loss": [single.loss, split.loss],
                "grad_norm": [single_norm, split_norm],
                "max_abs_diff": max((expected[n] - got[n]).abs().max().item() for n in expected),
                "max_abs_grad": max(g.abs().max().item() for g in expected.values()),
                "params": sorted(expected) == sorted(got),
                "every_param_sharded": sharded_shapes == [True],
            }
        # one AdamW step on each: the sharded weights, gathered, equal the reference's
        for model in (reference, student):
            make_optimizer(list(model.parameters()), OptimConfig(lr=1e-2), torch.device("cpu")).step()
        step_diff = max(
            (p.detach() - fsdp.full_tensor(q.detach())).abs().max().item()
            for p, q in zip(reference.parameters(), student.parameters())
        )
        report[f"adamw/tied={tied}"] = step_diff
    if accelerator.is_main_process:
        Path(out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
