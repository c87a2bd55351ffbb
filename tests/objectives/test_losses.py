"""The surrogate's gradient, chunked log-probs and chunked KL against exact references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from poweropd.config.sections import RewardConfig
from poweropd.objectives.fused import top_fraction
from poweropd.objectives.logprobs import chunked_token_logprobs, selected_logprobs_from_logits
from poweropd.objectives.losses import (
    MicroBatch,
    TeacherScores,
    chunked_reverse_kl,
    full_kl_loss,
    fused_policy_gradient_loss,
    fused_reverse_kl_loss,
    make_objective,
    policy_gradient_loss,
    reverse_kl_per_token,
)
from poweropd.objectives.rewards import REWARDS


def _layers(seed=0, hidden=16, vocab=37, extra_teacher_rows=5):
    torch.manual_seed(seed)
    student = torch.nn.Linear(hidden, vocab, bias=False)
    teacher = torch.nn.Linear(hidden + 4, vocab + extra_teacher_rows, bias=False)
    return student, teacher


def test_reverse_kl_matches_torch_kl_div_and_is_zero_for_equal_models():
    torch.manual_seed(0)
    s_logits, t_logits = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    expected = F.kl_div(
        F.log_softmax(t_logits, -1), F.log_softmax(s_logits, -1), log_target=True, reduction="none"
    ).sum(-1)
    torch.testing.assert_close(reverse_kl_per_token(s_logits, t_logits), expected)
    torch.testing.assert_close(reverse_kl_per_token(s_logits, s_logits), torch.zeros(2, 5), atol=1e-6, rtol=0)
    assert (reverse_kl_per_token(s_logits, t_logits) > 0).all()


def test_reverse_kl_two_token_vocabulary_by_hand():
    # π_S = (0.5, 0.5), π_T = (0.25, 0.75): KL = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln(4/3)
    s_logits = torch.log(torch.tensor([[[0.5, 0.5]]]))
    t_logits = torch.log(torch.tensor([[[0.25, 0.75]]]))
    torch.testing.assert_close(
        reverse_kl_per_token(s_logits, t_logits),
        torch.tensor([[0.5 * torch.log(torch.tensor(4 / 3)).item()]]),
    )


def test_chunked_logprobs_equal_full_log_softmax_in_value_and_gradient():
    student, _ = _layers()
    hidden_BTH = torch.randn(3, 7, 16, requires_grad=True)
    tokens_BT = torch.randint(0, 37, (3, 7))
    weights_BT = torch.randn(3, 7)

    ref_BT = F.log_softmax(student(hidden_BTH).float() / 0.7, -1).gather(-1, tokens_BT[..., None]).squeeze(-1)
    (ref_BT * weights_BT).sum().backward()
    ref_grads = (hidden_BTH.grad.clone(), student.weight.grad.clone())
    hidden_BTH.grad = None
    student.weight.grad = None

    logp_BT, entropy_BT = chunked_token_logprobs(
        student, hidden_BTH, tokens_BT, temperature=0.7, chunk_size=4, with_entropy=True
    )
    (logp_BT * weights_BT).sum().backward()
    torch.testing.assert_close(logp_BT, ref_BT)
    torch.testing.assert_close(hidden_BTH.grad, ref_grads[0])
    torch.testing.assert_close(student.weight.grad, ref_grads[1])
    probs = F.softmax(student(hidden_BTH).detach() / 0.7, -1)
    torch.testing.assert_close(entropy_BT, -(probs * probs.log()).sum(-1))
    torch.testing.assert_close(
        selected_logprobs_from_logits(student(hidden_BTH).detach() / 0.7, tokens_BT), ref_BT.detach()
    )


def test_surrogate_gradient_is_reward_times_grad_logprob():
    # L = −Σ sg[r]·log π / N  ⇒  ∂L/∂logits_t = −r_t (onehot(o_t) − π_t) / N at valid t, 0 elsewhere
    torch.manual_seed(1)
    logits_BTV = torch.randn(2, 4, 6, requires_grad=True)
    tokens_BT = torch.randint(0, 6, (2, 4))
    reward_BT = torch.randn(2, 4)
    mask_BT = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    logp_BT = selected_logprobs_from_logits(logits_BTV, tokens_BT)
    loss, metrics = policy_gradient_loss(logp_BT, reward_BT, mask_BT, num_tokens=5)
    loss.backward()

    probs_BTV = F.softmax(logits_BTV.detach(), -1)
    onehot_BTV = F.one_hot(tokens_BT, 6).float()
    expected = -(reward_BT * mask_BT)[..., None] * (onehot_BTV - probs_BTV) / 5
    torch.testing.assert_close(logits_BTV.grad, expected)
    torch.testing.assert_close(loss, -(reward_BT * logp_BT.detach() * mask_BT).sum() / 5)
    assert metrics["loss/pg"].requires_grad is False


def test_surrogate_does_not_differentiate_the_reward():
    logp_BT = torch.zeros(1, 2, requires_grad=True)
    reward_BT = torch.ones(1, 2, requires_grad=True)
    loss, _ = policy_gradient_loss(logp_BT, reward_BT, torch.ones(1, 2, dtype=torch.bool), num_tokens=2)
    loss.backward()
    assert reward_BT.grad is None
    torch.testing.assert_close(logp_BT.grad, torch.full((1, 2), -0.5))


def test_chunked_kl_equals_exact_kl_over_tokenizer_range_in_value_and_gradient():
    student, teacher = _layers()
    vocab = 37  # teacher has 5 padding rows beyond the tokenizer, as Qwen3 does
    s_hidden_BTH = torch.randn(2, 9, 16, requires_grad=True)
    t_hidden_BTH = torch.randn(2, 9, 20)
    tokens_BT = torch.randint(0, vocab, (2, 9))
    mask_BT = torch.rand(2, 9) > 0.3

    exact_BT = reverse_kl_per_token(
        student(s_hidden_BTH)[..., :vocab], teacher(t_hidden_BTH)[..., :vocab].detach()
    )
    loss_ref, _ = full_kl_loss(exact_BT, mask_BT, num_tokens=int(mask_BT.sum()))
    loss_ref.backward()
    ref_grads = (s_hidden_BTH.grad.clone(), student.weight.grad.clone())
    s_hidden_BTH.grad = None
    student.weight.grad = None

    kl_BT, logp_BT, teacher_logp_BT = chunked_reverse_kl(
        student, teacher, s_hidden_BTH, t_hidden_BTH, tokens_BT, vocab_size=vocab, chunk_size=5
    )
    loss, _ = full_kl_loss(kl_BT, mask_BT, num_tokens=int(mask_BT.sum()))
    loss.backward()
    torch.testing.assert_close(kl_BT, exact_BT)
    torch.testing.assert_close(loss, loss_ref)
    torch.testing.assert_close(s_hidden_BTH.grad, ref_grads[0])
    torch.testing.assert_close(student.weight.grad, ref_grads[1])
    assert teacher.weight.grad is None
    torch.testing.assert_close(
        logp_BT, selected_logprobs_from_logits(student(s_hidden_BTH).detach(), tokens_BT)
    )
    torch.testing.assert_close(
        teacher_logp_BT, selected_logprobs_from_logits(teacher(t_hidden_BTH)[..., :vocab], tokens_BT)
    )


def test_full_kl_gradient_is_the_analytic_kl_gradient():
    # ∂KL(softmax(z) ‖ q)/∂z = π ⊙ (log π − log q − KL)
    torch.manual_seed(2)
    z = torch.randn(1, 1, 5, requires_grad=True)
    t = torch.randn(1, 1, 5)
    kl = reverse_kl_per_token(z, t)
    kl.sum().backward()
    p, logq = F.softmax(z.detach(), -1), F.log_softmax(t, -1)
    torch.testing.assert_close(z.grad, p * (p.log() - logq - kl.detach()[..., None]))


@pytest.mark.parametrize("with_entropy", [False, True], ids=["hand-written backward", "checkpointed"])
def test_both_logprob_paths_match_log_softmax_gradients(with_entropy):
    student, _ = _layers(seed=3)
    hidden_BTH = torch.randn(2, 5, 16, dtype=torch.float64, requires_grad=True)
    student = student.double()
    tokens_BT = torch.randint(0, 37, (2, 5))
    weights_BT = torch.randn(2, 5, dtype=torch.float64)
    ref_BT = F.log_softmax(student(hidden_BTH), -1).gather(-1, tokens_BT[..., None]).squeeze(-1)
    ref_grads = torch.autograd.grad((ref_BT * weights_BT).sum(), (hidden_BTH, student.weight))
    logp_BT, entropy_BT = chunked_token_logprobs(
        student, hidden_BTH, tokens_BT, chunk_size=3, with_entropy=with_entropy
    )
    grads = torch.autograd.grad((logp_BT * weights_BT).sum(), (hidden_BTH, student.weight))
    assert (entropy_BT is None) != with_entropy
    torch.testing.assert_close(logp_BT.double(), ref_BT, atol=1e-6, rtol=0)
    for got, ref in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("reward", ["log_ratio", "clip", "tanh", "power"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_policy_gradient_equals_logprobs_then_surrogate(reward, temperature):
    student, _ = _layers(seed=4)
    hidden_BTH = torch.randn(3, 7, 16, requires_grad=True)
    tokens_BT = torch.randint(0, 37, (3, 7))
    teacher_logp_BT = (
        torch.log_softmax(torch.randn(3, 7, 37), -1).gather(-1, tokens_BT[..., None]).squeeze(-1)
    )
    mask_BT = torch.rand(3, 7) > 0.25
    reward_fn = REWARDS[reward].bind(alpha=0.5) if reward == "power" else REWARDS[reward].bind()
    n = int(mask_BT.sum())

    logits_BTV = student(hidden_BTH) / temperature
    ref_logp_BT = F.log_softmax(logits_BTV, -1).gather(-1, tokens_BT[..., None]).squeeze(-1)
    ref_reward_BT = reward_fn(teacher_logp_BT, ref_logp_BT.detach(), mask_BT)
    ref_loss, _ = policy_gradient_loss(ref_logp_BT, ref_reward_BT, mask_BT, num_tokens=n)
    ref_grads = torch.autograd.grad(ref_loss, (hidden_BTH, student.weight))

    loss, out = fused_policy_gradient_loss(
        student,
        hidden_BTH,
        tokens_BT,
        teacher_logp_BT,
        mask_BT,
        reward_fn,
        num_tokens=n,
        temperature=temperature,
        chunk_size=4,
    )
    logp_BT, reward_BT = out["student_logp"], out["reward"]
    grads = torch.autograd.grad(loss, (hidden_BTH, student.weight))
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(logp_BT, ref_logp_BT.detach())
    torch.testing.assert_close(reward_BT, ref_reward_BT)
    for got, ref in zip(grads, ref_grads):
        torch.testing.assert_close(got, ref)
    assert not logp_BT.requires_grad and not reward_BT.requires_grad


def test_fused_policy_gradient_accumulates_into_a_tied_embedding():
    torch.manual_seed(5)
    embed = torch.nn.Embedding(11, 8)
    head = torch.nn.Linear(8, 11, bias=False)
    head.weight = embed.weight  # tied, as in SmolLM2 and the demo's models
    ids_BT = torch.randint(0, 11, (2, 4))
    tokens_BT = torch.randint(0, 11, (2, 4))
    teacher_logp_BT = torch.full((2, 4), -2.0)
    mask_BT = torch.ones(2, 4, dtype=torch.bool)

    def run(fused):
        embed.zero_grad(set_to_none=True)
        hidden_BTH = torch.tanh(embed(ids_BT))
        if fused:
            loss, _ = fused_policy_gradient_loss(
                head, hidden_BTH, tokens_BT, teacher_logp_BT, mask_BT, REWARDS["log_ratio"].fn, num_tokens=8
            )
        else:
            logp_BT = F.log_softmax(head(hidden_BTH), -1).gather(-1, tokens_BT[..., None]).squeeze(-1)
            loss, _ = policy_gradient_loss(
                logp_BT,
                REWARDS["log_ratio"].fn(teacher_logp_BT, logp_BT.detach(), mask_BT),
                mask_BT,
                num_tokens=8,
            )
        loss.backward()
        return embed.weight.grad.clone()

    torch.testing.assert_close(run(True), run(False))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_kl_equals_exact_kl_in_value_and_gradient(temperature):
    student, teacher = _layers(seed=6)
    vocab = 37  # teacher has 5 padding rows beyond the tokenizer, as Qwen3 does
    s_hidden_BTH = torch.randn(2, 9, 16, requires_grad=True)
    t_hidden_BTH = torch.randn(2, 9, 20)
    tokens_BT = torch.randint(0, vocab, (2, 9))
    mask_BT = torch.rand(2, 9) > 0.3
    n = int(mask_BT.sum())

    s_logits_BTV = student(s_hidden_BTH)[..., :vocab] / temperature
    t_logits_BTV = teacher(t_hidden_BTH)[..., :vocab].detach() / temperature
    exact_BT = reverse_kl_per_token(s_logits_BTV, t_logits_BTV)
    loss_ref, _ = full_kl_loss(exact_BT, mask_BT, num_tokens=n)
    ref_grads = torch.autograd.grad(loss_ref, (s_hidden_BTH, student.weight))

    loss, out = fused_reverse_kl_loss(
        student,
        teacher,
        s_hidden_BTH,
        t_hidden_BTH,
        tokens_BT,
        mask_BT,
        num_tokens=n,
        vocab_size=vocab,
        temperature=temperature,
        chunk_size=5,
    )
    kl_BT, logp_BT, teacher_logp_BT = out["kl"], out["student_logp"], out["teacher_logp"]
    grads = torch.autograd.grad(loss, (s_hidden_BTH, student.weight))
    torch.testing.assert_close(loss, loss_ref)
    torch.testing.assert_close(kl_BT, exact_BT.detach())
    torch.testing.assert_close(logp_BT, selected_logprobs_from_logits(s_logits_BTV.detach(), tokens_BT))
    torch.testing.assert_close(teacher_logp_BT, selected_logprobs_from_logits(t_logits_BTV, tokens_BT))
    for got, ref in zip(grads, ref_grads):
        torch.testing.assert_close(got, ref)
    assert teacher.weight.grad is None and not kl_BT.requires_grad


def test_fused_kl_under_bf16_autocast_reduces_in_float32():
    # bf16 matmuls for the logits, then float32 softmaxes and KL: equal to the exact KL of the bf16 logits.
    # (autocast would run the bmm reduction in bf16 unless the op turns it off)
    student, teacher = _layers(seed=7, vocab=301)
    s_hidden_BTH = torch.randn(2, 6, 16, requires_grad=True)
    t_hidden_BTH = torch.randn(2, 6, 20)
    tokens_BT = torch.randint(0, 301, (2, 6))
    mask_BT = torch.ones(2, 6, dtype=torch.bool)
    teacher = teacher.to(torch.bfloat16)  # as training/loop.py loads it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, out = fused_reverse_kl_loss(
            student,
            teacher,
            s_hidden_BTH,
            t_hidden_BTH.bfloat16(),
            tokens_BT,
            mask_BT,
            num_tokens=12,
            vocab_size=301,
            chunk_size=4,
        )
    kl_BT = out["kl"]
    s_logits_BTV = (s_hidden_BTH.detach().bfloat16() @ student.weight.bfloat16().T).float()
    t_logits_BTV = (t_hidden_BTH.bfloat16() @ teacher.weight.T)[..., :301].float()
    assert kl_BT.dtype == torch.float32
    torch.testing.assert_close(kl_BT, reverse_kl_per_token(s_logits_BTV, t_logits_BTV), rtol=1e-5, atol=1e-6)
    (grad_hidden,) = torch.autograd.grad(loss, (s_hidden_BTH,))
    assert grad_hidden.dtype == torch.float32 and torch.isfinite(grad_hidden).all()


class _NotLinear(torch.nn.Module):
    """The same projection, hidden from the fused path (which needs a plain nn.Linear)."""

    def __init__(self, linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        return self.linear(x)


def _micro_batch(head, hidden_BTH, **kw):
    gen = torch.Generator().manual_seed(3)
    B, T, _ = hidden_BTH.shape
    tokens_BT = torch.randint(
        0, head.out_features if hasattr(head, "out_features") else 29, (B, T), generator=gen
    )
    mask_BT = torch.rand(B, T, generator=gen) > 0.25
    teacher_BT = -torch.rand(B, T, generator=gen) * 4
    return MicroBatch(head, hidden_BTH, tokens_BT, mask_BT, float(mask_BT.sum()), TeacherScores(teacher_BT),
                      chunk_size=5, **kw)  # fmt: skip


@pytest.mark.parametrize(
    "label", ["power@2", "proximal@0.3", "log_ratio", "power@2+entropy:0.4", "clip+entropy:0.6"]
)
def test_fused_and_reference_paths_agree(label):
    torch.manual_seed(0)
    head = torch.nn.Linear(12, 29, bias=False)
    objective = make_objective(RewardConfig.from_label(label))
    results = []
    for layer in (head, _NotLinear(head)):
        hidden_BTH = torch.randn(3, 7, 12, generator=torch.Generator().manual_seed(1), requires_grad=True)
        loss, out = objective.micro_batch_loss(_micro_batch(layer, hidden_BTH))
        grads = torch.autograd.grad(loss, (hidden_BTH, head.weight))
        results.append((loss, out, grads))
    (loss_f, out_f, grads_f), (loss_r, out_r, grads_r) = results
    torch.testing.assert_close(loss_f, loss_r)
    for key in ("student_logp", "reward"):
        torch.testing.assert_close(out_f[key], out_r[key])
    assert torch.equal(out_f["selected"], out_r["selected"])
    for a, b in zip(grads_f, grads_r):
        torch.testing.assert_close(a, b)


def test_entropy_selection_keeps_the_most_uncertain_tokens_and_only_trains_on_them():
    torch.manual_seed(0)
    head = torch.nn.Linear(12, 29, bias=False)
    hidden_BTH = torch.randn(2, 9, 12, requires_grad=True)
    mb = _micro_batch(head, hidden_BTH)
    loss, out = make_objective(RewardConfig.from_label("power@1+entropy:0.5")).micro_batch_loss(mb)
    logits_BTV = head(hidden_BTH).detach()
    entropy_BT = -(F.softmax(logits_BTV, -1) * F.log_softmax(logits_BTV, -1)).sum(-1)
    valid = int(mb.mask_BT.sum())
    kept = out["selected"]
    assert int(kept.sum()) == math.ceil(0.5 * valid) and not (kept & ~mb.mask_BT).any()
    assert entropy_BT[kept].min() >= entropy_BT[mb.mask_BT & ~kept].max()  # the top half by entropy
    # the loss is the surrogate on the kept tokens, still divided by every valid token of the batch
    logp_BT = F.log_softmax(head(hidden_BTH), -1).gather(-1, mb.tokens_BT[..., None]).squeeze(-1)
    reward_BT = REWARDS["power"].bind(alpha=1.0)(mb.teacher.logp_BT, logp_BT.detach(), mb.mask_BT)
    expected, _ = policy_gradient_loss(logp_BT, reward_BT, kept, num_tokens=valid)
    torch.testing.assert_close(loss, expected)


def test_top_fraction_by_hand():
    score = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3])
    mask = torch.tensor([True, True, True, False, True])
    assert top_fraction(score, mask, 0.5).tolist() == [False, True, True, False, False]  # ceil(0.5·4) = 2
    assert top_fraction(score, mask, 1.0).tolist() == mask.tolist()
    assert not top_fraction(score, torch.zeros(5, dtype=torch.bool), 0.5).any()


def _teacher_micro_batch(head, hidden_BTH, teacher_head, teacher_hidden_BTH, temperature=1.0, teacher_temperature=None):
    mb = _micro_batch(head, hidden_BTH, temperature=temperature, vocab_size=29)
    mb.teacher = TeacherScores(None, teacher_hidden_BTH, teacher_head, teacher_temperature)
    return mb


def test_the_kl_baseline_is_the_log_ratio_plus_the_exact_kl_on_both_paths():
    """vOPD (log_ratio+kl): loss = −Σ sg[log π_T − log π_S + KL]·log π_S / N with the KL of the whole vocabulary
    (reverse_kl_per_token on the tokenizer's range), the same through the fused op and the reference path."""
    torch.manual_seed(0)
    head, teacher_head = torch.nn.Linear(12, 29, bias=False), torch.nn.Linear(16, 31, bias=False)
    teacher_hidden_BTH = torch.randn(3, 7, 16)
    objective = make_objective(RewardConfig.from_label("log_ratio+kl"))
    assert objective.needs_teacher_hidden
    results = []
    for layer in (head, _NotLinear(head)):
        hidden_BTH = torch.randn(3, 7, 12, generator=torch.Generator().manual_seed(1), requires_grad=True)
        mb = _teacher_micro_batch(layer, hidden_BTH, teacher_head, teacher_hidden_BTH, temperature=0.8)
        loss, out = objective.micro_batch_loss(mb)
        results.append((loss, out, torch.autograd.grad(loss, (hidden_BTH, head.weight)), mb))
    (loss_f, out_f, grads_f, mb), (loss_r, out_r, grads_r, _) = results
    torch.testing.assert_close(loss_f, loss_r)
    torch.testing.assert_close(out_f["reward"], out_r["reward"])
    for a, b in zip(grads_f, grads_r):
        torch.testing.assert_close(a, b)
    with torch.no_grad():  # by hand: logits over the shared range at temperature 0.8
        s_BTV = head(mb.hidden_BTH)[..., :29] / 0.8
        t_BTV = teacher_head(teacher_hidden_BTH)[..., :29] / 0.8
        kl_BT = reverse_kl_per_token(s_BTV, t_BTV)
        pick = lambda x: F.log_softmax(x, -1).gather(-1, mb.tokens_BT[..., None])[..., 0]  # noqa: E731
        expected_BT = torch.where(mb.mask_BT, pick(t_BTV) - pick(s_BTV) + kl_BT, 0.0)
    torch.testing.assert_close(out_f["reward"], expected_BT)
    logp_BT = F.log_softmax(head(mb.hidden_BTH) / 0.8, -1).gather(-1, mb.tokens_BT[..., None])[..., 0]
    torch.testing.assert_close(loss_f, -(expected_BT * logp_BT).sum() / mb.num_tokens)


def test_a_teacher_temperature_of_its_own_is_exact_in_the_full_kl():
    """full_kl with the teacher at T_T = 2 and the rollouts at 0.8: the loss is Σ KL(softmax(z_S/0.8) ‖
    softmax(z_T/2)) / N, computed by hand, on the fused and the reference path."""
    torch.manual_seed(0)
    head, teacher_head = torch.nn.Linear(12, 29, bias=False), torch.nn.Linear(16, 29, bias=False)
    teacher_hidden_BTH = torch.randn(3, 7, 16)
    objective = make_objective(RewardConfig(name="full_kl"))
    hidden_BTH = torch.randn(3, 7, 12)
    for layer in (head, _NotLinear(head)):
        mb = _teacher_micro_batch(layer, hidden_BTH, teacher_head, teacher_hidden_BTH, temperature=0.8,
                                  teacher_temperature=2.0)  # fmt: skip
        if not isinstance(layer, torch.nn.Linear):
            mb.teacher = TeacherScores(None, teacher_hidden_BTH, _NotLinear(teacher_head), 2.0)
            with pytest.raises(ValueError, match="bias-free linear output layer"):
                objective.micro_batch_loss(mb)
            continue
        loss, _ = objective.micro_batch_loss(mb)
        with torch.no_grad():
            kl_BT = reverse_kl_per_token(head(hidden_BTH) / 0.8, teacher_head(teacher_hidden_BTH) / 2.0)
        torch.testing.assert_close(loss, torch.where(mb.mask_BT, kl_BT, 0.0).sum() / mb.num_tokens)


def test_the_no_grad_kl_pass_equals_the_chunked_reference():
    """fused.reverse_kl_values (vOPD's memory-light pass) gives chunked_reverse_kl's KL and log-probs, with a
    teacher wider than the tokenizer and a chunk that does not divide B·T."""
    from poweropd.objectives.fused import reverse_kl_values

    student, teacher = _layers()
    torch.manual_seed(4)
    s_BTH, t_BTH = torch.randn(2, 9, 16), torch.randn(2, 9, 20)
    tokens_BT = torch.randint(0, 37, (2, 9))
    kwargs = {"vocab_size": 37, "temperature": 0.7, "chunk_size": 5}
    for a, b in zip(reverse_kl_values(student, teacher, s_BTH, t_BTH, tokens_BT, **kwargs),
                    chunked_reverse_kl(student, teacher, s_BTH, t_BTH, tokens_BT, **kwargs)):  # fmt: skip
        torch.testing.assert_close(a, b.detach())
