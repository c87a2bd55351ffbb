"""Depth pruning: a copy of a causal LM that keeps a chosen subset of its decoder layers (no healing).

Used to make a compress-then-distill student from a teacher (FINDINGS.md: SmolLM2-135M-Instruct with its first
8 layers). The copy is self-consistent: the kept layers are renumbered 0..k−1 in the weights, in every
``layer_idx`` attribute (the KV cache is indexed by it) and in the config's per-layer lists, so that
``save_pretrained`` + ``from_pretrained`` round-trips.
"""

from __future__ import annotations

import copy
import re

import torch

from ..errors import UserError
from .hf import decoder_body

_RANGE = re.compile(r"^(\d+)-(\d+)$")


def parse_layer_spec(spec: str, num_layers: int, *, what: str = "--keep-layers") -> list[int]:
    """``"0-7"`` or ``"0,3,6,9"`` or ``"0-3,8,10-11"`` -> layer indices, in the order written.

    Every index must lie in [0, num_layers), appear once and the list must be increasing (a pruned model
    runs its layers in the original order); at least one layer is kept.
    """
    keep: list[int] = []
    for part in spec.replace(" ", "").split(","):
        if part.isdigit():
            keep.append(int(part))
        elif m := _RANGE.match(part):
            first, last = int(m.group(1)), int(m.group(2))
            if first > last:
                raise UserError(f"{what} {spec}: expected ranges written low-high, got '{part}'")
            keep.extend(range(first, last + 1))
        else:
            raise UserError(f"{what} {spec}: expected layer indices like '0-7' or '0,3,6,9', got '{part}'")
    out_of_range = [i for i in keep if i >= num_layers]
    if out_of_range:
        raise UserError(
            f"{what} {spec}: the model has {num_layers} layers (0-{num_layers - 1}), got layer {out_of_range[0]}"
        )
    duplicates = sorted({i for i in keep if keep.count(i) > 1})
    if duplicates:
        raise UserError(f"{what} {spec}: expected each layer once, layer {duplicates[0]} appears twice")
    if keep != sorted(keep):
        raise UserError(f"{what} {spec}: expected layers in increasing order (the original order is kept)")
    return keep


def _layers(model) -> torch.nn.ModuleList:
    layers = getattr(decoder_body(model), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) != model.config.num_hidden_layers:
        raise UserError(
            f"{type(model).__name__}: expected a decoder with a `layers` list of num_hidden_layers modules "
            "(Llama/Qwen/Mistral-style)"
        )
    return layers


def prune_config(config, keep: list[int]):
    """A copy of ``config`` for the kept layers: ``num_hidden_layers`` and every per-layer list shrink.

    A per-layer list is any top-level list attribute whose name contains "layer" and whose length is the
    old number of layers (``layer_types``, SmolLM3's ``no_rope_layers``). ``max_window_layers`` (Qwen2/3:
    layers below it use full attention) becomes the number of kept layers below it.
    """
    old_n = config.num_hidden_layers
    new = copy.deepcopy(config)
    new.num_hidden_layers = len(keep)
    for name, value in config.to_dict().items():
        if "layer" in name and isinstance(value, list) and len(value) == old_n:
            setattr(new, name, [value[i] for i in keep])
    if isinstance(getattr(config, "max_window_layers", None), int):
        new.max_window_layers = sum(1 for i in keep if i < config.max_window_layers)
    return new


def prune_layers(model, keep: list[int]):
    """A new model with only the decoder layers ``keep`` (increasing indices), renumbered 0..k−1.

    The input model is left unchanged (the copy owns its weights). Embeddings, final norm and output layer
    are copied as they are.
    """
    num_layers = model.config.num_hidden_layers
    if not keep or keep != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= num_layers:
        raise ValueError(f"prune_layers: expected increasing unique indices in [0, {num_layers}), got {keep}")
    layers = _layers(model)
    # Deep-copy everything but the dropped layers (they are shared into the copy's memo, then discarded).
    memo = {id(layer): layer for i, layer in enumerate(layers) if i not in keep}
    pruned = copy.deepcopy(model, memo)
    pruned_body = decoder_body(pruned)
    pruned_body.layers = torch.nn.ModuleList(pruned_body.layers[i] for i in keep)
    for new_idx, layer in enumerate(pruned_body.layers):
        for module in layer.modules():  # the layer itself, self_attn, ...: the KV cache is indexed by this
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    copied_config = pruned.config
    new_config = prune_config(copied_config, keep)
    for module in pruned.modules():  # the decoder body, attention, rotary embedding... share the config
        if getattr(module, "config", None) is copied_config:
            module.config = new_config
    return pruned
