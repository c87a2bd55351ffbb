"""Rollout engines by name, for ``--rollout-engine`` in train, eval, diagnose and demo.

- ``generate``: ``model.generate`` in fixed batches (rollout.HFSampler), the reference;
- ``loop``: a plain KV-cache decode loop, the same samples as ``generate`` for a seed (rollout.DecodeLoopSampler);
- ``continuous``: transformers' continuous batching, requests leave as they stop and n samples fork from one
  prefill (continuous.ContinuousBatchingSampler); its samples for a seed are its own;
- ``auto``: the engine that measured fastest on the device (BENCHMARKS.md, "Rollout engines"): ``loop`` on CPU;
  on CUDA ``generate``, because no engine has been measured on a GPU yet.
"""

from __future__ import annotations

import torch

from .continuous import ContinuousBatchingSampler
from .rollout import DecodeLoopSampler, HFSampler, Sampler, SamplingConfig

SAMPLERS = {"generate": HFSampler, "loop": DecodeLoopSampler, "continuous": ContinuousBatchingSampler}
"""The engines themselves, by name."""

AUTO = {"cpu": "loop", "cuda": "generate"}
"""What ``auto`` resolves to per device type (anything else: generate)."""

ENGINES = (*SAMPLERS, "auto")
"""Every value ``--rollout-engine`` accepts."""


def resolve_engine(engine: str, device: torch.device | str) -> str:
    """The engine name ``auto`` stands for on ``device``; other names unchanged."""
    if engine != "auto":
        return engine
    return AUTO.get(torch.device(device).type, "generate")


def make_sampler(
    engine: str, model, pad_token_id: int, config: SamplingConfig, *, dtype: torch.dtype | None = None
) -> Sampler:
    """The sampler of ``engine`` on ``model``; ``dtype`` is the compute dtype when the caller samples under
    autocast (the continuous engine then samples from a copy in that dtype: autocast does not reach its thread).
    """
    name = resolve_engine(engine, next(model.parameters()).device)
    if name == "continuous":
        return ContinuousBatchingSampler(model, pad_token_id, config, dtype=dtype)
    return SAMPLERS[name](model, pad_token_id, config)


ENGINE_HELP = (
    "sampler: generate (model.generate, the reference), loop (a plain KV-cache decode loop, the same samples), "
    "continuous (transformers' continuous batching: no waiting for the longest row, n samples forked from one "
    "prefill) or auto (loop on CPU, generate on CUDA: what measured fastest; BENCHMARKS.md)"
)
