"""The fused output-layer ops: a bias-free linear output layer and the loss in one autograd function.

Each op knows ∂L/∂logits as soon as a chunk's logits exist, so it builds the gradient during the forward pass
(``_LinearGradients``) and never recomputes the logits: three vocabulary-sized matmuls per position for a
sampled-token reward (logits, ∂hidden, ∂W) instead of four, four for the full-vocabulary KL (both models'
logits, ∂hidden, ∂W), with one chunk's V-sized buffer alive at a time. ``losses.py`` chooses between these
and the reference paths (``logprobs.chunked_token_logprobs`` + the plain losses), and tests prove they agree.
Each op returns ``(loss, metrics)``, the metrics detached per-token tensors.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .logprobs import DEFAULT_CHUNK_SIZE, chunk_logits, compute_dtype_for, exp_normalize_, is_plain_linear


class _LinearGradients:
    """Gradients of a bias-free linear layer (logits_nV = h_nH Wᵀ), accumulated chunk by chunk during a
    forward pass, and handed to autograd's backward scaled by the incoming gradient of the loss."""

    def __init__(self, ctx, hidden_NH: Tensor, weight_VH: Tensor, rows: int, dtype: torch.dtype):
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        self.dtype = dtype
        # zeros: with token selection some rows get no gradient at all
        self.hidden_NH = (
            torch.zeros(hidden_NH.shape, dtype=dtype, device=hidden_NH.device) if need_hidden else None
        )
        # float32 accumulation over chunks, and only the first ``rows`` rows get a gradient (vocabulary range)
        self.weight_VH = (
            torch.zeros(weight_VH.shape, dtype=torch.float32, device=weight_VH.device)
            if need_weight
            else None
        )
        self.rows = rows

    def add(self, rows: slice | Tensor, grad_nV: Tensor, h_nH: Tensor, weight_c: Tensor) -> None:
        """Positions ``rows`` (a slice or an index tensor): ∂L/∂logits (float32, may be overwritten) →
        ∂L/∂hidden of those rows and ∂L/∂W."""
        grad_nV = grad_nV.to(self.dtype)
        if self.hidden_NH is not None:
            self.hidden_NH[rows] = grad_nV @ weight_c
        if self.weight_VH is not None and self.dtype == torch.float32:
            self.weight_VH[: self.rows].addmm_(grad_nV.T, h_nH)
        elif self.weight_VH is not None:
            self.weight_VH[: self.rows].add_((grad_nV.T @ h_nH).float())

    def save(self, ctx, hidden_NH: Tensor, weight_VH: Tensor) -> None:
        ctx.save_for_backward(self.hidden_NH, self.weight_VH)
        ctx.input_dtypes = (hidden_NH.dtype, weight_VH.dtype)

    @staticmethod
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor | None, Tensor | None]:
        grad_hidden_NH, grad_weight_VH = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.input_dtypes
        grad_hidden = (grad_hidden_NH * grad_loss).to(hidden_dtype) if grad_hidden_NH is not None else None
        grad_weight = (grad_weight_VH * grad_loss).to(weight_dtype) if grad_weight_VH is not None else None
        return grad_hidden, grad_weight


def top_fraction(score_N: Tensor, mask_N: Tensor, fraction: float) -> Tensor:
    """Mask of the ceil(fraction · valid) valid positions with the highest score (ties: the earlier one)."""
    valid = int(mask_N.sum())
    keep = min(valid, math.ceil(fraction * valid))
    selected_N = torch.zeros_like(mask_N)
    if keep:
        masked_N = torch.where(mask_N, score_N.float(), -math.inf)
        selected_N[torch.topk(masked_N, keep, sorted=False).indices] = True
    return selected_N


class _FusedLinearPolicyGradient(torch.autograd.Function):
    """L = −Σ_t sg[r_t] log π_S(o_t) / N with the output layer inside; for a per-token reward
    r_t = f(log π_T(o_t), log π_S(o_t)), ∂L/∂logits_t = −(r_t / N)(onehot(o_t) − π_t)/τ.

    With ``select_fraction`` K (token selection by student entropy), a first pass over the chunks computes
    log π_S and the entropy of every position (one matmul per position), the top K of the valid positions by
    entropy are kept, and the gradient pass runs over the kept rows only (three matmuls each): 1 + 3K
    matmuls per position instead of 3, and N more floats of memory.
    """

    @staticmethod
    def forward(ctx, hidden_NH, weight_VH, tokens_N, teacher_logp_N, mask_N, reward_fn, num_tokens,
                temperature, chunk, dtype, select_fraction):  # fmt: skip
        hidden_c, weight_c = hidden_NH.to(dtype), weight_VH.to(dtype)
        N = hidden_NH.shape[0]
        grads = _LinearGradients(ctx, hidden_NH, weight_VH, weight_VH.shape[0], dtype)
        if select_fraction is None:  # every row, chunk by chunk (slices: no copies)
            chunks, logp_N, reward_N, selected_N = (
                [slice(s, s + chunk) for s in range(0, N, chunk)],
                None,
                None,
                mask_N,
            )
        else:  # a first pass for log π_S and the entropy, then the gradient pass over the kept rows only
            logp_N, entropy_N = _logprob_and_entropy(hidden_c, weight_c, tokens_N, temperature, chunk)
            reward_N = reward_fn(teacher_logp_N[None], logp_N[None], mask_N[None])[0]
            selected_N = top_fraction(entropy_N, mask_N, select_fraction)
            kept_R = selected_N.nonzero().squeeze(-1)
            chunks = [kept_R[s : s + chunk] for s in range(0, kept_R.numel(), chunk)]
        out_logp_N = (
            torch.zeros(N, dtype=torch.float32, device=hidden_NH.device) if logp_N is None else logp_N
        )
        out_reward_N = torch.zeros_like(out_logp_N) if reward_N is None else reward_N
        for rows_n in chunks:
            h_nH, tokens_n, mask_n = hidden_c[rows_n], tokens_N[rows_n, None], selected_N[rows_n]
            logits_nV = chunk_logits(h_nH, weight_c, temperature)
            picked_n = logits_nV.gather(-1, tokens_n).squeeze(-1)
            # One exp pass, in place: the buffer goes logits → exp(logits − max) → the logits' gradient.
            exp_nV, logz_n, sum_n1 = exp_normalize_(logits_nV)
            if reward_N is None:
                logp_n = picked_n - logz_n
                reward_n = reward_fn(teacher_logp_N[None, rows_n], logp_n[None], mask_n[None])[0]
                out_logp_N[rows_n], out_reward_N[rows_n] = logp_n, reward_n
            else:
                reward_n = reward_N[rows_n]
            g_n = torch.where(mask_n, -reward_n / num_tokens, 0.0)  # ∂L/∂log π_S(o_t)
            # ∂log π/∂logits = (onehot − softmax)/τ, with softmax = exp / sum
            grad_nV = exp_nV.mul_(-g_n[:, None] / sum_n1)
            grad_nV.scatter_add_(-1, tokens_n, g_n[:, None])
            if temperature != 1.0:
                grad_nV.div_(temperature)
            grads.add(rows_n, grad_nV, h_nH, weight_c)
            del logits_nV, exp_nV, grad_nV  # one chunk's buffer at a time (else two at the next matmul)
        loss = -torch.where(selected_N, out_reward_N * out_logp_N, 0.0).sum() / num_tokens
        grads.save(ctx, hidden_NH, weight_VH)
        ctx.mark_non_differentiable(out_logp_N, out_reward_N, selected_N)
        return loss, out_logp_N, out_reward_N, selected_N

    @staticmethod
    def backward(ctx, grad_loss, _grad_logp, _grad_reward, _grad_selected):
        return *_LinearGradients.backward(ctx, grad_loss), *([None] * 9)


@torch.no_grad()
def _logprob_and_entropy(hidden_NH, weight_VH, tokens_N, temperature, chunk) -> tuple[Tensor, Tensor]:
    """log π(token) and the entropy H = logZ − Σ_v π_v z_v at every position, chunk by chunk, float32."""
    N = hidden_NH.shape[0]
    logp_N = torch.empty(N, dtype=torch.float32, device=hidden_NH.device)
    entropy_N = torch.empty_like(logp_N)
    for s in range(0, N, chunk):
        logits_nV = chunk_logits(hidden_NH[s : s + chunk], weight_VH, temperature)
        picked_n = logits_nV.gather(-1, tokens_N[s : s + chunk, None]).squeeze(-1)
        max_n1 = logits_nV.amax(-1, keepdim=True)
        shifted_nV = logits_nV.sub_(max_n1)  # z − max, in place; with its exp, two V-sized buffers
        exp_nV = shifted_nV.exp()
        sum_n = exp_nV.sum(-1)
        # H = log Σ e^{z−m} − Σ π (z − m)
        entropy_N[s : s + chunk] = sum_n.log() - _rowwise_dot(exp_nV, shifted_nV) / sum_n
        logp_N[s : s + chunk] = picked_n - max_n1.squeeze(-1) - sum_n.log()
        del logits_nV, shifted_nV, exp_nV
    return logp_N, entropy_N


def fused_policy_gradient_loss(
    output_layer: torch.nn.Linear,
    hidden_BTH: Tensor,
    tokens_BT: Tensor,
    teacher_logp_BT: Tensor,
    mask_BT: Tensor,
    reward_fn,
    *,
    num_tokens: int | float,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    select_fraction: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``losses.policy_gradient_loss`` of a per-token reward, fused with a bias-free linear output layer.

    Returns (loss, {"student_logp", "reward", "selected"}: (B, T), detached). Same loss and gradient as computing
    log π_S with ``chunked_token_logprobs`` and calling ``policy_gradient_loss`` (a test checks it), at three
    instead of four vocabulary-sized matmuls per position. ``reward_fn`` must be per-token (not zscore).
    ``select_fraction`` K trains only on the top K of the valid tokens by student entropy (``top_fraction``).
    """
    if not is_plain_linear(output_layer):
        raise ValueError("fused_policy_gradient_loss: expected a bias-free torch.nn.Linear output layer")
    B, T, H = hidden_BTH.shape
    loss, logp_N, reward_N, selected_N = _FusedLinearPolicyGradient.apply(
        hidden_BTH.reshape(B * T, H),
        output_layer.weight,
        tokens_BT.reshape(B * T),
        teacher_logp_BT.reshape(B * T).float(),
        mask_BT.reshape(B * T).bool(),
        reward_fn,
        num_tokens,
        temperature,
        chunk_size,
        compute_dtype_for(hidden_BTH),
        select_fraction,
    )
    metrics = {
        "student_logp": logp_N.view(B, T),
        "reward": reward_N.view(B, T),
        "selected": selected_N.view(B, T),
    }
    return loss, metrics


def _rowwise_dot(a_nV: Tensor, b_nV: Tensor) -> Tensor:
    """Σ_v a·b per row in float32 without an n×V temporary (autocast would run the bmm in bf16)."""
    with torch.autocast(a_nV.device.type, enabled=False):
        return torch.bmm(a_nV[:, None, :], b_nV[:, :, None]).view(-1)


@torch.no_grad()
def reverse_kl_values(
    student_output_layer: torch.nn.Linear,
    teacher_output_layer: torch.nn.Linear,
    student_hidden_BTH: Tensor,
    teacher_hidden_BTH: Tensor,
    tokens_BT: Tensor,
    *,
    vocab_size: int,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Tensor, Tensor, Tensor]:
    """(kl_BT, student_logp_BT, teacher_logp_BT) as ``losses.chunked_reverse_kl`` gives them, without a gradient,
    for bias-free linear output layers: per chunk two float32 logits buffers (over the first ``vocab_size``
    rows), turned in place into π_S and log π_S − log π_T, and one logsumexp temporary (vOPD's baseline)."""
    B, T, _ = student_hidden_BTH.shape
    s_hidden_NH, t_hidden_NH = student_hidden_BTH.reshape(B * T, -1), teacher_hidden_BTH.reshape(B * T, -1)
    tokens_N1 = tokens_BT.reshape(B * T, 1).to(student_hidden_BTH.device)
    s_weight_VH = student_output_layer.weight[:vocab_size]
    t_weight_VH = teacher_output_layer.weight[:vocab_size]
    dtype = compute_dtype_for(student_hidden_BTH)
    kls, logps, teacher_logps = [], [], []
    for start in range(0, B * T, chunk_size):
        n = slice(start, start + chunk_size)
        s_nV = chunk_logits(s_hidden_NH[n].to(dtype), s_weight_VH.to(dtype), temperature)
        t_nV = chunk_logits(t_hidden_NH[n], t_weight_VH, temperature).to(s_nV.device)
        tok_n1 = tokens_N1[n]
        s_lse_n1, t_lse_n1 = torch.logsumexp(s_nV, -1, keepdim=True), torch.logsumexp(t_nV, -1, keepdim=True)
        logps.append((s_nV.gather(-1, tok_n1) - s_lse_n1).squeeze(-1))
        teacher_logps.append((t_nV.gather(-1, tok_n1) - t_lse_n1).squeeze(-1))
        diff_nV = t_nV.sub_(s_nV).neg_().add_(t_lse_n1 - s_lse_n1)  # log π_S − log π_T, in the teacher's buffer
        probs_nV = s_nV.sub_(s_lse_n1).exp_()  # π_S, in the student's
        kls.append(_rowwise_dot(probs_nV, diff_nV))
    return tuple(torch.cat(parts).view(B, T) for parts in (kls, logps, teacher_logps))


class _FusedLinearReverseKL(torch.autograd.Function):
    """Σ_t w_t KL_t(π_S ‖ π_T) with both bias-free output layers inside, the gradient built in the forward pass.

    ∂KL_t/∂z_S = π_S ⊙ (log π_S − log π_T − KL_t) / τ for student logits z_S (the teacher is fixed), so one
    chunk costs two logits matmuls (student, teacher) and the student's ∂hidden and ∂W: four vocabulary-sized
    matmuls per position, as the naive recipe's forward + backward, with O(chunk · V) memory. Per chunk, in
    float32: the student's and the teacher's logits, a logsumexp temporary, then the two buffers are turned
    in place into π_S and log π_S − log π_T, and the latter into the gradient.
    """

    @staticmethod
    def forward(ctx, hidden_NH, weight_VH, teacher_hidden_NH, teacher_weight_VH, tokens_N, weight_N,
                vocab_size, temperature, chunk, dtype):  # fmt: skip
        hidden_c, weight_c = hidden_NH.to(dtype), weight_VH[:vocab_size].to(dtype)
        teacher_weight = teacher_weight_VH[:vocab_size]
        device, N = hidden_NH.device, hidden_NH.shape[0]
        kl_N, logp_N, teacher_logp_N = (torch.empty(N, dtype=torch.float32, device=device) for _ in range(3))
        grads = _LinearGradients(ctx, hidden_NH, weight_VH, vocab_size, dtype)
        for s in range(0, N, chunk):
            h_nH, tokens_n1 = hidden_c[s : s + chunk], tokens_N[s : s + chunk, None]
            diff_nV = chunk_logits(
                teacher_hidden_NH[s : s + chunk].to(teacher_weight.dtype), teacher_weight, temperature
            ).to(device)
            teacher_logz_n1 = torch.logsumexp(diff_nV, -1, keepdim=True)
            teacher_logp_N[s : s + chunk] = (diff_nV.gather(-1, tokens_n1) - teacher_logz_n1).squeeze(-1)
            probs_nV = chunk_logits(h_nH, weight_c, temperature)
            picked_n1 = probs_nV.gather(-1, tokens_n1)
            diff_nV.sub_(probs_nV)  # z_T − z_S, before the student's buffer becomes exp(z_S − max)
            probs_nV, logz_n, sum_n1 = exp_normalize_(probs_nV)
            logp_N[s : s + chunk] = picked_n1.squeeze(-1) - logz_n
            probs_nV.div_(sum_n1)  # π_S
            # log π_S − log π_T = (z_S − logZ_S) − (z_T − logZ_T)
            diff_nV.neg_().add_(teacher_logz_n1 - logz_n[:, None])
            kl_n = _rowwise_dot(probs_nV, diff_nV)
            kl_N[s : s + chunk] = kl_n
            scale_n1 = weight_N[s : s + chunk, None] / temperature
            grad_nV = diff_nV.sub_(kl_n[:, None]).mul_(probs_nV).mul_(scale_n1)
            del probs_nV
            grads.add(slice(s, s + grad_nV.shape[0]), grad_nV, h_nH, weight_c)
            del diff_nV, grad_nV
        loss = (weight_N * kl_N).sum()
        grads.save(ctx, hidden_NH, weight_VH)
        ctx.mark_non_differentiable(kl_N, logp_N, teacher_logp_N)
        return loss, kl_N, logp_N, teacher_logp_N

    @staticmethod
    def backward(ctx, grad_loss, _grad_kl, _grad_logp, _grad_teacher_logp):
        return *_LinearGradients.backward(ctx, grad_loss), *([None] * 8)


def fused_reverse_kl_loss(
    student_output_layer: torch.nn.Linear,
    teacher_output_layer: torch.nn.Linear,
    student_hidden_BTH: Tensor,
    teacher_hidden_BTH: Tensor,
    tokens_BT: Tensor,
    mask_BT: Tensor,
    *,
    num_tokens: int | float,
    vocab_size: int,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``losses.full_kl_loss`` of ``losses.chunked_reverse_kl``, fused with two bias-free linear output layers.

    Returns (loss, {"kl", "student_logp", "teacher_logp"}: (B, T), detached; log-probs of the sampled tokens
    over the first ``vocab_size`` entries). Same loss and gradients as the checkpointed ``chunked_reverse_kl``
    (a test checks it) without recomputing any logits in the backward pass.
    """
    if not (is_plain_linear(student_output_layer) and is_plain_linear(teacher_output_layer)):
        raise ValueError("fused_reverse_kl_loss: expected bias-free torch.nn.Linear output layers")
    B, T, H = student_hidden_BTH.shape
    weight_N = mask_BT.reshape(B * T).float() / num_tokens
    loss, kl_N, logp_N, teacher_logp_N = _FusedLinearReverseKL.apply(
        student_hidden_BTH.reshape(B * T, H),
        student_output_layer.weight,
        teacher_hidden_BTH.reshape(B * T, -1),
        teacher_output_layer.weight,
        tokens_BT.reshape(B * T).to(student_hidden_BTH.device),
        weight_N,
        vocab_size,
        temperature,
        chunk_size,
        compute_dtype_for(student_hidden_BTH),
    )
    metrics = {
        "kl": kl_N.view(B, T),
        "student_logp": logp_N.view(B, T),
        "teacher_logp": teacher_logp_N.view(B, T),
    }
    return loss, metrics
