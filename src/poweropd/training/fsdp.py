"""FSDP2 (``--fsdp``): the student's weights, gradients and AdamW state sharded over the processes, the frozen
teacher's weights too.

Layout. Every decoder layer (the model's ``_no_split_modules`` class) is one FSDP unit, and so are the input
embeddings when they are not tied to the output layer (gathered for the embedding lookup only, not while the
output layer runs); everything else — final norm, output layer, tied embeddings — is the root unit, held by ``ShardedModel``, a module whose
forward is whatever function the caller passes. The update calls the decoder body and the output layer
separately (the fused ops read the output layer's weight, logprobs.py and fused.py), so the function that
FSDP's root runs must be the micro-batch loss: FSDP all-gathers the root unit before it, the fused ops see
the whole output weight, and the backward pass reduce-scatters its gradient. This is why we call
``torch.distributed.fsdp.fully_shard`` directly rather than accelerate's FSDP plugin, which shards the
model's own ``forward``.

Gradients. Each process's loss is already Σ_its tokens / N_whole batch (training/loop.py), so the reduce-scatter must
sum, not average: divide factor 1, and sum-only collectives (gloo, our CPU test backend, has no PREMUL_SUM).

Generation. The sampler runs on a plain copy of the student, refreshed from the shards before each step's
sampling (one all-gather of the weights per step), as verl and slime feed their rollout engines; generating
through the sharded model would all-gather every layer at every decode step.

Checkpoints. Full state dicts gathered to the main process (``torch.distributed.checkpoint.state_dict``):
the student is the same Hugging Face folder as without FSDP; the optimizer state is keyed by parameter name
(``optimizer.pt``) and loaded back into whatever shards the resumed run has (tested with the same number of
processes).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..collective import AcceleratorCollective

_FULL = dict(full_state_dict=True, cpu_offload=True)


class ShardedModel(torch.nn.Module):
    """The FSDP root: ``sharded(fn, *args)`` runs ``fn(model, *args)`` with the root unit all-gathered."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.module = model

    def forward(self, fn: Callable, *args: Any) -> Any:
        return fn(self.module, *args)

    def run_frozen(self, fn: Callable, *args: Any) -> Any:
        """``self(fn, *args)`` for a frozen model, the root unit freed again after it: FSDP keeps the root
        gathered after its forward until a backward pass that a frozen model never gets."""
        out = self(fn, *args)
        self.reshard()
        return out

    @contextlib.contextmanager
    def gathered(self):
        """The root unit (embeddings, output layer) whole inside the block: the fused KL reads the teacher's
        output weight outside the teacher's forward."""
        self.unshard()
        try:
            yield self.module
        finally:
            self.reshard()


class ShardedCollective(AcceleratorCollective):
    """As ``AcceleratorCollective``, but gradients are already summed by FSDP's reduce-scatter."""

    def sum_gradients(self, params) -> None:
        pass


def units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The FSDP units below the root: the repeated blocks that transformers never splits across devices
    (``_no_split_modules``), and the input embeddings unless the output layer shares their weight."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(model).__name__}: no decoder layers ({sorted(names)}) to shard")
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is embeddings.weight
    return layers if tied else [embeddings, *layers]


def shard(model: torch.nn.Module, mesh) -> ShardedModel:
    """``model``'s parameters sharded in place over ``mesh`` (its decoder layers one unit each)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    for unit in units(model):
        fully_shard(unit, mesh=mesh)
    root = fully_shard(ShardedModel(model), mesh=mesh)
    for unit in root.modules():
        if isinstance(unit, FSDPModule):
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)
    return root


def device_mesh(device: torch.device, world_size: int):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (world_size,))


def full_tensor(param: Tensor) -> Tensor:
    """A parameter's whole value (all-gathered when it is a shard: every process must call it in turn)."""
    return param.full_tensor() if hasattr(param, "full_tensor") else param


class RolloutCopy:
    """An unsharded copy of the student for generation and evaluation, refreshed from the shards by ``sync``."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype | None = None):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        if dtype is not None:
            self.model.to(dtype)

    @torch.no_grad()
    def sync(self, sharded: ShardedModel) -> torch.nn.Module:
        params = dict(self.model.named_parameters())
        for name, param in sharded.module.named_parameters():
            params[name].copy_(full_tensor(param.detach()))
        return self.model.eval()  # an evaluation leaves it in train mode


def model_state(sharded: ShardedModel) -> dict[str, Tensor]:
    """The whole student's state dict on the main process (empty elsewhere); a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(sharded.module, options=StateDictOptions(**_FULL))


def optimizer_state(sharded: ShardedModel, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The whole AdamW state keyed by parameter name, on the main process (empty elsewhere); a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(sharded, optimizer, options=StateDictOptions(**_FULL))


def load_optimizer_state(sharded: ShardedModel) -> Callable[[torch.optim.Optimizer, dict], None]:
    """``(optimizer, full state) -> None``: every process reads the whole state and keeps its shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    def load(optimizer: torch.optim.Optimizer, state: dict) -> None:
        set_optimizer_state_dict(sharded, optimizer, state, options=StateDictOptions(full_state_dict=True))

    return load
