"""Flags that several commands share beyond the config fields' own: the vLLM engine's settings."""

from __future__ import annotations

import argparse

from ..rollout.vllm_engine import VLLMOptions

VLLM_FIELDS = ("vllm_kv_cache_gb", "vllm_gpu_memory_utilization", "vllm_enforce_eager", "vllm_sleep",
               "vllm_max_model_len")  # fmt: skip
"""The RolloutConfig fields of the vLLM engine (speed and memory only)."""


def add_vllm_arguments(parser: argparse.ArgumentParser) -> None:
    """The vLLM engine's flags, the same in every command: RolloutConfig's fields (flags.py)."""
    from ..config.flags import add_field
    from ..config.sections import RolloutConfig

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
