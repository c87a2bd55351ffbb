"""Gradient checkpointing: the same gradient and run, fewer saved activations."""

import pytest
import torch
from conftest import metric_rows, short_run_argv

from poweropd.cli import main


def test_gradient_checkpointing_keeps_the_gradient_and_saves_fewer_activations(tiny_pair):
    """The same update with and without --gradient-checkpointing: equal gradients, and the bytes the autograd
    graph keeps for the backward pass (counted by saved_tensors_hooks) drop."""
    from transformers import AutoModelForCausalLM

    from poweropd.config.sections import RewardConfig
    from poweropd.models.hf import enable_checkpointing
    from poweropd.objectives.losses import make_objective
    from poweropd.rollout.samplers import HFSampler, SamplingConfig
    from poweropd.teachers.scorers import HFScorer
    from poweropd.training.update import compute_gradients

    student_dir, teacher_dir, _ = tiny_pair
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    torch.manual_seed(0)
    probe = AutoModelForCausalLM.from_pretrained(student_dir)
    rollouts = HFSampler(probe, 0, SamplingConfig(max_new_tokens=12, stop_token_ids=(2,))).sample(
        [[1, 40, 41]] * 4
    )
    scores = HFScorer(teacher).score(rollouts)
    grads, saved = {}, {}
    for checkpointing in (False, True):
        student = AutoModelForCausalLM.from_pretrained(student_dir).train()
        if checkpointing:
            enable_checkpointing(student)
        total = [0]

        def pack(t, total=total):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            compute_gradients(student, rollouts, scores, make_objective(RewardConfig(name="power", alpha=1.0)),
                              micro_batch_size=4)  # fmt: skip
        grads[checkpointing] = {
            n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None
        }
        saved[checkpointing] = total[0]
    assert grads[True].keys() == grads[False].keys()
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-5, atol=1e-7)
    assert saved[True] < 0.8 * saved[False], saved


def test_train_with_gradient_checkpointing_gives_the_same_run(tiny_pair, tmp_path):
    assert main(short_run_argv(tiny_pair, tiny_pair[2], tmp_path / "plain")) == 0
    assert main(short_run_argv(tiny_pair, tiny_pair[2], tmp_path / "ckpt", "--gradient-checkpointing")) == 0
    same = ("loss", "reward/mean", "grad/norm", "response_length/mean")
    plain, ckpt = metric_rows(tmp_path / "plain"), metric_rows(tmp_path / "ckpt")
    for a, b in zip(plain, ckpt, strict=True):
        assert [a[k] for k in same] == pytest.approx([b[k] for k in same], rel=1e-5)
