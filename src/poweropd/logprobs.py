"""Log-probabilities of sampled tokens without a B×T×V float32 log_softmax.

The output layer of a causal LM is where the memory goes at a 151,936-token vocabulary: a float32
log_softmax over B×T×V is 4·B·T·V bytes (20 GB for 32×1024 tokens), and autograd keeps it alive for the
backward pass. Here the logits are never materialised for more than ``chunk_size`` positions at a time:
we run the decoder body once, then apply the output projection chunk by chunk under activation
checkpointing, so the backward pass recomputes one chunk's logits at a time. Memory for the output layer
is O(chunk_size · V) whatever B and T are, and the decoder body runs once (one student forward per update).
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
) -> tuple[Tensor, Tensor]:
    """(log π(token), entropy) at every position, float32, shape (B, T) each.

    ``hidden_BTH`` are the final hidden states that predict ``tokens_BT``; ``output_layer`` maps them to
    logits (the model's lm_head). Differentiable in the log-probs (entropy is detached). When gradients are
    needed each chunk runs under checkpointing, so only one chunk of logits is alive at any time.
    """
    B, T, H = hidden_BTH.shape
    hidden_NH = hidden_BTH.reshape(B * T, H)
    tokens_N = tokens_BT.reshape(B * T)
    needs_grad = torch.is_grad_enabled() and (
        hidden_NH.requires_grad or any(p.requires_grad for p in _parameters(output_layer))
    )
    logps, entropies = [], []
    for start in range(0, B * T, chunk_size):
        args = (output_layer, hidden_NH[start : start + chunk_size], tokens_N[start : start + chunk_size], temperature)
        if needs_grad:
            logp_N, entropy_N = checkpoint(_chunk_logprobs, *args, use_reentrant=False)
        else:
            logp_N, entropy_N = _chunk_logprobs(*args)
        logps.append(logp_N)
        entropies.append(entropy_N)
    return torch.cat(logps).view(B, T), torch.cat(entropies).view(B, T)


def _parameters(module: OutputLayer):
    return module.parameters() if isinstance(module, torch.nn.Module) else ()
