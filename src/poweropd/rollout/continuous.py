"""The ``continuous`` rollout engine: transformers' continuous batching (paged KV cache, a background thread).

Requests enter one queue and leave it as soon as they stop, so a batch never waits for its longest row, and the
n samples of a prompt are forked from one prefill. transformers owns the engine; this module owns the four
pitfalls measured in ../shared/FINDINGS.md:

- the manager is ours, never parked on the model (a parked manager answers later calls with its old settings),
  and is created once (``stop`` costs a garbage collection) with a fresh ``GenerationConfig`` of our settings;
- no block sharing (a kept manager would reuse prompt blocks computed with the weights of an earlier step;
  forked samples still share their prompt's prefill by copying its blocks);
- the KV cache is sized here (transformers' default takes 90% of free GPU memory, 60% of RAM on CPU);
- generation runs in a background thread where the caller's autocast does not apply: with ``dtype=bfloat16``
  the engine samples from a bf16 copy of the model, synced in place before every call.

Sampling draws from the global torch RNG, and all of a call's requests enter the queue while the loop is paused,
so the same RNG state gives the same samples (tests/test_continuous.py). The batch composition is not that of
``generate``, so the samples for a seed differ from the other engines' (their distribution does not).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch

from .samplers import Rollouts, _PromptSampler, build_rollouts


@dataclass(frozen=True)
class CacheSize:
    """The paged KV cache: ``num_blocks`` pages of ``page_size`` tokens, and the tokens per forward."""

    num_blocks: int
    page_size: int
    max_batch_tokens: int


def head_size(model_config) -> int:
    """The attention head size: ``head_dim`` where the config sets it, else hidden / heads."""
    cfg = model_config.get_text_config()
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def kv_bytes_per_token(model_config, dtype: torch.dtype) -> int:
    """Bytes of K and V per cached token over all layers."""
    cfg = model_config.get_text_config()
    head_dim = head_size(model_config)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * torch.finfo(dtype).bits // 8


def size_cache(
    model_config, dtype: torch.dtype, device: torch.device, tokens_wanted: int, *, page_size: int,
    memory_budget_bytes: int | None = None,
) -> CacheSize:  # fmt: skip
    """Enough pages for ``tokens_wanted`` tokens, capped by a memory budget (30% of free GPU memory, 2 GiB on CPU).

    A workload larger than the cache is not an error: the scheduler queues requests until pages free up.
    """
    if memory_budget_bytes is None:
        if device.type == "cuda":
            memory_budget_bytes = int(0.3 * torch.cuda.mem_get_info(device)[0])
        else:
            memory_budget_bytes = 2 * 1024**3
    per_page = kv_bytes_per_token(model_config, dtype) * page_size
    num_blocks = max(2, min(-(-tokens_wanted // page_size) + 1, memory_budget_bytes // per_page))
    max_batch_tokens = 8192 if device.type == "cuda" else 2048
    return CacheSize(num_blocks=int(num_blocks), page_size=page_size, max_batch_tokens=max_batch_tokens)


class ContinuousBatchingSampler(_PromptSampler):
    """Samples with ``model.init_continuous_batching``: one manager per sampler, paused between calls."""

    streams = True  # one call may hold any number of prompts: the engine batches them itself

    def __init__(self, model, pad_token_id: int, config, *, dtype: torch.dtype | None = None, page_size: int = 256,
                 memory_budget_bytes: int | None = None):  # fmt: skip
        super().__init__(model, pad_token_id, config)
        self.page_size, self.memory_budget_bytes = page_size, memory_budget_bytes
        param = next(model.parameters())
        # the engine's model: the caller's, or a copy in the compute dtype (autocast does not reach the thread)
        self._engine_model = model
        if dtype is not None and dtype != param.dtype:
            self._engine_model = copy.deepcopy(model).to(dtype)
        self._manager = None

    def sync_weights(self) -> None:
        """The bf16 copy (if any) takes the model's weights; also done before every call."""
        if self._engine_model is not self.model:
            with torch.no_grad():
                for mine, theirs in zip(
                    self._engine_model.parameters(), self.model.parameters(), strict=True
                ):
                    mine.copy_(theirs)

    def _start(self, tokens_wanted: int):
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        cfg, model = self.config, self._engine_model
        param = next(model.parameters())
        generation = GenerationConfig(
            **cfg.generation_flags(model.config.vocab_size), max_new_tokens=cfg.max_new_tokens, eos_token_id=list(cfg.stop_token_ids),
            pad_token_id=self.pad_token_id,
        )  # fmt: skip
        size = size_cache(model.config, param.dtype, param.device, tokens_wanted, page_size=self.page_size,
                          memory_budget_bytes=self.memory_budget_bytes)  # fmt: skip
        engine = ContinuousBatchingConfig(
            page_size=size.page_size, num_blocks=size.num_blocks, max_batch_tokens=size.max_batch_tokens,
            allow_block_sharing=False, auto_switch_to_flash=False, drop_unsupported_processors=False,
        )  # fmt: skip
        # building the batch processor reseeds the global RNG (transformers' set_tp_seed): keep the caller's
        rng = torch.random.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        manager = model.init_continuous_batching(generation, engine)
        manager.warmup()
        torch.random.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        manager.start()
        self._manager, self.cache_size = manager, size

    @property
    def cache_bytes(self) -> int:
        """Memory the paged KV cache holds between calls (0 before the first call)."""
        if self._manager is None:
            return 0
        param = next(self._engine_model.parameters())
        size = self.cache_size
        return size.num_blocks * size.page_size * kv_bytes_per_token(self._engine_model.config, param.dtype)

    def close(self) -> None:
        """Stops the background thread (also done when the sampler is garbage-collected)."""
        if self._manager is not None:
            self._manager.stop(block=True)
            self._manager.destroy()
            self._manager = None

    def __del__(self):
        with contextlib.suppress(Exception):  # at interpreter shutdown the manager may be half torn down
            self.close()

    @torch.no_grad()
    def sample(self, prompt_ids: list[list[int]], n: int = 1) -> Rollouts:
        cfg = self.config
        ids_BP, mask_BP = self._left_padded_rows(prompt_ids, n)
        if cfg.max_new_tokens == 0 or not prompt_ids:
            return build_rollouts(ids_BP, mask_BP, cfg.stop_token_ids, self.pad_token_id)
        self.sync_weights()
        if self._manager is None:
            self._start(n * sum(len(p) + cfg.max_new_tokens for p in prompt_ids))
        manager = self._manager
        was_training = self.model.training
        self._engine_model.eval()
        manager.num_return_sequences = n  # forks n − 1 children after each prompt's prefill
        with (
            manager.pause()
        ):  # every request is queued before the loop sees one: batches do not depend on timing
            request_ids = [
                manager.add_request(
                    list(ids),
                    request_id=f"p{i}",
                    max_new_tokens=cfg.max_new_tokens,
                    eos_token_id=list(cfg.stop_token_ids),
                )  # fmt: skip
                for i, ids in enumerate(prompt_ids)
            ]
        wanted = {f"{rid}__child#{k}" for rid in request_ids for k in range(n - 1)} | set(request_ids)
        results = {}
        while len(results) < len(wanted):
            result = manager.get_result(timeout=1.0)
            if result is None:
                if not manager.is_running():
                    error = manager.background_thread_status.fatal_error
                    raise RuntimeError(f"continuous batching: the generation thread stopped ({error})")
                continue
            if result.request_id in wanted and result.is_finished():
                if result.error is not None:
                    raise RuntimeError(
                        f"continuous batching: request {result.request_id} failed: {result.error}"
                    )
                results[result.request_id] = result
        self.model.train(was_training)
        self._engine_model.train(was_training)
        # rows in the order asked: each prompt, then its forked samples
        order = [
            rid_k for rid in request_ids for rid_k in [rid] + [f"{rid}__child#{k}" for k in range(n - 1)]
        ]
        responses = [list(results[r].generated_tokens) for r in order]
        width = max(1, max(len(r) for r in responses))
        response_BT = torch.full((ids_BP.shape[0], width), self.pad_token_id, dtype=torch.long)
        for b, tokens in enumerate(responses):
            response_BT[b, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        device = next(self.model.parameters()).device
        sequences_BL = torch.cat([ids_BP, response_BT], dim=1).to(device)
        return build_rollouts(sequences_BL, mask_BP.to(device), cfg.stop_token_ids, self.pad_token_id)
