"""Placement: where the student's weights live and how the sampler sees them, behind one small interface.

- ``Replicated``: every process holds the whole student; the sampler reads it directly; gradients are
  all-reduced by the update (distributed.AcceleratorCollective).
- ``Sharded`` (``--fsdp``): the student's weights, gradients and AdamW state sharded with FSDP2, the teacher
  too unless it has a device of its own; the sampler reads an unsharded copy refreshed once per step
  (fsdp.py says why).
An engine may hold its own copy besides (the continuous engine's bf16 copy, the vLLM engine's weights):
``sync`` brings it up to date through ``Sampler.sync_weights`` after the placement's own view.

The loop calls only: ``sync`` (before sampling), ``forward`` (the update's micro-batch loss), ``teacher_head``
(while a full-vocabulary objective reads the teacher's output layer), ``checkpoint_state`` and
``final_weights`` (whole state dicts: {} / None when the student object has them), ``held`` (memory).
A new strategy is a new class here and one line in ``make_placement``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from ..collective import AcceleratorCollective, Collective
from ..errors import UserError
from ..models.lora import base_model
from . import fsdp


class Replicated:
    """The whole student on every process (or the one process)."""

    collective = AcceleratorCollective
    """The processes' collective for this placement: gradients all-reduced by the update."""

    def __init__(self, student: torch.nn.Module, comm: Collective):
        self.student, self.comm = student, comm
        self.sampler_dtype: torch.dtype | None = None
        """The dtype an engine's own copy takes (None: the student's), set by ``make_placement``."""

    @classmethod
    def check(cls, comm: Collective) -> None:
        """Raise UserError when this placement cannot run on these processes."""

    def place_teachers(self, teachers: dict) -> None:
        """Place the teachers (teacher.Teacher by name); a placement that moves one replaces its scorer."""

    def sampler_model(self) -> torch.nn.Module:
        """The model the sampler and the evaluator read, up to date with the student's weights."""
        return base_model(self.student)

    def sync(self, sampler) -> torch.nn.Module:
        """After an optimizer step: the sampler's view, then an engine's own copy, take the new weights."""
        model = self.sampler_model()
        sampler.sync_weights()
        return model

    def forward(self, fn: Callable, *args: Any) -> Any:
        """``fn(student, *args)``, the way this placement runs the student's forward."""
        return fn(self.student, *args)

    def teacher_head(self) -> contextlib.AbstractContextManager:
        """A block in which the teacher's output layer is whole (read outside the teacher's own forward)."""
        return contextlib.nullcontext()

    def load_optimizer_state(self) -> Callable | None:
        """How a checkpoint's optimizer state is loaded (None: ``optimizer.load_state_dict``)."""
        return None

    def checkpoint_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Whole state dicts for a checkpoint ({}: the checkpoint reads the student and optimizer themselves)."""
        return {}

    def final_weights(self) -> dict | None:
        """The whole student's state dict for the final save (None: read from the student)."""
        return None

    def held(self) -> list[torch.nn.Module]:
        """The modules whose weights this process holds between steps (memory/held_mb)."""
        return [self.student]


class Sharded(Replicated):
    """FSDP2: the student sharded over the processes, sampled through an unsharded copy (fsdp.py)."""

    collective = fsdp.ShardedCollective

    def __init__(self, student: torch.nn.Module, comm: Collective, *, copy_dtype: torch.dtype | None,
                 shard_teacher: bool):  # fmt: skip
        super().__init__(student, comm)
        self.mesh = fsdp.device_mesh(next(student.parameters()).device, comm.world_size)
        self.rollout_copy = fsdp.RolloutCopy(student, copy_dtype)  # before sharding: a whole copy
        self.sharded = fsdp.shard(student, self.mesh)
        self.shard_teacher = shard_teacher
        self.sharded_teacher: fsdp.ShardedModel | None = None

    @classmethod
    def check(cls, comm: Collective) -> None:
        if comm.world_size < 2:
            raise UserError("--fsdp: expected 2 or more processes (accelerate launch --num_processes N or torchrun); "
                            "one process holds the whole model without it")  # fmt: skip

    def place_teachers(self, teachers: dict) -> None:
        from ..teachers.scorers import HFScorer

        only = teachers.get("")
        if len(teachers) > 1 or only is None or only.model is None:
            raise UserError("--fsdp: expected one in-process teacher (a folder or hub id); served or several teachers "
                            "are not sharded")  # fmt: skip
        if not self.shard_teacher:  # on a device of its own
            return
        self.sharded_teacher = fsdp.shard(only.model.eval().requires_grad_(False), self.mesh)
        only.scorer = HFScorer(only.model, temperature=only.scorer.temperature, chunk_size=only.scorer.chunk_size,
                               forward=self.sharded_teacher.run_frozen)  # fmt: skip

    def sampler_model(self) -> torch.nn.Module:
        return self.rollout_copy.sync(self.sharded)

    def forward(self, fn: Callable, *args: Any) -> Any:
        return self.sharded(fn, *args)

    def teacher_head(self) -> contextlib.AbstractContextManager:
        return self.sharded_teacher.gathered() if self.sharded_teacher else contextlib.nullcontext()

    def load_optimizer_state(self) -> Callable | None:
        return fsdp.load_optimizer_state(self.sharded)

    def checkpoint_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return dict(weights=fsdp.model_state(self.sharded),
                    optimizer_state=fsdp.optimizer_state(self.sharded, optimizer))  # fmt: skip

    def final_weights(self) -> dict | None:
        return fsdp.model_state(self.sharded)

    def held(self) -> list[torch.nn.Module]:
        return [self.student, self.rollout_copy.model]


PLACEMENTS = {"replicated": Replicated, "fsdp": Sharded}
"""Placements by name (``--fsdp`` picks ``fsdp``)."""


def placement_class(sharded: bool) -> type[Replicated]:
    return PLACEMENTS["fsdp" if sharded else "replicated"]


def make_placement(sharded: bool, student: torch.nn.Module, comm: Collective, *, bf16: bool,
                   teacher_has_own_device: bool) -> Replicated:  # fmt: skip
    """The placement of ``student``; with bf16 an engine's own copy (continuous, vLLM), or FSDP's rollout copy,
    is held in bf16 (autocast does not reach an engine's thread)."""
    if sharded:
        placement = Sharded(student, comm, copy_dtype=torch.bfloat16 if bf16 else None,
                            shard_teacher=not teacher_has_own_device)  # fmt: skip
        return placement  # the rollout copy is in bf16 already: the engine samples it as it is
    placement = Replicated(student, comm)
    placement.sampler_dtype = torch.bfloat16 if bf16 else None
    return placement
