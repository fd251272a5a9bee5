"""What the training loop reads: per-epoch sources of batches, the order and sharding of each epoch, prefetching.

The loop only needs, for training epoch ``e``, how many instances there are and a function turning an array of
instance indices into a batch (``EpochSource``). ``PregeneratedSource`` serves memory-mapped pregenerated epochs,
gathered by ``collate_rows`` into the tensors of ``masking.batch_arrays`` (rows trimmed to the batch's longest,
masked now when the data was pregenerated for dynamic masking); ``DatasetSource`` adapts any indexable of
instances plus a collate function.

The order of epoch ``e`` is a pure function of ``(seed, e)``: the usual shuffle (``epoch_permutation``), or with
several corpora a draw by the manifest's sampling probabilities (``CorpusMixing``, optionally one corpus per
optimizer step). ``plan_epoch`` cuts it into this process's micro-batches, so resuming at micro-batch ``k`` is
``plan[k:]``: nothing is replayed.

``BatchPrefetcher`` builds the next batches in a background thread while the model computes (collating from
memmaps is numpy work that releases the GIL; on CUDA the thread also pins the memory so the host → device copy is
asynchronous) and times how long the loop waits.

    plan = plan_epoch(num_instances=1000, micro_batch_size=16, seed=42, epoch=0, rank=0, world_size=2)
    with BatchPrefetcher(source.open_epoch(0), plan, torch.device("cpu")) as batches:
        for batch in batches: ...              # batches.wait_seconds: total time spent blocked on data
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np
import torch

from bert_domain_ft.data.epoch_format import MANIFEST_NAME, EpochArrays, open_epoch
from bert_domain_ft.data.masking import DynamicMasking, MaskedRows, RowMasker, batch_arrays, batch_width
from bert_domain_ft.data.mixing import check_probabilities, mixed_order
from bert_domain_ft.errors import UserError

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
BatchFetcher = Callable[[np.ndarray], Batch]


def collate_rows(epoch: EpochArrays, indices: np.ndarray, masker: RowMasker | None = None) -> Batch:
    """Gather rows ``indices`` of ``epoch`` into a batch dict of tensors (layout: ``masking.batch_arrays``).

    Rows keep their pregenerated masks; an epoch without masks (``--dynamic_masking``) is masked now by
    ``masker(rows, lengths, indices)`` when one is given (``DynamicMasking.for_epoch``). Instances stored without an
    NSP label (``NO_NSP_LABEL``) get ``IGNORE_INDEX``, which the NSP loss skips.
    """
    order = np.sort(np.asarray(indices))  # sorted reads are sequential on the memmap
    restore = np.argsort(np.argsort(indices)) if not np.array_equal(order, indices) else None
    lengths = np.asarray(epoch.lengths[order], dtype=np.int64)
    width = batch_width(int(lengths.max()), epoch.input_ids.shape[1])
    rows = np.asarray(epoch.input_ids[order, :width])
    masked = None
    if epoch.masked_positions is not None:
        counts = np.asarray(epoch.num_masked[order], dtype=np.int64)
        slots = max(1, int(counts.max()))
        masked = MaskedRows(rows, epoch.masked_positions[order, :slots], epoch.masked_labels[order, :slots], counts)
    elif masker is not None:
        masked = masker(rows, lengths, order)
    is_random_next = None if epoch.is_random_next is None else epoch.is_random_next[order]
    batch = batch_arrays(rows, lengths, epoch.segment_a_lengths[order], masked, is_random_next)
    if restore is not None:
        batch = {name: value[restore] for name, value in batch.items()}
    return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in batch.items()}


MIXING_STREAM = 0x4D4958  # "MIX": keeps this generator apart from the shuffle and masking streams of the seed


def corpus_probabilities(manifest: dict[str, Any], where: str = MANIFEST_NAME) -> np.ndarray | None:
    """Sampling probability of each corpus (manifest order), or None for data with a single corpus. Values numpy
    cannot draw with (NaN, infinite, negative, all 0: an edited manifest, or one an older version wrote for
    ``--sampling_exponent nan``) are a one-line ``UserError`` naming ``where``."""
    corpora = manifest.get("corpora") or []
    if len(corpora) < 2:
        return None
    try:
        probabilities = check_probabilities(np.array([float(corpus["sampling_probability"]) for corpus in corpora]))
    except (TypeError, ValueError) as error:
        raise UserError(f"{where}: the corpora's {error}; pregenerate the data again") from None
    return probabilities / probabilities.sum()  # exact sum 1 for numpy's choice, whatever the JSON rounding


@dataclass(frozen=True)
class CorpusMixing:
    """How the training sampler mixes several corpora."""

    seed: int
    batch_size: int  # instances per optimizer step over all processes: the unit of one_corpus_per_batch
    one_corpus_per_batch: bool = False

    def order(self, corpus_ids: np.ndarray, manifest: dict[str, Any], epoch: int) -> np.ndarray | None:
        """Instance indices of training epoch ``epoch`` (may repeat), or None for single-corpus data."""
        probabilities = corpus_probabilities(manifest)
        if probabilities is None or corpus_ids is None:
            return None
        rng = np.random.default_rng([self.seed, epoch, MIXING_STREAM])
        corpus_ids = np.asarray(corpus_ids)
        empty = [corpus["name"] for index, corpus in enumerate(manifest["corpora"]) if not np.any(corpus_ids == index)]
        if empty:
            raise UserError(
                f"corpus {empty[0]} has no instances in this epoch but a sampling probability above zero; "
                "add text to it or leave it out of --train_corpus"
            )
        return mixed_order(corpus_ids, probabilities, self.batch_size, self.one_corpus_per_batch, rng)


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
        budget: str | None = None,
    ):
        """``training_epochs``: the epochs the run reads, set by ``budget`` when that is not --epochs (e.g.
        "--max_steps 500"), so that a warning names what the user gave."""
        self.directory = Path(directory)
        self.manifest = manifest
        self.verify_checksum = verify_checksum
        self.masking = masking
        self.mixing = mixing
        self.generated = len(manifest["epochs"])
        corpus_probabilities(manifest, str(self.directory / MANIFEST_NAME))  # refused here, before any training
        if self.generated == 0:
            raise UserError(f"{self.directory}: the manifest lists no epochs; pregenerate the data again")
        if manifest.get("masking") == "dynamic" and masking is None:
            raise ValueError("dynamically masked data needs a DynamicMasking")
        if self.generated < training_epochs:
            asked = f"{training_epochs} training epochs were asked for"
            asked = f"{budget} reads {training_epochs} epochs' worth" if budget else asked
            logger.warning(
                "%s holds %d epoch(s) of data but %s: the data is reused (reshuffled) every %d epoch(s); %s",
                self.directory,
                self.generated,
                asked,
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
        return lambda indices: collate_rows(arrays, indices, masker)

    def epoch_order(self, epoch: int) -> np.ndarray | None:
        """With several corpora and a ``mixing``: the corpus-sampled order of training epoch ``epoch``; else None."""
        if self.mixing is None or len(self.manifest.get("corpora") or []) < 2:
            return None
        arrays = open_epoch(self.directory, self.manifest, self.data_epoch(epoch))
        return self.mixing.order(arrays.corpus_ids, self.manifest, epoch)


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


_DONE = object()


class BatchPrefetcher:
    """Iterate over ``fetch(indices)`` for each entry of ``plan``, up to ``depth`` batches ahead."""

    def __init__(self, fetch: BatchFetcher, plan: Sequence[np.ndarray], device: torch.device, depth: int = 2):
        self.fetch = fetch
        self.plan = plan
        self.device = device
        self.wait_seconds = 0.0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="batch-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for indices in self.plan:
                batch = self.fetch(indices)
                if self.device.type == "cuda":
                    batch = {name: tensor.pin_memory() for name, tensor in batch.items()}
                if not self._put(batch):
                    return
            self._put(_DONE)
        except BaseException as error:  # handed to the consumer, which re-raises it in the main thread
            self._put(error)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            started = time.perf_counter()
            item = self._queue.get()
            if self.device.type == "cuda" and isinstance(item, dict):
                item = {name: tensor.to(self.device, non_blocking=True) for name, tensor in item.items()}
            self.wait_seconds += time.perf_counter() - started
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> BatchPrefetcher:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
