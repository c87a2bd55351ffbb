"""Teacher scoring behind a small ``Scorer`` protocol. One implementation: an in-process HF model.

A remote teacher (a vLLM server returning prompt log-probs) is a second ``Scorer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .logprobs import DEFAULT_CHUNK_SIZE, chunked_token_logprobs
from .models import output_layer, response_hidden_states
from .rollout import Rollouts


@dataclass
class TeacherScores:
    logp_BT: Tensor | None  # log π_T of each sampled response token, float32 (None: not asked for)
    hidden_BTH: Tensor | None = None  # final hidden states, kept for full-vocabulary losses


class Scorer(Protocol):
    def score(self, rollouts: Rollouts, *, keep_hidden: bool = False, logprobs: bool = True) -> TeacherScores:
        """``logprobs=False`` skips the teacher's output layer: a full-vocabulary loss that gets the hidden
        states (``keep_hidden``) computes the teacher's log-probs with the KL, chunk by chunk."""
        ...


class HFScorer:
    """Scores rollouts with a frozen causal LM in eval mode, without gradients, on its own device."""

    def __init__(
        self, model, *, temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK_SIZE, forward=None
    ):  # fmt: skip
        """``forward(fn, *args)`` runs ``fn(model, *args)``: through FSDP's root when the teacher is sharded
        (``sharding.ShardedModel.run_frozen``), a plain call otherwise."""
        self.model = model.eval().requires_grad_(False)
        self.temperature, self.chunk_size = temperature, chunk_size
        self.forward = forward or (lambda fn, *args: fn(self.model, *args))

    @torch.no_grad()
    def score(self, rollouts: Rollouts, *, keep_hidden: bool = False, logprobs: bool = True) -> TeacherScores:
        r = rollouts.to(next(self.model.parameters()).device)
        return self.forward(self._score, r, keep_hidden, logprobs)

    def _score(self, model, r: Rollouts, keep_hidden: bool, logprobs: bool) -> TeacherScores:
        hidden_BTH = response_hidden_states(model, r.input_ids_BL, r.attention_mask_BL, r.prompt_len)
        logp_BT = None
        if logprobs:
            logp_BT, _ = chunked_token_logprobs(
                output_layer(model),
                hidden_BTH,
                r.response_ids_BT,
                temperature=self.temperature,
                chunk_size=self.chunk_size,
            )
        return TeacherScores(logp_BT=logp_BT, hidden_BTH=hidden_BTH if keep_hidden else None)
