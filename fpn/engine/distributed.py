"""Multi-process (DDP) plumbing, driven by the environment ``torchrun`` sets (RANK, WORLD_SIZE, LOCAL_RANK).

One process per GPU (backend nccl) or per CPU worker (backend gloo). Without those variables, or with
WORLD_SIZE=1, everything here is a no-op and the run is a plain single-process one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fpn.engine.device import resolve_device
from fpn.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def setup(device_name: str) -> tuple[DistInfo, torch.device]:
    """Resolve the device and, under torchrun, join the process group (each rank on its own GPU)."""
    world_size = env_world_size()
    device = resolve_device(device_name)
    if world_size <= 1:
        return DistInfo(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK {local_rank}: only {torch.cuda.device_count()} CUDA device(s) visible; "
                "start at most that many processes per node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank), device


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_(tensor: torch.Tensor, info: DistInfo, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (sum or max) across ranks; a no-op in a single process."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor


def all_gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Vote:
    """All ranks agree on a few small non-negative integers once per iteration (their maximum over ranks:
    "some rank was asked to stop", "rank 0's clock says a checkpoint is due") without the step waiting for it.

    ``vote(values)`` at an iteration boundary starts the all-reduce of this boundary's values in the
    background and returns the result of the previous boundary's, so every rank acts on the same values at
    the same iteration, one iteration after they were cast. The reduction runs on a separate gloo group
    over CPU tensors: no device synchronisation (an NCCL reduction read on the host would be one), and by
    the next boundary it has long finished (the gradient all-reduce keeps the ranks within an iteration of
    each other). A blocking all-reduce every iteration would cost a round trip per step instead. In a
    single process ``vote`` returns its values at once.
    """

    def __init__(self, info: DistInfo, size: int):
        self.size = size
        self._group = dist.new_group(backend="gloo") if info.enabled else None
        self._pending: tuple | None = None

    def __call__(self, values: list[int]) -> list[int]:
        if self._group is None:
            return list(values)
        agreed = self.finish()
        tensor = torch.tensor(values, dtype=torch.int64)
        work = dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        self._pending = (work, tensor)
        return agreed

    def finish(self) -> list[int]:
        """Wait for the reduction in flight (every rank at the same point) and return it (zeros if none)."""
        if self._pending is None:
            return [0] * self.size
        work, tensor = self._pending
        self._pending = None
        work.wait()
        return tensor.tolist()
