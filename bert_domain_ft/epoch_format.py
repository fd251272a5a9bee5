"""The pregenerated-data format: the one contract between pregeneration and training.

A pregenerated directory holds ``manifest.json`` (written last) and one sub-directory per epoch, ``epoch_000``,
``epoch_001``, …, plus ``holdout`` when documents were held out. An epoch directory holds fixed-width ``.npy``
arrays that ``np.load(path, mmap_mode="r")`` opens as they are (N = instances, L = ``max_seq_len``,
P = ``max_predictions_per_seq``; "token dtype" is uint16 when the vocabulary has at most 65536 entries, else int32):

    input_ids         (N, L) token dtype  the model input, masks already applied; padded with pad_token_id
    lengths           (N,)   uint16       non-padding tokens; attention_mask = arange(L) < lengths
    segment_a_lengths (N,)   uint16       tokens in segment 0 ([CLS] A [SEP]); token_type_ids = arange(L) >= this
    masked_positions  (N, P) uint16       positions of the masked tokens, ascending; rows padded with 0
    masked_labels     (N, P) token dtype  the original token at each masked position; rows padded with 0
    num_masked        (N,)   uint16       how many entries of the two rows above are real
    is_random_next    (N,)   uint8        1 where segment B was drawn from another document (NSP label 1)
    corpus_ids        (N,)   uint8        which of several named corpora the instance comes from (only when the
                                          manifest lists more than one; their sampling probabilities are there)

uint16 for positions and lengths because no BERT has more than 65535 positions: it halves the file against int32.
An epoch is ~0.7× the size of the text it came from at L=128 (the original JSON format was 10–20×).
With ``objective == "mlm"`` there is no ``is_random_next`` and ``segment_a_lengths == lengths``; with dynamic
masking (``masking == "dynamic"``) ``input_ids`` are unmasked and the three ``masked_*``/``num_masked`` arrays
are absent: the trainer masks each batch.

Each epoch directory also holds ``epoch.json`` (its statistics and, per array, shape, dtype and the SHA-256 of
the data bytes). It is built under ``epoch_XXX.partial`` and renamed when complete, so a directory named
``epoch_XXX`` is always whole.

Opening an epoch checks it against the manifest (``max_seq_len`` = L, masked width ≤ ``max_predictions_per_seq``,
the tokenizer's ``token_dtype``) and every value against its range: token ids < the vocabulary size, positions
< L, lengths ≤ L, ``num_masked`` ≤ P, NSP labels 0/1, corpus ids < the number of corpora. The value scan reads
each array once in chunks of ~8 MiB (min/max per chunk, numpy) and is remembered per file (size, mtime) for the
rest of the process; ``--verify`` (SHA-256) is separate.

    manifest = read_manifest(Path("pregenerated"))
    epoch = open_epoch(Path("pregenerated"), manifest, epoch_index=0)
    epoch.input_ids[17], epoch.masked_labels[17, : epoch.num_masked[17]]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .epoch_checks import check_epoch_against_manifest
from .errors import UserError
from .npy_stream import data_sha256

FORMAT_NAME = "bert_domain_ft.pregenerated"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
EPOCH_DESCRIPTION_NAME = "epoch.json"
HOLDOUT_DIRECTORY = "holdout"

ARRAY_NAMES_STATIC_MASKS = ("masked_positions", "masked_labels", "num_masked")
ALL_ARRAY_NAMES = (
    "input_ids", "lengths", "segment_a_lengths", *ARRAY_NAMES_STATIC_MASKS, "is_random_next", "corpus_ids",
)  # fmt: skip


def epoch_directory_name(epoch_index: int) -> str:
    return f"epoch_{epoch_index:03d}"


def array_names(objective: str, masking: str, several_corpora: bool = False) -> tuple[str, ...]:
    """The arrays an epoch holds for this objective ("nsp" or "mlm") and masking ("static" or "dynamic")."""
    names = ["input_ids", "lengths", "segment_a_lengths"]
    if masking == "static":
        names += list(ARRAY_NAMES_STATIC_MASKS)
    if objective == "nsp":
        names.append("is_random_next")
    if several_corpora:
        names.append("corpus_ids")
    return tuple(names)


@dataclass(frozen=True)
class EpochArrays:
    """One epoch, memory-mapped. Masks and NSP labels are ``None`` where the format says they are absent."""

    directory: Path
    input_ids: np.ndarray
    lengths: np.ndarray
    segment_a_lengths: np.ndarray
    masked_positions: np.ndarray | None
    masked_labels: np.ndarray | None
    num_masked: np.ndarray | None
    is_random_next: np.ndarray | None
    statistics: dict[str, Any]
    corpus_ids: np.ndarray | None = None

    @property
    def num_instances(self) -> int:
        return int(self.input_ids.shape[0])


def read_manifest(directory: Path, flag: str = "--pregenerated_data") -> dict[str, Any]:
    """Read and check ``manifest.json`` of a pregenerated directory; ``flag`` is the option that named it."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if directory.exists() and not directory.is_dir():
        raise UserError(
            f"{directory}: is a file, not a directory; {flag} takes the output directory of `bert-domain-ft pregenerate`"
        )
    if not path.exists():
        hint = (
            "it holds the original script's epoch_N.json files: they are converted automatically by finetune"
            if any(directory.glob("epoch_*.json"))
            else f"run `bert-domain-ft pregenerate` first, or check the {flag} path"
        )
        raise UserError(f"{path}: no manifest; {hint}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: manifest is not valid JSON ({error}); pregenerate the data again") from None
    if manifest.get("format") != FORMAT_NAME:
        raise UserError(f"{path}: not a bert_domain_ft manifest; pregenerate the data with this version")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path}: format version {manifest.get('format_version')} but this bert_domain_ft reads version "
            f"{FORMAT_VERSION}; pregenerate the data again with this version"
        )
    return manifest


def describe_arrays(directory: Path, names: tuple[str, ...], checksums: dict[str, str]) -> dict[str, Any]:
    """The per-array record stored in ``epoch.json``: shape, dtype, SHA-256 of the data bytes."""
    record = {}
    for name in names:
        array = np.load(directory / f"{name}.npy", mmap_mode="r")
        record[name] = {"shape": list(array.shape), "dtype": array.dtype.name, "sha256": checksums[name]}
    return record


def _check_array(path: Path, expected: dict[str, Any], verify_checksum: bool) -> np.ndarray:
    if not path.exists():
        raise UserError(f"{path}: missing; the pregenerated data is incomplete, pregenerate it again")
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, EOFError, OSError) as error:  # EOFError: an empty file; ValueError: a cut header or data
        raise UserError(
            f"{path}: unreadable ({error}); the file is truncated or damaged, pregenerate the data again"
        ) from None
    if list(array.shape) != list(expected["shape"]) or array.dtype.name != expected["dtype"]:
        raise UserError(
            f"{path}: shape {list(array.shape)} {array.dtype.name} but the manifest says "
            f"{expected['shape']} {expected['dtype']}; the file is truncated or altered, pregenerate the data again"
        )
    if verify_checksum and data_sha256(path) != expected["sha256"]:
        raise UserError(f"{path}: checksum differs from the manifest; the file was altered, pregenerate the data again")
    return array


def open_epoch_directory(
    directory: Path, verify_checksum: bool = False, manifest: dict[str, Any] | None = None
) -> EpochArrays:
    """Open one epoch (or the held-out set) as memmaps after a size/shape check (and SHA-256 when asked); with
    the ``manifest``, also check the arrays against it and their values against their ranges."""
    description_path = directory / EPOCH_DESCRIPTION_NAME
    if not description_path.exists():
        raise UserError(f"{description_path}: missing; this epoch is incomplete, pregenerate it again (--resume)")
    try:
        description = json.loads(description_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(
            f"{description_path}: not valid JSON ({error}); the file is damaged, pregenerate the data again"
        ) from None
    arrays = {
        name: _check_array(directory / f"{name}.npy", expected, verify_checksum)
        for name, expected in description["arrays"].items()
    }
    if manifest is not None:
        check_epoch_against_manifest(directory, arrays, manifest)
    return EpochArrays(
        directory=directory,
        input_ids=arrays["input_ids"],
        lengths=arrays["lengths"],
        segment_a_lengths=arrays["segment_a_lengths"],
        masked_positions=arrays.get("masked_positions"),
        masked_labels=arrays.get("masked_labels"),
        num_masked=arrays.get("num_masked"),
        is_random_next=arrays.get("is_random_next"),
        statistics=description["statistics"],
        corpus_ids=arrays.get("corpus_ids"),
    )


def open_epoch(
    directory: Path, manifest: dict[str, Any], epoch_index: int, verify_checksum: bool = False
) -> EpochArrays:
    """Open data epoch ``epoch_index`` (0-based) of a pregenerated directory."""
    num_epochs = len(manifest["epochs"])
    if not 0 <= epoch_index < num_epochs:
        raise UserError(f"{directory}: has {num_epochs} epochs, epoch {epoch_index} was asked for")
    return open_epoch_directory(Path(directory) / epoch_directory_name(epoch_index), verify_checksum, manifest)


def open_holdout(directory: Path, verify_checksum: bool = False) -> EpochArrays | None:
    """The held-out set written with ``--holdout_fraction``, or ``None`` when there is none (checked against
    the directory's manifest like a training epoch)."""
    holdout = Path(directory) / HOLDOUT_DIRECTORY
    if not holdout.exists():
        return None
    manifest = read_manifest(directory) if (Path(directory) / MANIFEST_NAME).exists() else None
    return open_epoch_directory(holdout, verify_checksum, manifest)
