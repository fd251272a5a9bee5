"""Checks that an opened epoch agrees with its manifest and holds only values the model can take.

A value out of range (a token id past the vocabulary, a masked position past the sequence) would otherwise reach
an embedding lookup or a gather mid-epoch as an ``IndexError``, losing the run's progress since its last
checkpoint. Every array is scanned once, in chunks of about ``SCAN_CHUNK_BYTES`` (min and max per chunk, so
memory stays flat whatever the epoch's size); the row and value are looked up only in a chunk that fails. An
epoch that passed is remembered by its files' (size, mtime, inode), so reopening it each epoch costs nothing.

    check_epoch_against_manifest(Path("data/epoch_000"), {"input_ids": memmap, ...}, manifest)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

SCAN_CHUNK_BYTES = 8 << 20  # ~8 MiB of an array in memory at a time
_REGENERATE = "the data is damaged or altered, pregenerate it again"
_checked: set[tuple[Any, ...]] = set()  # epochs already found valid in this process (see _signature)


def check_epoch_against_manifest(directory: Path, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
    """Raise ``UserError`` naming the file (and for values the row and value) unless the epoch fits the manifest."""
    _check_shapes(directory, arrays, manifest)
    signature = _signature(directory, arrays, manifest)
    if signature in _checked:
        return
    for name, (low, high, meaning) in _value_ranges(arrays, manifest).items():
        if name in arrays:
            _scan(directory / f"{name}.npy", arrays[name], low, high, meaning)
    _checked.add(signature)


def _check_shapes(directory: Path, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
    manifest_path = directory.parent / "manifest.json"
    max_seq_len = int(manifest["max_seq_len"])
    input_ids = arrays["input_ids"]
    if input_ids.ndim != 2 or input_ids.shape[1] != max_seq_len:
        raise UserError(
            f"{manifest_path}: max_seq_len is {max_seq_len} but {directory / 'input_ids.npy'} has shape "
            f"{list(input_ids.shape)}; the manifest does not match its data, pregenerate the data again"
        )
    token_dtype = manifest["tokenizer"].get("token_dtype")
    for name in ("input_ids", "masked_labels"):
        if name in arrays and token_dtype is not None and arrays[name].dtype.name != token_dtype:
            raise UserError(
                f"{manifest_path}: token_dtype is {token_dtype} but {directory / f'{name}.npy'} holds "
                f"{arrays[name].dtype.name}; the manifest does not match its data, pregenerate the data again"
            )
    if "masked_positions" in arrays:
        width, limit = arrays["masked_positions"].shape[1], int(manifest["max_predictions_per_seq"])
        if width > limit:
            raise UserError(
                f"{manifest_path}: max_predictions_per_seq is {limit} but {directory / 'masked_positions.npy'} "
                f"has {width} per row; the manifest does not match its data, pregenerate the data again"
            )


def _value_ranges(arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> dict[str, tuple[int, int, str]]:
    """Inclusive (low, high) of each array's values, and what a value outside means."""
    vocab_size = int(manifest["tokenizer"]["vocab_size"])
    length = int(manifest["max_seq_len"])
    width = arrays["masked_positions"].shape[1] if "masked_positions" in arrays else 0
    corpora = max(1, len(manifest.get("corpora") or []))
    token = (0, vocab_size - 1, f"not a token id of the {vocab_size}-token vocabulary")
    return {
        "input_ids": token,
        "masked_labels": token,
        "lengths": (0, length, f"longer than max_seq_len {length}"),
        "segment_a_lengths": (0, length, f"longer than max_seq_len {length}"),
        "masked_positions": (0, length - 1, f"not a position of a {length}-token sequence"),
        "num_masked": (0, width, f"more than the {width} masked slots of a row"),
        "is_random_next": (0, 1, "not a next-sentence label (0 or 1)"),
        "corpus_ids": (0, corpora - 1, f"not one of the manifest's {corpora} corpora"),
    }


def _scan(path: Path, array: np.ndarray, low: int, high: int, meaning: str) -> None:
    """Raise naming the first row of ``array`` holding a value outside [low, high]."""
    if array.shape[0] == 0:
        return
    row_bytes = max(1, array.itemsize * int(np.prod(array.shape[1:], dtype=np.int64)))
    rows_per_chunk = max(1, SCAN_CHUNK_BYTES // row_bytes)
    for start in range(0, array.shape[0], rows_per_chunk):
        chunk = np.asarray(array[start : start + rows_per_chunk])
        if chunk.size == 0 or (int(chunk.min()) >= low and int(chunk.max()) <= high):
            continue
        outside = ((chunk < low) | (chunk > high)).reshape(len(chunk), -1)
        row = int(np.argmax(outside.any(axis=1)))
        value = int(chunk.reshape(len(chunk), -1)[row][outside[row]][0])
        raise UserError(f"{path}: row {start + row} holds {value}, {meaning}; {_REGENERATE}")


def _signature(directory: Path, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> tuple[Any, ...]:
    files = []
    for name in sorted(arrays):
        status = os.stat(directory / f"{name}.npy")
        files.append((name, status.st_size, status.st_mtime_ns, status.st_ino))
    limits = (manifest["tokenizer"]["vocab_size"], manifest["max_seq_len"], len(manifest.get("corpora") or []))
    return (str(Path(directory).resolve()), tuple(files), limits)
