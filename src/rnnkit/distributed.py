"""Process-group setup for ``torchrun --nproc_per_node=N`` (DistributedDataParallel) and single-process runs.

``torchrun`` sets WORLD_SIZE, RANK and LOCAL_RANK; with WORLD_SIZE > 1 ``init_distributed`` starts the process
group (gloo on CPU, nccl on CUDA). Without those variables everything here is a no-op on one process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rnnkit.errors import ConfigError

__all__ = ["DistInfo", "all_reduce", "init_distributed", "is_main_process", "resolve_device"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created_group: bool = False  # we started the process group, so we end it

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and reports progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def is_main_process() -> bool:
    """Whether this process is global rank 0 (torchrun's RANK; a process without it is): the only one that prints."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is a ConfigError."""
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device must be cpu or auto on this machine (no CUDA device found), got 'cuda'")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(device_choice: str) -> tuple[DistInfo, torch.device]:
    """Read torchrun's environment, start the process group if needed, and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_choice, local_rank)
    if world_size <= 1:
        return DistInfo(), device
    created = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        created = True
        log.info("process group started: backend %s, rank %d of %d", backend, rank, world_size)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, created), device


def all_reduce(values: list[float], op: str, info: DistInfo, device: torch.device) -> list[float]:
    """Combine a few numbers across ranks ("sum" or "max"); the identity on one process."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.tolist()


def shutdown(info: DistInfo, *, clean: bool = True) -> None:
    """End the process group if ``init_distributed`` started it.

    After a clean run the ranks first meet at a barrier: rank 0 is still writing its last checkpoint and plot
    when the others finish, and a rank that tears down gloo and exits while rank 0 is busy was seen to abort
    ("terminate called without an active exception", about 1 run in 20). After an error there is no barrier,
    since the other ranks may be gone and it would hang.
    """
    if info.created_group and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
