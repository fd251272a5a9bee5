"""Running under ``torchrun``: the launch, the process group and device, rank-0-only helpers, one writer per run.

``torchrun --nproc_per_node N`` (and ``--nnodes`` across machines) sets RANK, LOCAL_RANK and WORLD_SIZE; a plain
``python`` run is a world of one. GPUs use NCCL, CPUs gloo. Only the main process (rank 0) writes files, so only
rank 0 takes the lock on ``<output_dir>.lock`` (``files.hold_output_lock``) for the run; whether it got it is
broadcast, so when another run holds the directory every process raises the same ``UserError`` instead of the
other ranks waiting forever at the next barrier.

    context = init_distributed(no_cuda=False)
    try:
        with hold_run_lock(context, output_dir, "finetune"): ...
    finally:
        cleanup(context)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from bert_domain_ft.errors import UserError
from bert_domain_ft.files import hold_output_lock

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job and which device it trains on."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    process_group: bool = False  # joined torch.distributed's group (every torchrun launch, one process included)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """Training under a process group: DDP-wrapped, gradients all-reduced (NCCL on GPUs, gloo on CPUs)."""
        return self.process_group or self.world_size > 1


def launch_ranks(environment: Mapping[str, str], local_rank_flag: int = -1) -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment (or the old ``--local_rank`` flag)."""
    world_size = int(environment.get("WORLD_SIZE", "1"))
    local_rank = int(environment.get("LOCAL_RANK", local_rank_flag if local_rank_flag >= 0 else 0))
    rank = int(environment.get("RANK", local_rank if world_size > 1 else 0))
    return rank, local_rank, world_size


def choose_device(no_cuda: bool, local_rank: int) -> torch.device:
    if not no_cuda and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


_LAUNCHER_VARIABLES = ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")  # set by torchrun for every process


def init_distributed(no_cuda: bool = False, local_rank_flag: int = -1) -> DistributedContext:
    """Join the process group when launched by torchrun (one process too: the run then goes through DDP and
    NCCL exactly as on several GPUs) or with several processes; pick this process's device."""
    rank, local_rank, world_size = launch_ranks(os.environ, local_rank_flag)
    device = choose_device(no_cuda, local_rank)
    launched = all(name in os.environ for name in _LAUNCHER_VARIABLES)
    if (world_size > 1 or launched) and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        logger.info("process %d of %d on %s (%s)", rank, world_size, device, backend)
    joined = dist.is_available() and dist.is_initialized()
    return DistributedContext(rank, local_rank, world_size, device, process_group=joined)


def cleanup(context: DistributedContext) -> None:
    if context.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    """Wait until every process gets here (e.g. while rank 0 writes)."""
    if context.is_distributed:
        dist.barrier()


def gather_objects(context: DistributedContext, value: Any) -> list[Any]:
    """Every process's ``value``, indexed by rank (picklable values; small ones only)."""
    if not context.is_distributed:
        return [value]
    values: list[Any] = [None] * context.world_size
    dist.all_gather_object(values, value)
    return values


def broadcast_object(context: DistributedContext, value: Any) -> Any:
    """Rank 0's ``value`` on every process."""
    if not context.is_distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def sum_across_processes(context: DistributedContext, values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over processes of a float64 vector (metric counters)."""
    if context.is_distributed:
        values = values.to(context.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values.cpu()


@contextmanager
def hold_run_lock(context: DistributedContext, output_dir: Path, command: str) -> Iterator[None]:
    """Hold the output lock on rank 0 for the ``with`` body; every rank raises rank 0's refusal, if any. The lock is
    taken on the resolved directory (``files.lock_path``): a run through a symlink to a running run's directory is
    refused like one on the directory itself."""
    with ExitStack() as stack:
        refusal = None
        if context.is_main:
            try:
                stack.enter_context(hold_output_lock(Path(output_dir), command))
            except UserError as error:
                refusal = str(error)
        refusal = broadcast_object(context, refusal)
        if refusal is not None:
            raise UserError(refusal)
        yield
