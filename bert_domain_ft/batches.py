"""Turning rows of a pregenerated epoch into the tensors the model takes.

A batch is a dict of int64 tensors (B = rows, L = longest row rounded up to a multiple of 8, P = masked slots):
    input_ids, attention_mask, token_type_ids   (B, L)
    masked_lm_positions, masked_lm_labels       (B, P)  labels are -100 in unused slots (absent when the epoch
                                                        has no masks and no masker is given)
    next_sentence_label                         (B,)    only for the NSP objective; 1 = random next
Trimming to the longest row costs nothing for packed data (rows are ~full) and saves a lot for short pairs.

    batch = collate_rows(epoch, np.array([4, 9, 12]))
    batch = collate_rows(unmasked_epoch, indices, DynamicMasking.from_manifest(manifest, seed).for_epoch(0))
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .epoch_format import EpochArrays
from .masking import MaskedRows
from .pretraining_model import IGNORE_INDEX

PAD_TO_MULTIPLE_OF = 8  # tensor-core and vector-unit friendly widths


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


RowMasker = Callable[[np.ndarray, np.ndarray, np.ndarray], MaskedRows]  # (rows, lengths, indices) → masked rows


def _masked_slots(positions: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """masked_lm_positions / masked_lm_labels trimmed to the batch's most masked row; unused slots: 0 / -100."""
    counts = np.asarray(counts, dtype=np.int64)
    slots = max(1, int(counts.max()))
    real = np.arange(slots)[None, :] < counts[:, None]
    # Widen before inserting -100: uint16 labels would wrap it to 65436.
    wide_labels = np.asarray(labels[:, :slots], dtype=np.int64)
    return {
        "masked_lm_positions": np.where(real, positions[:, :slots], 0).astype(np.int64),
        "masked_lm_labels": np.where(real, wide_labels, IGNORE_INDEX),
    }


def collate_rows(epoch: EpochArrays, indices: np.ndarray, masker: RowMasker | None = None) -> dict[str, torch.Tensor]:
    """Gather rows ``indices`` of ``epoch`` into a batch dict.

    Rows keep their pregenerated masks; an epoch without masks (``--dynamic_masking``) is masked now by
    ``masker(rows, lengths, indices)`` when one is given (``dynamic_masking.DynamicMasking.for_epoch``).
    """
    order = np.sort(np.asarray(indices))  # sorted reads are sequential on the memmap
    restore = np.argsort(np.argsort(indices)) if not np.array_equal(order, indices) else None
    lengths = np.asarray(epoch.lengths[order], dtype=np.int64)
    width = min(epoch.input_ids.shape[1], round_up(int(lengths.max()), PAD_TO_MULTIPLE_OF))
    rows = np.asarray(epoch.input_ids[order, :width])
    positions = np.arange(width)
    attention_mask = (positions[None, :] < lengths[:, None]).astype(np.int64)
    segment_a = np.asarray(epoch.segment_a_lengths[order], dtype=np.int64)
    token_type_ids = ((positions[None, :] >= segment_a[:, None]) & (attention_mask == 1)).astype(np.int64)
    batch = {"attention_mask": attention_mask, "token_type_ids": token_type_ids}
    if epoch.masked_positions is not None:
        counts = np.asarray(epoch.num_masked[order], dtype=np.int64)
        slots = max(1, int(counts.max()))
        batch.update(_masked_slots(epoch.masked_positions[order, :slots], epoch.masked_labels[order, :slots], counts))
    elif masker is not None:
        masked = masker(rows, lengths, order)
        rows = masked.input_ids
        batch.update(_masked_slots(masked.positions, masked.labels, masked.counts))
    batch["input_ids"] = rows.astype(np.int64)
    if epoch.is_random_next is not None:
        batch["next_sentence_label"] = np.asarray(epoch.is_random_next[order], dtype=np.int64)
    if restore is not None:
        batch = {name: value[restore] for name, value in batch.items()}
    return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in batch.items()}
