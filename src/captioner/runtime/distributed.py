"""Process-group helpers for runs launched by ``torchrun`` (one process per GPU, or per CPU slot).

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; ``setup`` reads them, starts the
process group (NCCL on CUDA, gloo on CPU) and picks the rank's device. Without those variables
(a plain ``captioner train``) everything here is a no-op for a world of one process, so the
single-process path runs exactly as before. A process group started by the caller (tests,
notebooks) is reused and left running.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from captioner.errors import CaptionerError

T = TypeVar("T")

# Rank 0 alone decodes the validation split for metrics while the others wait in a collective,
# so the default 10-minute NCCL timeout is too short for large validation sets.
TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the run: rank ``rank`` of ``world_size``."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    owns_group: bool = False  # True when ``setup`` started the group (``teardown`` ends it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1") or "1") > 1


def current() -> DistContext:
    """The context of an already started process group (or of a single process)."""
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return DistContext(world, rank, local, owns_group=False)
    return DistContext()


def is_main_process() -> bool:
    """False only on ranks other than 0 of a torchrun launch (whether or not set up yet)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0") or "0") == 0


def setup(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the torchrun process group if launched by torchrun; return the context and the
    device this rank must use (``cuda:LOCAL_RANK`` when ``device`` is CUDA)."""
    if dist.is_available() and dist.is_initialized():
        ctx = current()
    elif launched_by_torchrun():
        if not dist.is_available():
            raise CaptionerError("launched by torchrun, but this torch has no torch.distributed")
        missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR") if k not in os.environ]
        if missing:
            raise CaptionerError(
                f"WORLD_SIZE is set but {', '.join(missing)} are not: launch with torchrun "
                "(e.g. torchrun --nproc_per_node 2 -m captioner.cli train ...)"
            )
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl" and not dist.is_nccl_available():
            raise CaptionerError("multi-GPU training needs NCCL, which this torch lacks")
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
        ctx = DistContext(
            dist.get_world_size(),
            dist.get_rank(),
            int(os.environ["LOCAL_RANK"]),
            owns_group=True,
        )
    else:
        return DistContext(), device
    if device.type == "cuda":
        if ctx.local_rank >= torch.cuda.device_count():
            raise CaptionerError(
                f"rank {ctx.rank} wants GPU {ctx.local_rank}, but only "
                f"{torch.cuda.device_count()} are visible; use --nproc_per_node <= GPUs"
            )
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    return ctx, device


_group_ended = False


def teardown(ctx: DistContext) -> None:
    global _group_ended
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()
        _group_ended = True


def group_ended() -> bool:
    """True once ``teardown`` ended a process group this process started.

    Such a process should end without the interpreter's finalization (``os._exit`` once its
    output is flushed): about 1 torchrun launch in 20 on CPU/gloo, a rank aborted there with
    "terminate called without an active exception" (SIGABRT, no Python frame) after its work
    was done and written, and torchrun then reported the whole run as failed.
    """
    return _group_ended


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_reduce_sums(ctx: DistContext, values: Sequence[float], device: torch.device) -> list[float]:
    """Sum each value over the ranks (float64, so token-loss sums stay exact enough)."""
    if not ctx.enabled:
        return [float(v) for v in values]
    tensor = torch.tensor(list(values), dtype=torch.float64, device=_comm_device(device))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def broadcast_object(ctx: DistContext, value: T) -> T:
    """Rank 0's ``value`` on every rank (pickled by torch.distributed; our own data only)."""
    if not ctx.enabled:
        return value
    box: list[Any] = [value if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_model(model: torch.nn.Module, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` (broadcasts rank 0's weights to every rank)."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def _comm_device(device: torch.device) -> torch.device:
    # NCCL only reduces CUDA tensors; gloo reduces CPU tensors.
    return device if dist.get_backend() == "nccl" else torch.device("cpu")
