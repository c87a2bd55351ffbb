"""Student sampling behind a small ``Sampler`` protocol, and its two fixed-batch engines:

- ``generate``: Hugging Face ``model.generate`` (``HFSampler``), the reference;
- ``loop``: a plain decode loop over a ``DynamicCache`` (``DecodeLoopSampler``): one model forward per new
  token and the sampling written out, without ``generate``'s per-step machinery. For a seed it draws the same
  tokens as ``generate`` (tests/test_rollout.py).

The third, ``continuous`` (transformers' continuous batching), is in continuous.py, the fourth, ``vllm``, in
vllm_engine.py; engines.py names them all for ``--rollout-engine``. Another engine (SGLang) is another
``Sampler``, never a second training loop.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 1024
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k filter; set explicitly because generation_config may default to 50
    stop_token_ids: tuple[int, ...] = ()
    vocab_size: int | None = None
    """Sample only ids below this (the tokenizer's size): an output layer padded beyond the tokenizer (Qwen3:
    151,936 rows for 151,669 tokens) would otherwise emit ids that the tokenizer cannot decode and that the
    full-vocabulary loss, which compares the models over the tokenizer's range, does not cover."""

    def generation_flags(self, rows: int | None = None) -> dict:
        """transformers' sampling flags for these settings and a model of ``rows`` output rows; temperature 0
        means greedy, and the sampling flags are then left out (transformers warns about unused ones)."""
        flags = {"do_sample": False}
        if self.temperature > 0:
            flags = {
                "do_sample": True,
                "temperature": self.temperature,
                "top_p": self.top_p,
                "top_k": self.top_k,
            }
        if self.vocab_size is not None and rows is not None and rows > self.vocab_size:
            flags["suppress_tokens"] = list(range(self.vocab_size, rows))
        return flags


@dataclass
class Rollouts:
    """A batch of prompts and sampled responses, laid out as one tensor for the scoring forward passes.

    ``input_ids_BL[:, :prompt_len]`` are the left-padded prompts, ``input_ids_BL[:, prompt_len:]`` the
    responses, right-padded after their stop token. T = L − prompt_len.
    """

    input_ids_BL: Tensor
    attention_mask_BL: Tensor  # 1 for prompt and response tokens up to and including the stop token
    prompt_len: int
    response_mask_BT: Tensor  # True for generated tokens up to and including the stop token
    truncated_B: Tensor  # True where no stop token was generated within max_new_tokens
    sampler_logp_BT: Tensor | None = None
    """The engine's own log-probs of the sampled tokens (vLLM), to measure its mismatch with the trainer's."""
    teacher_B: list[str] | None = None
    """Which teacher scores each row (several teachers, teacher.RoutedScorer); set by the loop."""

    @property
    def response_ids_BT(self) -> Tensor:
        return self.input_ids_BL[:, self.prompt_len :]

    @property
    def response_lengths_B(self) -> Tensor:
        return self.response_mask_BT.sum(-1)

    def loss_mask(self, include_stop_token: bool = False) -> Tensor:
        """Tokens that enter the loss: the response, without its final stop token unless asked.

        A truncated rollout has no stop token and keeps all of its tokens.
        """
        if include_stop_token:
            return self.response_mask_BT
        last_B = self.response_lengths_B - 1
        is_stop_BT = torch.zeros_like(self.response_mask_BT)
        has_stop_B = ~self.truncated_B & (last_B >= 0)
        rows_B = torch.nonzero(has_stop_B).squeeze(-1)
        is_stop_BT[rows_B, last_B[rows_B]] = True
        return self.response_mask_BT & ~is_stop_BT

    def select(self, rows: slice | Tensor) -> Rollouts:
        logp, names = self.sampler_logp_BT, self.teacher_B
        if names is not None:
            names = names[rows] if isinstance(rows, slice) else [names[int(i)] for i in rows]
        return Rollouts(
            self.input_ids_BL[rows],
            self.attention_mask_BL[rows],
            self.prompt_len,
            self.response_mask_BT[rows],
            self.truncated_B[rows],
            None if logp is None else logp[rows],
            names,
        )

    def to(self, device) -> Rollouts:
        logp = self.sampler_logp_BT
        return Rollouts(
            self.input_ids_BL.to(device),
            self.attention_mask_BL.to(device),
            self.prompt_len,
            self.response_mask_BT.to(device),
            self.truncated_B.to(device),
            None if logp is None else logp.to(device),
            self.teacher_B,
        )


class Sampler(Protocol):
    """Rollouts for prompts: row ``i·n + k`` is sample k of prompt i.

    ``streams`` is True for an engine that batches any number of prompts itself (a caller then passes all of
    them at once); False for a fixed-batch engine, where every row of a call waits for the longest.
    """

    streams: bool

    def sample(self, prompt_ids: list[list[int]], n: int = 1) -> Rollouts: ...

    def sync_weights(self) -> None:
        """The engine's copy of the weights brought up to the model's (after an optimizer step); a no-op for an
        engine that reads the model itself."""

    def close(self) -> None: ...


def left_pad(prompt_ids: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Token lists -> (ids_BP, mask_BP), left-padded to the longest prompt."""
    width = max(len(p) for p in prompt_ids)
    ids_BP = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    mask_BP = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for i, ids in enumerate(prompt_ids):
        if ids:
            ids_BP[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask_BP[i, width - len(ids) :] = 1
    return ids_BP, mask_BP


def mask_after_stop(response_ids_BT: Tensor, stop_token_ids: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """(response_mask_BT, truncated_B): keep tokens up to and including the first stop token."""
    is_stop_BT = torch.isin(response_ids_BT, torch.tensor(stop_token_ids, device=response_ids_BT.device))
    stops_before_BT = is_stop_BT.long().cumsum(-1) - is_stop_BT.long()  # stop tokens strictly before t
    response_mask_BT = stops_before_BT == 0
    truncated_B = ~is_stop_BT.any(-1)
    return response_mask_BT, truncated_B


class _PromptSampler:
    """What every engine holds: the model, its pad id, and the sampling settings (at least one stop token)."""

    streams = False

    def __init__(self, model, pad_token_id: int, config: SamplingConfig):
        if not config.stop_token_ids:
            raise ValueError("SamplingConfig.stop_token_ids: expected at least one stop token id")
        self.model, self.pad_token_id, self.config = model, pad_token_id, config

    def close(self) -> None:
        """Releases what the engine holds beyond the model (nothing, for a fixed-batch engine)."""

    def sync_weights(self) -> None:
        """Nothing to sync: a fixed-batch engine samples from the model itself."""

    def _left_padded_rows(self, prompt_ids: list[list[int]], n: int) -> tuple[Tensor, Tensor]:
        """(ids_BP, mask_BP) of every prompt repeated n times in a row (row i·n + k: sample k of prompt i)."""
        return left_pad([ids for ids in prompt_ids for _ in range(n)], self.pad_token_id)


class HFSampler(_PromptSampler):
    """Samples with ``model.generate`` from left-padded prompts."""

    @torch.no_grad()
    def sample(self, prompt_ids: list[list[int]], n: int = 1) -> Rollouts:
        device = next(self.model.parameters()).device
        ids_BP, mask_BP = (t.to(device) for t in self._left_padded_rows(prompt_ids, n))
        cfg = self.config
        was_training = self.model.training
        self.model.eval()
        out_BL = self.model.generate(
            input_ids=ids_BP,
            attention_mask=mask_BP,
            **cfg.generation_flags(self.model.config.vocab_size if cfg.vocab_size is not None else None),
            max_new_tokens=cfg.max_new_tokens,
            eos_token_id=list(cfg.stop_token_ids),
            pad_token_id=self.pad_token_id,
        )
        self.model.train(was_training)
        return build_rollouts(out_BL, mask_BP, cfg.stop_token_ids, self.pad_token_id)


def filter_logits(logits_BV: Tensor, *, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Logits with the tokens outside the top-k and outside the top-p nucleus set to −inf.

    The nucleus is the smallest set of most likely tokens whose probability reaches ``top_p`` (at least one
    token), as in Holtzman et al. 2020 and transformers' ``TopPLogitsWarper``; top-k is applied first.
    """
    if top_k > 0 and top_k < logits_BV.shape[-1]:
        kth_B1 = torch.topk(logits_BV, top_k, dim=-1).values[:, -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth_B1, float("-inf"))
    if top_p < 1.0:
        sorted_BV, order_BV = torch.sort(logits_BV, descending=True)
        mass_before_BV = sorted_BV.softmax(-1).cumsum(-1) - sorted_BV.softmax(-1)
        drop_BV = mass_before_BV >= top_p  # tokens reached only after the nucleus is complete
        drop_BV[:, 0] = False
        logits_BV = logits_BV.masked_fill(drop_BV.scatter(-1, order_BV, drop_BV), float("-inf"))
    return logits_BV


class DecodeLoopSampler(_PromptSampler):
    """Samples with a plain decode loop: prefill the left-padded prompts, then one forward per new token.

    Each step: float32 logits of the last position, temperature, top-k, top-p, ``torch.multinomial`` from the
    global RNG (greedy: argmax). A row that has emitted a stop token is finished: its later tokens are pad
    (masked out by ``build_rollouts``), and the loop ends when every row is finished or at ``max_new_tokens``.
    """

    @torch.no_grad()
    def sample(self, prompt_ids: list[list[int]], n: int = 1) -> Rollouts:
        from transformers import DynamicCache

        cfg, model = self.config, self.model
        device = next(model.parameters()).device
        ids_BP, mask_BP = (t.to(device) for t in self._left_padded_rows(prompt_ids, n))
        stops = torch.tensor(cfg.stop_token_ids, device=device)
        was_training = model.training
        model.eval()
        # transformers 5.x renames the forward's ``past_key_values`` to ``cache`` (the old name warns)
        cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        cache = {cache_kw: DynamicCache(config=model.config)}
        mask_BL = mask_BP
        position_B1 = (mask_BP.cumsum(-1) - 1).clamp(min=0)
        out = model(
            input_ids=ids_BP,
            attention_mask=mask_BL,
            position_ids=position_B1,
            use_cache=True,
            logits_to_keep=1,
            **cache,
        )
        position_B1 = position_B1[:, -1:]
        finished_B = torch.zeros(ids_BP.shape[0], dtype=torch.bool, device=device)
        new_tokens = []
        for _ in range(cfg.max_new_tokens):
            logits_BV = out.logits[:, -1].float()
            if cfg.vocab_size is not None:  # as generate's suppress_tokens: the same width, the same draws
                logits_BV[:, cfg.vocab_size :] = float("-inf")
            if cfg.temperature > 0:
                logits_BV = filter_logits(logits_BV / cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
                next_B = torch.multinomial(logits_BV.softmax(-1), num_samples=1).squeeze(1)
            else:
                next_B = logits_BV.argmax(-1)
            next_B = torch.where(finished_B, self.pad_token_id, next_B)
            new_tokens.append(next_B)
            finished_B |= torch.isin(next_B, stops)
            if bool(finished_B.all()):
                break
            mask_BL = torch.cat([mask_BL, torch.ones_like(mask_BL[:, :1])], dim=1)
            position_B1 = position_B1 + 1
            out = model(
                input_ids=next_B[:, None],
                attention_mask=mask_BL,
                position_ids=position_B1,
                use_cache=True,
                **cache,
            )
        model.train(was_training)
        sequences_BL = torch.cat([ids_BP, torch.stack(new_tokens, dim=1)], dim=1)
        return build_rollouts(sequences_BL, mask_BP, cfg.stop_token_ids, self.pad_token_id)


def build_rollouts(
    sequences_BL: Tensor, prompt_mask_BP: Tensor, stop_token_ids, pad_token_id: int
) -> Rollouts:
    prompt_len = prompt_mask_BP.shape[1]
    response_BT = sequences_BL[:, prompt_len:]
    if response_BT.shape[1] == 0:  # max_new_tokens=0 or every prompt stopped at once: keep one column
        response_BT = torch.full_like(sequences_BL[:, :1], pad_token_id)
        sequences_BL = torch.cat([sequences_BL, response_BT], dim=1)
    response_mask_BT, truncated_B = mask_after_stop(response_BT, tuple(stop_token_ids))
    input_ids_BL = sequences_BL.clone()
    input_ids_BL[:, prompt_len:] = torch.where(response_mask_BT, response_BT, pad_token_id)
    attention_mask_BL = torch.cat([prompt_mask_BP, response_mask_BT.long()], dim=1)
    return Rollouts(input_ids_BL, attention_mask_BL, prompt_len, response_mask_BT, truncated_B)
