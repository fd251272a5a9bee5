"""Build the next batches in a background thread while the model computes, and time how long the loop waits.

Collating from memmaps is numpy work that releases the GIL, so a thread overlaps it with the step (torch kernels
release the GIL too); on CUDA the thread also pins the memory so the host → device copy is asynchronous.

    with BatchPrefetcher(fetch, plan, torch.device("cpu")) as batches:
        for batch in batches: ...              # batches.wait_seconds: total time spent blocked on data
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from types import TracebackType

import numpy as np
import torch

from .data import Batch, BatchFetcher

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
