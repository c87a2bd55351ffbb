"""The held-out distance to the teacher (eval/distance.py): its measures by hand, its invariants on tiny
models, and its use as a training run's evaluator."""

import math

import pytest
import torch

from poweropd.diagnostics import ScoredRollouts
from poweropd.eval.distance import (
    MEASURES,
    distance,
    distance_evaluator,
    repeated_ngram_fraction,
    summarize,
)


def test_repeated_ngrams_counted_by_hand():
    assert repeated_ngram_fraction([1, 2, 3, 4, 5, 6]) == 0.0  # 3 distinct 4-grams
    # ", and, and, and": 4-grams (a,b,a,b) (b,a,b,a) (a,b,a,b) (b,a,b,a) -> 2 of 4 repeat an earlier one
    assert repeated_ngram_fraction([7, 8, 7, 8, 7, 8, 7]) == 0.5
    assert repeated_ngram_fraction([5] * 10) == pytest.approx(1 - 1 / 7)  # 7 grams, one distinct
    assert repeated_ngram_fraction([1, 2, 3]) == 0.0  # shorter than one 4-gram
    assert repeated_ngram_fraction([1, 2, 1, 2], n=2) == pytest.approx(1 / 3)


def test_summarize_by_hand():
    # two responses: 3 tokens + a stop token (masked out of the per-token means), and 4 tokens at the cap
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    scored = ScoredRollouts(
        response_ids_BT=torch.tensor([[5, 6, 7, 2], [9, 9, 9, 9]]),
        mask_BT=mask,
        teacher_logp_BT=torch.tensor([[-1.0, -2.0, -3.0, -50.0], [-1.0, -1.0, -1.0, -1.0]]),
        student_logp_BT=torch.tensor([[-0.5, -0.5, -0.5, -50.0], [-2.0, -2.0, -2.0, -2.0]]),
        kl_BT=torch.tensor([[0.1, 0.2, 0.3, 99.0], [0.4, 0.4, 0.4, 0.4]]),
        truncated_B=torch.tensor([False, True]),
        response_lengths_B=torch.tensor([4, 4]),
        prompt_index_B=torch.tensor([0, 1]),
    )
    row = summarize(scored)
    assert set(MEASURES) <= set(row)
    assert row["tokens"] == 7
    assert row["reverse_kl"] == pytest.approx((0.6 + 1.6) / 7)
    assert row["teacher_nll"] == pytest.approx((6 + 4) / 7)
    assert row["student_nll"] == pytest.approx((1.5 + 8) / 7)
    assert row["stop_frac"] == 0.5
    assert row["mean_length"] == 4.0
    assert row["repetition"] == pytest.approx((0.0 + 0.0) / 2)  # one 4-gram each: nothing repeats


def _models(tiny_pair):
    from poweropd.models.hf import load_causal_lm, load_tokenizer

    student_dir, teacher_dir, _ = tiny_pair
    return load_causal_lm(student_dir), load_causal_lm(teacher_dir), load_tokenizer(student_dir)


PROBLEMS = ["Compute 1 + 2.", "Compute 3 + 4.", "Compute 12 + 30."]


def test_a_teacher_is_at_distance_zero_from_itself(tiny_pair):
    _, teacher, tokenizer = _models(tiny_pair)
    row = distance(teacher, teacher, tokenizer, PROBLEMS, max_new_tokens=8, samples_per_prompt=2)
    assert row["reverse_kl"] == pytest.approx(0.0, abs=1e-5)
    assert row["teacher_nll"] == pytest.approx(row["student_nll"], abs=1e-5)
    assert row["tokens"] > 0


def test_distance_is_the_mean_exact_kl_and_leaves_the_callers_random_state(tiny_pair):
    student, teacher, tokenizer = _models(tiny_pair)
    student.train()
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    a = distance(student, teacher, tokenizer, PROBLEMS, max_new_tokens=8, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert student.training  # put back as it was
    b = distance(student, teacher, tokenizer, PROBLEMS, max_new_tokens=8, seed=3)
    assert a == b  # one seed, one set of samples
    assert a["reverse_kl"] > 0.01 and math.isfinite(a["reverse_kl"])
    assert 0 <= a["stop_frac"] <= 1 and 0 <= a["repetition"] <= 1 and 0 < a["mean_length"] <= 8

    # the KL is the mean over the sampled positions of Σ_v π_S (log π_S − log π_T), recomputed from logits
    from poweropd.diagnostics import sample_and_score

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        scored = sample_and_score(student, teacher, tokenizer, PROBLEMS, max_new_tokens=8)
    vocab = len(tokenizer)
    kls = []
    for b_, ids in enumerate(scored.response_ids_BT):
        from poweropd.data import encode_prompts

        prompt = encode_prompts(tokenizer, [PROBLEMS[int(scored.prompt_index_B[b_])]])[0]
        n = int(scored.mask_BT[b_].sum())
        full = torch.tensor([prompt + ids[:n].tolist()])
        with torch.no_grad():
            ls = student(full).logits[0, len(prompt) - 1 : len(prompt) - 1 + n, :vocab].log_softmax(-1)
            lt = teacher(full).logits[0, len(prompt) - 1 : len(prompt) - 1 + n, :vocab].log_softmax(-1)
        kls.append((ls.exp() * (ls - lt)).sum(-1))
    assert a["reverse_kl"] == pytest.approx(torch.cat(kls).double().mean().item(), rel=1e-4)


def test_a_training_run_logs_the_distance_at_its_evaluation_steps(tiny_pair, tmp_path):
    from conftest import metric_rows

    from poweropd.config.sections import EvalConfig, ModelConfig, RolloutConfig, RunConfig, TrainConfig
    from poweropd.training.loop import train

    student_dir, teacher_dir, prompts = tiny_pair
    _, teacher, tokenizer = _models(tiny_pair)
    cfg = TrainConfig(
        model=ModelConfig(student=str(student_dir), teacher=str(teacher_dir)),
        rollout=RolloutConfig(max_new_tokens=6),
        eval=EvalConfig(every=2),
        run=RunConfig(data=str(prompts), output_dir=str(tmp_path / "run"), max_steps=3, batch_size=4,
                      save_every=0),
    )  # fmt: skip
    evaluator = distance_evaluator(teacher, tokenizer, PROBLEMS, name="validation", max_new_tokens=6)
    final = train(cfg, progress=False, evaluator=evaluator)
    rows = metric_rows(tmp_path / "run")
    evaluated = [r["step"] for r in rows if "eval/validation/reverse_kl" in r]
    assert evaluated == [2, 3]  # every 2 steps and after the last
    from poweropd.models.hf import load_causal_lm

    # the logged value at the last step is the final student's distance (same prompts, same sampling seed)
    again = distance(load_causal_lm(final), teacher, tokenizer, PROBLEMS, max_new_tokens=6)
    assert rows[-1]["eval/validation/reverse_kl"] == pytest.approx(again["reverse_kl"], rel=1e-5)
