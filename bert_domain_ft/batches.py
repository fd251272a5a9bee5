"""Turning rows of a pregenerated epoch into the tensors the model takes.

A batch is a dict of int64 tensors (B = rows, L = longest row rounded up to a multiple of 8, P = masked slots):
    input_ids, attention_mask, token_type_ids   (B, L)
    masked_lm_positions, masked_lm_labels       (B, P)  labels are -100 in unused slots
    next_sentence_label                         (B,)    only for the NSP objective; 1 = random next
Trimming to the longest row costs nothing for packed data (rows are ~full) and saves a lot for short pairs.

    batch = collate_rows(epoch, np.array([4, 9, 12]))
"""

from __future__ import annotations

import numpy as np
import torch

from .epoch_format import EpochArrays
from .pretraining_model import IGNORE_INDEX

PAD_TO_MULTIPLE_OF = 8  # tensor-core and vector-unit friendly widths


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def collate_rows(epoch: EpochArrays, indices: np.ndarray) -> dict[str, torch.Tensor]:
    """Gather rows ``indices`` of ``epoch`` (statically masked) into a batch dict."""
    order = np.sort(np.asarray(indices))  # sorted reads are sequential on the memmap
    restore = np.argsort(np.argsort(indices)) if not np.array_equal(order, indices) else None
    lengths = np.asarray(epoch.lengths[order], dtype=np.int64)
    width = min(epoch.input_ids.shape[1], round_up(int(lengths.max()), PAD_TO_MULTIPLE_OF))
    input_ids = np.asarray(epoch.input_ids[order, :width], dtype=np.int64)
    positions = np.arange(width)
    attention_mask = (positions[None, :] < lengths[:, None]).astype(np.int64)
    segment_a = np.asarray(epoch.segment_a_lengths[order], dtype=np.int64)
    token_type_ids = ((positions[None, :] >= segment_a[:, None]) & (attention_mask == 1)).astype(np.int64)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
    if epoch.masked_positions is not None:
        counts = np.asarray(epoch.num_masked[order], dtype=np.int64)
        slots = max(1, int(counts.max()))
        real = np.arange(slots)[None, :] < counts[:, None]
        batch["masked_lm_positions"] = np.where(real, epoch.masked_positions[order, :slots], 0).astype(np.int64)
        # Widen before inserting -100: uint16 labels would wrap it to 65436.
        labels = np.asarray(epoch.masked_labels[order, :slots], dtype=np.int64)
        batch["masked_lm_labels"] = np.where(real, labels, IGNORE_INDEX)
    if epoch.is_random_next is not None:
        batch["next_sentence_label"] = np.asarray(epoch.is_random_next[order], dtype=np.int64)
    if restore is not None:
        batch = {name: value[restore] for name, value in batch.items()}
    return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in batch.items()}
