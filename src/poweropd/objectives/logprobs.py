"""Log-probabilities of sampled tokens without a B×T×V float32 log_softmax.

The output layer of a causal LM is where the memory goes at a 151,936-token vocabulary: a float32
log_softmax over B×T×V is 4·B·T·V bytes (20 GB for 32×1024 tokens), and autograd keeps it alive for the
backward pass. Here the logits are never materialised for more than ``chunk_size`` positions at a time:
we run the decoder body once, then apply the output projection chunk by chunk. For a bias-free linear
output layer (every HF causal LM) a hand-written backward recomputes one chunk's logits and turns them
into the gradient in place (d log p / d logits = onehot − softmax), so each chunk costs one exp pass
forward and one backward, and one V-sized buffer. Any other output layer runs under activation
checkpointing. Memory for the output layer is O(chunk_size · V) whatever B and T are, and the decoder body
runs once (one student forward per update).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK_SIZE = 1024  # positions per output-layer chunk: 1024 × 151,936 × 4 B ≈ 0.6 GB of float32 logits

OutputLayer = Callable[[Tensor], Tensor]  # hidden_NH -> logits_NV


def selected_logprobs_from_logits(logits_NV: Tensor, tokens_N: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature)[token] in float32, as logit[token] − logsumexp(logits)."""
    logits_NV = logits_NV.float() / temperature
    return logits_NV.gather(-1, tokens_N.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits_NV, dim=-1)


def is_plain_linear(output_layer) -> bool:
    """A bias-free nn.Linear (the lm_head of every HF causal LM): the case with hand-written backward passes."""
    return isinstance(output_layer, torch.nn.Linear) and output_layer.bias is None


def compute_dtype_for(hidden: Tensor) -> torch.dtype:
    """The matmul dtype autocast would use for the output layer (bf16 under bf16 autocast)."""
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


def chunk_logits(hidden_nH: Tensor, weight_VH: Tensor, temperature: float) -> Tensor:
    logits_nV = (hidden_nH @ weight_VH.T).float()  # a fresh buffer, so scaling it in place is safe
    return logits_nV.div_(temperature) if temperature != 1.0 else logits_nV


def exp_normalize_(logits_nV: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Turns a float32 logits buffer into exp(logits − max) in place; returns (that buffer, logsumexp_n,
    sum_n1). softmax = buffer / sum_n1. One exp pass and no V-sized temporary (torch.logsumexp makes one)."""
    max_n1 = logits_nV.amax(-1, keepdim=True)
    exp_nV = logits_nV.sub_(max_n1).exp_()
    sum_n1 = exp_nV.sum(-1, keepdim=True)
    return exp_nV, (max_n1 + sum_n1.log()).squeeze(-1), sum_n1


class _LinearTokenLogprob(torch.autograd.Function):
    """log softmax(h Wᵀ / τ)[token] for a bias-free linear output layer, ``chunk`` positions at a time.

    Saves only the hidden states and logsumexp (N floats); backward recomputes one chunk's logits and
    overwrites them with −g·softmax, adds g at the sampled token, and applies the two matmuls.
    """

    @staticmethod
    def forward(ctx, hidden_NH, weight_VH, tokens_N, temperature, chunk, compute_dtype):
        hidden_NH, weight_VH = hidden_NH.to(compute_dtype), weight_VH.to(compute_dtype)  # bf16 autocast
        logz_N = torch.empty(hidden_NH.shape[0], dtype=torch.float32, device=hidden_NH.device)
        logp_N = torch.empty_like(logz_N)
        for s in range(0, hidden_NH.shape[0], chunk):
            logits_nV = chunk_logits(hidden_NH[s : s + chunk], weight_VH, temperature)
            picked_n = logits_nV.gather(-1, tokens_N[s : s + chunk, None]).squeeze(-1)
            logz_N[s : s + chunk] = exp_normalize_(logits_nV)[1]
            logp_N[s : s + chunk] = picked_n - logz_N[s : s + chunk]
            del logits_nV  # freed before the next chunk's buffer exists: one V-sized buffer at a time
        ctx.save_for_backward(hidden_NH, weight_VH, tokens_N, logz_N)
        ctx.temperature, ctx.chunk = temperature, chunk
        return logp_N

    @staticmethod
    def backward(ctx, grad_N):
        hidden_NH, weight_VH, tokens_N, logz_N = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        acc_dtype = torch.promote_types(weight_VH.dtype, torch.float32)
        grad_hidden_NH = torch.empty_like(hidden_NH) if need_hidden else None
        grad_weight_VH = (
            torch.zeros(weight_VH.shape, dtype=acc_dtype, device=weight_VH.device) if need_weight else None
        )
        for s in range(0, hidden_NH.shape[0], ctx.chunk):
            h_nH, g_n = hidden_NH[s : s + ctx.chunk], grad_N[s : s + ctx.chunk].float()
            # ∂logp/∂logits = onehot(token) − softmax, times g, divided by τ: built in the logits buffer
            grad_nV = chunk_logits(h_nH, weight_VH, ctx.temperature)
            grad_nV.sub_(logz_N[s : s + ctx.chunk, None]).exp_().mul_(-g_n[:, None])
            grad_nV.scatter_add_(-1, tokens_N[s : s + ctx.chunk, None], g_n[:, None])
            if ctx.temperature != 1.0:
                grad_nV.div_(ctx.temperature)
            grad_nV = grad_nV.to(weight_VH.dtype)
            if need_hidden:
                grad_hidden_NH[s : s + ctx.chunk] = grad_nV @ weight_VH
            if need_weight:
                grad_weight_VH.addmm_(grad_nV.T.to(acc_dtype), h_nH.to(acc_dtype))
            del grad_nV
        return grad_hidden_NH, grad_weight_VH, None, None, None, None


def _chunk_logprobs(
    output_layer: OutputLayer, hidden_NH: Tensor, tokens_N: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    logits_NV = output_layer(hidden_NH).float() / temperature
    logz_N = torch.logsumexp(logits_NV, dim=-1)
    logp_N = logits_NV.gather(-1, tokens_N.unsqueeze(-1)).squeeze(-1) - logz_N
    with torch.no_grad():
        entropy_N = logz_N - (F.softmax(logits_NV, dim=-1) * logits_NV).sum(-1)
    return logp_N, entropy_N


def chunked_token_logprobs(
    output_layer: OutputLayer,
    hidden_BTH: Tensor,
    tokens_BT: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """(log π(token), entropy or None) at every position, float32, shape (B, T) each.

    ``hidden_BTH`` are the final hidden states that predict ``tokens_BT``; ``output_layer`` maps them to
    logits (the model's lm_head). Differentiable in the log-probs (entropy is detached, and computed only
    ``with_entropy``: it costs two more V-sized passes per chunk). Only one chunk of logits is alive at any
    time, forward or backward.
    """
    B, T, H = hidden_BTH.shape
    hidden_NH = hidden_BTH.reshape(B * T, H)
    tokens_N = tokens_BT.reshape(B * T)
    if not with_entropy and is_plain_linear(output_layer):
        dtype = compute_dtype_for(hidden_NH)
        logp_N = _LinearTokenLogprob.apply(
            hidden_NH, output_layer.weight, tokens_N, temperature, chunk_size, dtype
        )
        return logp_N.view(B, T), None
    needs_grad = torch.is_grad_enabled() and (
        hidden_NH.requires_grad or any(p.requires_grad for p in _parameters(output_layer))
    )
    logps, entropies = [], []
    for start in range(0, B * T, chunk_size):
        args = (
            output_layer,
            hidden_NH[start : start + chunk_size],
            tokens_N[start : start + chunk_size],
            temperature,
        )
        if needs_grad:
            logp_N, entropy_N = checkpoint(_chunk_logprobs, *args, use_reentrant=False)
        else:
            logp_N, entropy_N = _chunk_logprobs(*args)
        logps.append(logp_N)
        entropies.append(entropy_N)
    entropy_BT = torch.cat(entropies).view(B, T) if with_entropy else None
    return torch.cat(logps).view(B, T), entropy_BT


def _parameters(module: OutputLayer):
    return module.parameters() if isinstance(module, torch.nn.Module) else ()
