"""benchmarks/vs_trl.py's loss-agreement check: our full_kl loss equals TRL's DistillationTrainer loss (β = 1) on
the same rollouts, and both equal the reverse KL computed by hand in float64 from the full logits."""

import sys

import pytest
import torch
from conftest import REPO, make_char_tokenizer, make_tiny_qwen3

sys.path.insert(0, str(REPO / "benchmarks"))
import vs_trl  # noqa: E402


@pytest.mark.slow
def test_our_reverse_kl_equals_trl_distillation_trainer_and_the_float64_reference(tmp_path):
    tokenizer = make_char_tokenizer()
    student = make_tiny_qwen3(len(tokenizer), hidden=32, seed=0)
    teacher = make_tiny_qwen3(len(tokenizer), hidden=48, seed=1)  # TRL needs the same vocabulary size
    rendered = [f"Compute {i} + {i + 1}." for i in range(4)]  # one length: no prompt padding
    report, batch = vs_trl.loss_agreement(student, teacher, tokenizer, rendered, tmp_path)

    ids_BL = torch.cat([batch["prompt_ids_BP"], batch["completion_BC"]], 1)
    P, mask_BC = batch["prompt_ids_BP"].shape[1], batch["completion_mask_BC"].bool()
    with torch.no_grad():  # position t − 1 predicts completion token t; tokens after a stop do not matter
        logp_s = torch.log_softmax(student(ids_BL).logits[:, P - 1 : -1].double(), -1)
        logp_t = torch.log_softmax(teacher(ids_BL).logits[:, P - 1 : -1].double(), -1)
    reverse_kl_BC = (logp_s.exp() * (logp_s - logp_t)).sum(-1)
    forward_kl_BC = (logp_t.exp() * (logp_t - logp_s)).sum(-1)
    reference = reverse_kl_BC[mask_BC].mean().item()
    assert abs(forward_kl_BC[mask_BC].mean().item() - reference) > 0.1 * reference  # the direction is tested

    assert report["agrees"]
    assert report["trl_reverse_kl"] == pytest.approx(reference, rel=1e-5)
    assert report["ours_full_kl_same_tokens"] == pytest.approx(reference, rel=1e-5)
    # TRL trains on the two stop tokens; ours by default does not
    assert report["loss_tokens"] == {"trl": int(mask_BC.sum()), "ours": int(mask_BC.sum()) - 2}
    without_stop = mask_BC.clone()
    without_stop[1, 6] = without_stop[2, 15] = False
    assert report["ours_default_without_stop_token"] == pytest.approx(
        reverse_kl_BC[without_stop].mean().item(), rel=1e-5
    )
