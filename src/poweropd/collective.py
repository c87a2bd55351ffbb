"""The few cross-process operations the update needs, behind the ``Collective`` interface.

``SingleProcess`` is the identity; ``AcceleratorCollective`` goes through ``accelerate`` (gloo on CPU, NCCL on
GPU). Gradients are all-reduced explicitly rather than by wrapping the student in DDP, because the update calls
the decoder body and the output layer separately (training/loop.py lists this among its departures).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor


class Collective(Protocol):
    """The few cross-process operations the update needs (identity on one process)."""

    world_size: int
    rank: int

    def sum(self, value: Tensor) -> Tensor: ...

    def gather_rows(self, tensor_BT: Tensor) -> tuple[Tensor, slice]: ...

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None: ...

    def gather_objects(self, obj) -> list: ...


class SingleProcess:
    world_size, rank = 1, 0

    def sum(self, value: Tensor) -> Tensor:
        return value

    def gather_rows(self, tensor_BT: Tensor) -> tuple[Tensor, slice]:
        return tensor_BT, slice(0, tensor_BT.shape[0])

    def sum_gradients(self, params) -> None:
        pass

    def gather_objects(self, obj) -> list:
        return [obj]


class AcceleratorCollective:
    """Cross-process sums and gathers through ``accelerate`` (gloo on CPU, NCCL on GPU)."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.world_size, self.rank = accelerator.num_processes, accelerator.process_index

    def sum(self, value: Tensor) -> Tensor:
        return self.accelerator.reduce(value.clone(), reduction="sum") if self.world_size > 1 else value

    def gather_rows(self, tensor_BT: Tensor) -> tuple[Tensor, slice]:
        """Rows of every process (padded to the longest T), and where this process's rows are."""
        if self.world_size == 1:
            return tensor_BT, slice(0, tensor_BT.shape[0])
        padded = self.accelerator.pad_across_processes(tensor_BT, dim=1)
        rows = self.accelerator.gather(torch.tensor([tensor_BT.shape[0]], device=tensor_BT.device))
        start = int(rows[: self.rank].sum())
        return self.accelerator.gather(padded), slice(start, start + tensor_BT.shape[0])

    def gather_objects(self, obj) -> list:
        """Every process's ``obj`` (picklable), in rank order, on every process."""
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def sum_gradients(self, params) -> None:
        if self.world_size == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
