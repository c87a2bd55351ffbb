"""Training objectives: the REINFORCE surrogate for sampled-token rewards and the full-vocabulary reverse KL.

Pure functions of tensors; each returns ``(loss, metrics)`` where metrics are detached scalars with
namespaced keys. Aggregation is a token mean over the *whole* batch: the caller passes ``num_tokens``, the
count of valid tokens over every micro-batch and process, so that gradient accumulation and data parallelism
give the same gradient as one big batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .logprobs import (
    DEFAULT_CHUNK_SIZE,
    OutputLayer,
    chunk_logits,
    compute_dtype_for,
    exp_normalize_,
    is_plain_linear,
)


def policy_gradient_loss(
    student_logp_BT: Tensor, reward_BT: Tensor, mask_BT: Tensor, *, num_tokens: int | float
) -> tuple[Tensor, dict[str, Tensor]]:
    """L = −Σ_t sg[r_t] · log π_S(o_t | c_t) / N  (PowerOPD paper, eq. 1; no ratio, no KL, no baseline).

    Its gradient is −Σ_t r_t ∇log π_S(o_t) / N, the on-policy REINFORCE estimate of the reward's gradient.
    """
    mask_BT = mask_BT.bool()
    weighted_BT = torch.where(mask_BT, reward_BT.detach().float() * student_logp_BT.float(), 0.0)
    loss = -weighted_BT.sum() / num_tokens
    return loss, {"loss/pg": loss.detach()}


class _LinearGradients:
    """Gradients of a bias-free linear layer (logits_nV = h_nH Wᵀ), accumulated chunk by chunk during a
    forward pass, and handed to autograd's backward scaled by the incoming gradient of the loss.

    The fused losses below know ∂L/∂logits as soon as a chunk's logits exist, so the logits are never
    recomputed: three matmuls per position (logits, ∂hidden, ∂W) against the four of a forward pass followed
    by backpropagation through it.
    """

    def __init__(self, ctx, hidden_NH: Tensor, weight_VH: Tensor, rows: int, dtype: torch.dtype):
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        self.dtype = dtype
        self.hidden_NH = (
            torch.empty(hidden_NH.shape, dtype=dtype, device=hidden_NH.device) if need_hidden else None
        )
        # float32 accumulation over chunks, and only the first ``rows`` rows get a gradient (vocabulary range)
        self.weight_VH = (
            torch.zeros(weight_VH.shape, dtype=torch.float32, device=weight_VH.device)
            if need_weight
            else None
        )
        self.rows = rows

    def add(self, s: int, grad_nV: Tensor, h_nH: Tensor, weight_c: Tensor) -> None:
        """Chunk ``s:s+n``: ∂L/∂logits (float32, may be overwritten) → ∂L/∂hidden rows and ∂L/∂W."""
        grad_nV = grad_nV.to(self.dtype)
        if self.hidden_NH is not None:
            self.hidden_NH[s : s + grad_nV.shape[0]] = grad_nV @ weight_c
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


class _FusedLinearPolicyGradient(torch.autograd.Function):
    """The surrogate with a bias-free linear output layer inside, its gradient built during the forward pass.

    For a per-token reward r_t = f(log π_T(o_t), log π_S(o_t)), ∂L/∂logits_t = −(r_t / N)(onehot(o_t) − π_t)/τ
    is known as soon as a chunk's logits exist (see ``_LinearGradients``).
    """

    @staticmethod
    def forward(
        ctx,
        hidden_NH,
        weight_VH,
        tokens_N,
        teacher_logp_N,
        mask_N,
        reward_fn,
        num_tokens,
        temperature,
        chunk,
        dtype,
    ):
        hidden_c, weight_c = hidden_NH.to(dtype), weight_VH.to(dtype)
        N = hidden_NH.shape[0]
        logp_N = torch.empty(N, dtype=torch.float32, device=hidden_NH.device)
        reward_N = torch.empty_like(logp_N)
        grads = _LinearGradients(ctx, hidden_NH, weight_VH, weight_VH.shape[0], dtype)
        for s in range(0, N, chunk):
            h_nH, tokens_n, mask_n = (
                hidden_c[s : s + chunk],
                tokens_N[s : s + chunk, None],
                mask_N[s : s + chunk],
            )
            logits_nV = chunk_logits(h_nH, weight_c, temperature)
            picked_n = logits_nV.gather(-1, tokens_n).squeeze(-1)
            # One exp pass, in place: the buffer goes logits → exp(logits − max) → the logits' gradient.
            exp_nV, logz_n, sum_n1 = exp_normalize_(logits_nV)
            logp_n = picked_n - logz_n
            reward_n = reward_fn(teacher_logp_N[None, s : s + chunk], logp_n[None], mask_n[None])[0]
            logp_N[s : s + chunk], reward_N[s : s + chunk] = logp_n, reward_n
            g_n = torch.where(mask_n, -reward_n / num_tokens, 0.0)  # ∂L/∂log π_S(o_t)
            # ∂log π/∂logits = (onehot − softmax)/τ, with softmax = exp / sum
            grad_nV = exp_nV.mul_(-g_n[:, None] / sum_n1)
            grad_nV.scatter_add_(-1, tokens_n, g_n[:, None])
            if temperature != 1.0:
                grad_nV.div_(temperature)
            grads.add(s, grad_nV, h_nH, weight_c)
            del logits_nV, exp_nV, grad_nV  # one chunk's buffer at a time (else two at the next matmul)
        loss = -torch.where(mask_N, reward_N * logp_N, 0.0).sum() / num_tokens
        grads.save(ctx, hidden_NH, weight_VH)
        ctx.mark_non_differentiable(logp_N, reward_N)
        return loss, logp_N, reward_N

    @staticmethod
    def backward(ctx, grad_loss, _grad_logp, _grad_reward):
        return *_LinearGradients.backward(ctx, grad_loss), *([None] * 8)


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
) -> tuple[Tensor, Tensor, Tensor]:
    """``policy_gradient_loss`` of a per-token reward, fused with a bias-free linear output layer.

    Returns (loss, student_logp_BT, reward_BT), the last two detached. Same loss and gradient as computing
    log π_S with ``chunked_token_logprobs`` and calling ``policy_gradient_loss`` (a test checks it), at
    three instead of four vocabulary-sized matmuls per position. ``reward_fn`` must be per-token (not zscore).
    """
    if not is_plain_linear(output_layer):
        raise ValueError("fused_policy_gradient_loss: expected a bias-free torch.nn.Linear output layer")
    B, T, H = hidden_BTH.shape
    loss, logp_N, reward_N = _FusedLinearPolicyGradient.apply(
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
    )
    return loss, logp_N.view(B, T), reward_N.view(B, T)


def reverse_kl_per_token(student_logits_BTV: Tensor, teacher_logits_BTV: Tensor) -> Tensor:
    """Exact KL(π_S ‖ π_T) = Σ_v π_S(v)(log π_S(v) − log π_T(v)) at every position, float32, shape (B, T).

    Materialises two float32 log-softmaxes over B×T×V: the reference that the chunked version is tested
    against, and the naive recipe that benchmarks/step_bench.py measures.
    """
    student_logp_BTV = F.log_softmax(student_logits_BTV.float(), dim=-1)
    teacher_logp_BTV = F.log_softmax(teacher_logits_BTV.float(), dim=-1)
    return (student_logp_BTV.exp() * (student_logp_BTV - teacher_logp_BTV)).sum(-1)


def _chunk_reverse_kl(
    student_output_layer: OutputLayer,
    teacher_output_layer: OutputLayer,
    student_hidden_NH: Tensor,
    teacher_hidden_NH: Tensor,
    tokens_N: Tensor,
    vocab_size: int,
    temperature: float,
) -> tuple[Tensor, Tensor, Tensor]:
    student_logits_NV = student_output_layer(student_hidden_NH)[:, :vocab_size].float() / temperature
    with torch.no_grad():
        teacher_logits_NV = teacher_output_layer(teacher_hidden_NH)[:, :vocab_size].float() / temperature
        teacher_logp_NV = F.log_softmax(teacher_logits_NV.to(student_logits_NV.device), dim=-1)
    student_logp_NV = F.log_softmax(student_logits_NV, dim=-1)
    kl_N = (student_logp_NV.exp() * (student_logp_NV - teacher_logp_NV)).sum(-1)
    with torch.no_grad():
        sampled_logp_N = student_logp_NV.gather(-1, tokens_N.unsqueeze(-1)).squeeze(-1)
        teacher_sampled_logp_N = teacher_logp_NV.gather(-1, tokens_N.unsqueeze(-1)).squeeze(-1)
    return kl_N, sampled_logp_N, teacher_sampled_logp_N


def chunked_reverse_kl(
    student_output_layer: OutputLayer,
    teacher_output_layer: OutputLayer,
    student_hidden_BTH: Tensor,
    teacher_hidden_BTH: Tensor,
    tokens_BT: Tensor,
    *,
    vocab_size: int,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Tensor, Tensor, Tensor]:
    """Exact per-token reverse KL from hidden states, ``chunk_size`` positions at a time, float32 (B, T).

    Equal to ``reverse_kl_per_token`` on the two models' logits restricted to the first ``vocab_size``
    entries (the shared tokenizer range; Qwen3 pads its embedding beyond it). Under checkpointing, so the
    backward pass recomputes one chunk of logits at a time. Also returns the student's and the teacher's
    (renormalised) log-probs of the sampled token, detached, for the log-ratio diagnostics that every run
    logs: (kl_BT, student_logp_BT, teacher_logp_BT).
    """
    B, T, _ = student_hidden_BTH.shape
    s_hidden_NH = student_hidden_BTH.reshape(B * T, -1)
    t_hidden_NH = teacher_hidden_BTH.reshape(B * T, -1)
    tokens_N = tokens_BT.reshape(B * T)
    kls, logps, teacher_logps = [], [], []
    for start in range(0, B * T, chunk_size):
        stop = start + chunk_size
        args = (
            student_output_layer,
            teacher_output_layer,
            s_hidden_NH[start:stop],
            t_hidden_NH[start:stop],
            tokens_N[start:stop],
            vocab_size,
            temperature,
        )
        if torch.is_grad_enabled():
            kl_N, logp_N, teacher_logp_N = checkpoint(_chunk_reverse_kl, *args, use_reentrant=False)
        else:
            kl_N, logp_N, teacher_logp_N = _chunk_reverse_kl(*args)
        kls.append(kl_N)
        logps.append(logp_N)
        teacher_logps.append(teacher_logp_N)
    return tuple(torch.cat(parts).view(B, T) for parts in (kls, logps, teacher_logps))


def _rowwise_dot(a_nV: Tensor, b_nV: Tensor) -> Tensor:
    """Σ_v a·b per row in float32 without an n×V temporary (autocast would run the bmm in bf16)."""
    with torch.autocast(a_nV.device.type, enabled=False):
        return torch.bmm(a_nV[:, None, :], b_nV[:, :, None]).view(-1)


class _FusedLinearReverseKL(torch.autograd.Function):
    """Σ_t w_t KL_t(π_S ‖ π_T) with both bias-free output layers inside, the gradient built in the forward pass.

    ∂KL_t/∂z_S = π_S ⊙ (log π_S − log π_T − KL_t) / τ for student logits z_S (the teacher is fixed), so one
    chunk costs two logits matmuls (student, teacher) and the student's ∂hidden and ∂W: four vocabulary-sized
    matmuls per position, as the naive recipe's forward + backward, with O(chunk · V) memory. Per chunk, in
    float32: the student's and the teacher's logits, a logsumexp temporary, then the two buffers are turned
    in place into π_S and log π_S − log π_T, and the latter into the gradient.
    """

    @staticmethod
    def forward(
        ctx,
        hidden_NH,
        weight_VH,
        teacher_hidden_NH,
        teacher_weight_VH,
        tokens_N,
        weight_N,
        vocab_size,
        temperature,
        chunk,
        dtype,
    ):
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
            grads.add(s, grad_nV, h_nH, weight_c)
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
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``full_kl_loss`` of ``chunked_reverse_kl``, fused with two bias-free linear output layers.

    Returns (loss, kl_BT, student_logp_BT, teacher_logp_BT), the last three detached (log-probs of the
    sampled tokens over the first ``vocab_size`` entries). Same loss and gradients as the checkpointed
    ``chunked_reverse_kl`` (a test checks it) without recomputing any logits in the backward pass.
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
    return loss, kl_N.view(B, T), logp_N.view(B, T), teacher_logp_N.view(B, T)


def full_kl_loss(
    kl_BT: Tensor, mask_BT: Tensor, *, num_tokens: int | float
) -> tuple[Tensor, dict[str, Tensor]]:
    """L = Σ_t KL_t / N over valid tokens: full-vocabulary OPD, differentiated exactly (no sampling noise)."""
    loss = torch.where(mask_BT.bool(), kl_BT, 0.0).sum() / num_tokens
    return loss, {"loss/full_kl": loss.detach()}
