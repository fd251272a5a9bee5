"""What the training loop reads: per-epoch sources of batches, and the order and sharding of each epoch.

The loop only needs, for training epoch ``e``, how many instances there are and a function turning an array of
instance indices into a batch (``EpochSource``). ``PregeneratedSource`` serves memory-mapped pregenerated epochs;
``DatasetSource`` adapts any indexable of instances plus a collate function (the on-the-fly variant).

The order of epoch ``e`` is a pure function of ``(seed, e)`` (``epoch_permutation``) and ``plan_epoch`` cuts it
into this process's micro-batches, so resuming at micro-batch ``k`` is ``plan[k:]``: nothing is replayed.

    plan = plan_epoch(num_instances=1000, micro_batch_size=16, seed=42, epoch=0, rank=0, world_size=2)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..batches import RowMasker, collate_rows
from ..dynamic_masking import DynamicMasking
from ..epoch_format import EpochArrays, open_epoch
from ..errors import UserError
from .corpus_mixing import CorpusMixing

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
BatchFetcher = Callable[[np.ndarray], Batch]


class EpochSource(Protocol):
    """Training epoch ``e`` (0-based) → its size and a fetcher from instance indices to a batch.

    A source may also define ``epoch_order(epoch) -> np.ndarray | None`` to choose the order in which the epoch is
    cut into global batches instead of the usual shuffle (see ``source_order``; the simple stage groups lengths).
    """

    def epoch_size(self, epoch: int) -> int:
        """Number of instances in training epoch ``epoch``."""
        ...

    def open_epoch(self, epoch: int) -> BatchFetcher:
        """A function mapping an int array of instance indices to a batch dict (CPU tensors)."""
        ...


class PregeneratedSource:
    """Epochs of a pregenerated directory; training epoch ``e`` reads data epoch ``e mod generated``.

    Data pregenerated with dynamic masking is masked per batch by ``masking`` (deterministically from the seed,
    the training epoch and the batch's instances, so resume and prefetching see the same masks). Data from
    several corpora is drawn with the manifest's sampling probabilities by ``mixing`` (``epoch_order``).
    """

    def __init__(
        self,
        directory: Path,
        manifest: dict[str, Any],
        training_epochs: int,
        verify_checksum: bool = False,
        masking: DynamicMasking | None = None,
        mixing: CorpusMixing | None = None,
    ):
        self.directory = Path(directory)
        self.manifest = manifest
        self.verify_checksum = verify_checksum
        self.masking = masking
        self.mixing = mixing
        self.generated = len(manifest["epochs"])
        if self.generated == 0:
            raise UserError(f"{self.directory}: the manifest lists no epochs; pregenerate the data again")
        if manifest.get("masking") == "dynamic" and masking is None:
            raise ValueError("dynamically masked data needs a DynamicMasking")
        if self.generated < training_epochs:
            logger.warning(
                "%s holds %d epoch(s) of data but %d training epochs were asked for: the data is reused "
                "(reshuffled) every %d epoch(s); %s",
                self.directory,
                self.generated,
                training_epochs,
                self.generated,
                "it gets fresh masks each time (dynamic masking)"
                if masking is not None
                else "pregenerate more epochs to avoid repeating masks",
            )

    def data_epoch(self, epoch: int) -> int:
        return epoch % self.generated

    def epoch_size(self, epoch: int) -> int:
        return int(self.manifest["epochs"][self.data_epoch(epoch)]["num_instances"])

    def open_epoch(self, epoch: int) -> BatchFetcher:
        arrays = open_epoch(self.directory, self.manifest, self.data_epoch(epoch), self.verify_checksum)
        if arrays.num_instances != self.epoch_size(epoch):
            raise UserError(
                f"{arrays.directory}: holds {arrays.num_instances} instances but the manifest says "
                f"{self.epoch_size(epoch)}; pregenerate the data again"
            )
        masker = self.masking.for_epoch(epoch) if self.masking is not None else None  # the *training* epoch
        return lambda indices: collate_pregenerated(arrays, indices, masker)

    def epoch_order(self, epoch: int) -> np.ndarray | None:
        """With several corpora and a ``mixing``: the corpus-sampled order of training epoch ``epoch``; else None."""
        if self.mixing is None or len(self.manifest.get("corpora") or []) < 2:
            return None
        arrays = open_epoch(self.directory, self.manifest, self.data_epoch(epoch))
        return self.mixing.order(arrays.corpus_ids, self.manifest, epoch)


def collate_pregenerated(arrays: EpochArrays, indices: np.ndarray, masker: RowMasker | None = None) -> Batch:
    """The batch of rows ``indices`` of an epoch (``batches.collate_rows``; ``masker`` masks unmasked data)."""
    return collate_rows(arrays, indices, masker)


class DatasetSource:
    """Any indexable of instances per epoch plus a collate function (list of instances → batch dict)."""

    def __init__(self, dataset_for_epoch: Callable[[int], Sequence[Any]], collate: Callable[[list[Any]], Batch]):
        self.dataset_for_epoch = dataset_for_epoch
        self.collate = collate

    def epoch_size(self, epoch: int) -> int:
        return len(self.dataset_for_epoch(epoch))

    def open_epoch(self, epoch: int) -> BatchFetcher:
        dataset = self.dataset_for_epoch(epoch)
        return lambda indices: self.collate([dataset[int(index)] for index in indices])


def epoch_permutation(seed: int, epoch: int, num_instances: int) -> np.ndarray:
    """The shuffled order of training epoch ``epoch``: the same on every process and on every resume."""
    return np.random.default_rng([seed, epoch]).permutation(num_instances)


def source_order(source: EpochSource, epoch: int) -> np.ndarray | None:
    """The instance order a source chooses for epoch ``epoch`` (a permutation, e.g. batches of similar length, or
    a sample drawn by corpus probabilities; deterministic in the seed), when it has an ``epoch_order(epoch)``
    method and it returns one; else None."""
    choose = getattr(source, "epoch_order", None)
    return None if choose is None else choose(epoch)


def plan_epoch(
    num_instances: int,
    micro_batch_size: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    order: np.ndarray | None = None,
) -> list[np.ndarray]:
    """This process's micro-batches (arrays of instance indices) for training epoch ``epoch``.

    The shuffled order (or ``order``, the source's own, see ``source_order``) is cut into global batches of
    ``micro_batch_size × world_size``; process ``rank`` takes every ``world_size``-th instance of each. Together
    the processes see every instance exactly once, in the same number of micro-batches: a last global batch too
    small to give every process one instance is merged into the one before it.
    """
    if num_instances < world_size:
        raise UserError(
            f"an epoch has {num_instances} instances, fewer than the {world_size} processes; "
            "pregenerate more data or use fewer processes"
        )
    if order is None:
        order = epoch_permutation(seed, epoch, num_instances)
    elif len(order) != num_instances:
        raise ValueError(f"the source's order has {len(order)} instances, its epoch {num_instances}")
    global_batch = micro_batch_size * world_size
    starts = list(range(0, num_instances, global_batch))
    if len(starts) > 1 and num_instances - starts[-1] < world_size:
        starts.pop()
    ends = starts[1:] + [num_instances]
    return [order[start:end][rank::world_size] for start, end in zip(starts, ends)]


def micro_batches_per_epoch(num_instances: int, micro_batch_size: int, world_size: int = 1) -> int:
    """``len(plan_epoch(...))`` without building the plan."""
    batches = -(-num_instances // (micro_batch_size * world_size))
    if batches > 1 and num_instances - (batches - 1) * micro_batch_size * world_size < world_size:
        batches -= 1
    return batches


def optimizer_steps_per_epoch(num_micro_batches: int, accumulation_steps: int) -> int:
    """Optimizer steps of an epoch: one per ``accumulation_steps`` micro-batches, plus one for a partial rest."""
    return -(-num_micro_batches // accumulation_steps)
