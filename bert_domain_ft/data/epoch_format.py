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
    is_random_next    (N,)   uint8        the NSP label: 0 = B is A's next text, 1 = B was drawn from another
                                          document, 2 (``NO_NSP_LABEL``) = no NSP label, masked LM only (A was
                                          one sentence — a one-sentence document or chunk, a one-sentence task
                                          row — so B is another document's text but "is next" was never possible)
    corpus_ids        (N,)   uint8        which of several named corpora the instance comes from (only when the
                                          manifest lists more than one; their sampling probabilities are there)

uint16 for positions and lengths because no BERT has more than 65535 positions: it halves the file against int32.
An epoch is ~0.7× the size of the text it came from at L=128 (the original JSON format was 10–20×).
With ``objective == "mlm"`` there is no ``is_random_next`` and ``segment_a_lengths == lengths``; with dynamic
masking (``masking == "dynamic"``) ``input_ids`` are unmasked and the three ``masked_*``/``num_masked`` arrays
are absent: the trainer masks each batch.

"No NSP label" is the value 2 in the one-byte label rather than a second array: the loader turns it into the
losses' ignore index (-100), so those instances train masked LM only. Without it an instance whose A is one
sentence would be "random next" every time, and a corpus or task text of one-sentence rows would teach the NSP
head a constant. The epoch's statistics count ``nsp_labelled_instances`` and ``mlm_only_instances`` and give
``random_next_fraction`` over the labelled ones (≈ 0.5). Format version 2 added the value 2; epochs of version 1
(labels 0 and 1 only) still load, checked against their own range.

Each epoch directory also holds ``epoch.json`` (its statistics and, per array, shape, dtype and the SHA-256 of
the data bytes). It is built under ``epoch_XXX.partial`` and renamed when complete, so a directory named
``epoch_XXX`` is always whole.

Opening an epoch checks it against the manifest (``max_seq_len`` = L, masked width ≤ ``max_predictions_per_seq``,
the tokenizer's ``token_dtype``) and every value against its range: token ids < the vocabulary size, positions
< L, lengths ≤ L, ``num_masked`` ≤ P, NSP labels 0/1/2 (0/1 in version 1), corpus ids < the number of corpora.
The value scan reads each array once in chunks of ~8 MiB (min/max per chunk, numpy) and is remembered per file
(size, mtime, inode) for the rest of the process, so reopening an epoch every training epoch costs nothing;
``--verify`` (SHA-256) is separate. A value out of range would otherwise reach an embedding lookup mid-epoch as an
``IndexError``.

Where ``pregenerate`` writes: a new or empty output directory in place; with ``--overwrite`` beside it
(``<output_dir>.partial``), swapped in whole when complete (the old directory renamed aside, the new one renamed
in, the old one deleted), so a failed run leaves the previous data untouched; with ``--resume`` wherever the
interrupted run wrote, after checking it used the same settings. A directory holding files this tool did not
write (``files.unclaimed_entries``) is refused, naming them; ``--overwrite`` deletes them with the old data.

    manifest = read_manifest(Path("pregenerated"))
    epoch = open_epoch(Path("pregenerated"), manifest, epoch_index=0)
    epoch.input_ids[17], epoch.masked_labels[17, : epoch.num_masked[17]]
    work = working_directory(output_dir, overwrite=False, resume=False)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bert_domain_ft.errors import UserError
from bert_domain_ft.files import (
    OUTPUT_LEDGER,
    TEMPORARY_SUFFIX,
    claim_directory,
    data_sha256,
    describe_entries,
    fresh_directory,
    os_errors_as_user_errors,
    owns_directory,
    replace_directory,
    unclaimed_entries,
)

logger = logging.getLogger(__name__)

FORMAT_NAME = "bert_domain_ft.pregenerated"
FORMAT_VERSION = 2  # what this version writes
READABLE_FORMAT_VERSIONS = (1, 2)  # what it reads: 1 had NSP labels 0/1 only
NO_NSP_LABEL = 2  # is_random_next of an instance without an NSP label (masked LM only), from format version 2
MANIFEST_NAME = "manifest.json"
EPOCH_DESCRIPTION_NAME = "epoch.json"
HOLDOUT_DIRECTORY = "holdout"
GENERATION_RECORD = "generation.json"  # written first: lets --resume check it continues the same job

ARRAY_NAMES_STATIC_MASKS = ("masked_positions", "masked_labels", "num_masked")
ALL_ARRAY_NAMES = (
    "input_ids", "lengths", "segment_a_lengths", *ARRAY_NAMES_STATIC_MASKS, "is_random_next", "corpus_ids",
)  # fmt: skip

SCAN_CHUNK_BYTES = 8 << 20  # ~8 MiB of an array in memory at a time
_REGENERATE = "the data is damaged or altered, pregenerate it again"
_checked: set[tuple[Any, ...]] = set()  # epochs already found valid in this process (see _signature)


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
    if manifest.get("format_version") not in READABLE_FORMAT_VERSIONS:
        raise UserError(
            f"{path}: format version {manifest.get('format_version')} but this bert_domain_ft reads versions "
            f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))}; pregenerate the data again with this version"
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
    if manifest.get("format_version") == 1:
        nsp_label = (0, 1, "not a next-sentence label (0 or 1)")
    else:
        nsp_label = (0, NO_NSP_LABEL, f"not a next-sentence label (0, 1, or {NO_NSP_LABEL} for none)")
    return {
        "input_ids": token,
        "masked_labels": token,
        "lengths": (0, length, f"longer than max_seq_len {length}"),
        "segment_a_lengths": (0, length, f"longer than max_seq_len {length}"),
        "masked_positions": (0, length - 1, f"not a position of a {length}-token sequence"),
        "num_masked": (0, width, f"more than the {width} masked slots of a row"),
        "is_random_next": nsp_label,
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
    limits += (manifest.get("format_version"),)  # the NSP labels' range depends on it
    return (str(Path(directory).resolve()), tuple(files), limits)


def _is_leftover(name: str) -> bool:
    """What a run that completed no epoch may leave (the record written first, half-written ``.partial`` files,
    the ledger): not data, so it does not block the next run."""
    return name in (GENERATION_RECORD, OUTPUT_LEDGER) or name.endswith(TEMPORARY_SUFFIX)


def working_directory(output: Path, overwrite: bool, resume: bool, inputs: Sequence[Path | None] = ()) -> Path:
    """Where this run writes. A new or empty ``output_dir`` is written in place; ``--overwrite`` builds the new
    data beside it (``<output_dir>.partial``, beside the resolved directory) and ``publish`` swaps it in whole
    only when complete, so a run that fails — disk full, interrupted — leaves the previous data untouched;
    ``--resume`` continues wherever the interrupted run wrote. A directory holding entries this tool did not write
    (its ledger, ``files.unclaimed_entries``) is refused naming them; ``--overwrite`` replaces them too (said
    now, and named again when deleted), but never a directory holding one of the run's ``inputs`` (a corpus) or
    the current directory."""
    staging = _staging(output)
    with os_errors_as_user_errors(output / MANIFEST_NAME):
        if output.exists() and not output.is_dir():
            raise UserError(f"{output}: exists and is not a directory; choose another --output_dir")
        entries = sorted(entry.name for entry in output.iterdir()) if output.exists() else []
        holds_data = any(not _is_leftover(name) for name in entries)
        legacy = resume and not owns_directory(output) and any(name.startswith("epoch_") for name in entries)
        foreign = [] if legacy else [name for name in unclaimed_entries(output) if not _is_leftover(name)]
        if resume and (staging / GENERATION_RECORD).exists():
            return staging
        _refuse_unless_ours(output, holds_data, foreign, overwrite, resume)
        if not holds_data or resume:
            claim_directory(output, entries if legacy else ())  # a run from before the ledger: its entries
            return output
        _refuse_replacing_inputs(output, inputs)
        if foreign:
            logger.warning("--overwrite: %s holds %s, which bert_domain_ft did not write: deleted when the new "
                           "data is complete", output, ", ".join(foreign))  # fmt: skip
        fresh_directory(staging)
        claim_directory(staging)
        return staging


def _staging(output: Path) -> Path:
    """Where --overwrite builds: beside the resolved directory (same file system as the one it replaces)."""
    resolved = Path(os.path.realpath(output))
    return resolved.with_name(resolved.name + TEMPORARY_SUFFIX)


def _refuse_unless_ours(output: Path, holds_data: bool, foreign: list[str], overwrite: bool, resume: bool) -> None:
    if foreign and not overwrite:
        raise UserError(
            f"{output}: holds {describe_entries(foreign)}, which bert_domain_ft did not write; move them out, choose "
            "an empty --output_dir, or pass --overwrite to replace the whole directory (deleting them)"
        )
    if holds_data and not (overwrite or resume):
        raise UserError(
            f"{output}: already holds data; pass --overwrite to replace it, --resume to finish an interrupted "
            "run, or choose an empty --output_dir"
        )


def _refuse_replacing_inputs(output: Path, inputs: Sequence[Path | None]) -> None:
    """--overwrite deletes the whole old directory: never one holding a corpus or the current directory."""
    root = Path(os.path.realpath(output))
    for path, what in [*((path, "the corpus") for path in inputs), (Path.cwd(), "the current directory")]:
        if path is not None and Path(path).exists() and Path(path).resolve().is_relative_to(root):
            raise UserError(
                f"{output}: --overwrite replaces the whole directory, and {what} {path} is in it; move it out of "
                f"{output} or choose another --output_dir"
            )


def check_resume(output: Path, record: dict[str, Any]) -> None:
    """Refuse to resume a run whose recorded settings differ from these."""
    path = output / GENERATION_RECORD
    if not path.exists():
        if any(output.glob("epoch_*")):
            raise UserError(f"{path}: missing, so these epochs cannot be resumed safely; use --overwrite")
        return
    earlier = json.loads(path.read_text(encoding="utf-8"))
    changed = _changed_corpora(record, earlier)
    if changed:
        raise UserError(
            f"{', '.join(changed)}: changed since the interrupted run began (its content differs), so its epochs "
            "cannot be continued; use --overwrite to start again on the corpus as it is now"
        )
    differing = sorted(key for key in set(record) | set(earlier) if record.get(key) != earlier.get(key))
    if differing:
        raise UserError(
            f"{path}: the interrupted run used different settings ({', '.join(differing)}); "
            "rerun with the same flags, or use --overwrite to start again"
        )


def _changed_corpora(record: dict[str, Any], earlier: dict[str, Any]) -> list[str]:
    """Paths of the corpora (same name in both records) whose content fingerprint differs."""
    now, before = record.get("corpus_fingerprint") or {}, earlier.get("corpus_fingerprint") or {}
    paths = record.get("train_corpus") or {}
    return [str(paths.get(name, name)) for name in sorted(now) if name in before and now[name] != before[name]]


def discard_unfinished(work: Path, output: Path, disk_full: bool) -> None:
    """After a failed run: remove the epochs it had half written in ``work``. When the disk is full and ``work``
    is a directory built beside ``output`` (``--overwrite``), remove all of it, since it is what fills the disk;
    ``output`` itself (complete data of an earlier run) is never touched."""
    if disk_full and work != output:
        shutil.rmtree(work, ignore_errors=True)
        return
    if work.is_dir():
        for path in work.iterdir():
            if path.is_dir() and path.name.endswith(TEMPORARY_SUFFIX):
                shutil.rmtree(path, ignore_errors=True)


def publish(staging: Path, output: Path) -> None:
    """Swap a complete overwrite run in for ``output``, whole: the old directory is renamed aside, the new one
    renamed in, then the old one deleted (``replace_directory``; if the swap fails the old one is put back). The
    manifest is never deleted on its own, so ``output`` is always the old data or the new. Every entry of the old
    directory is named as it goes."""
    resolved = Path(os.path.realpath(output))
    with os_errors_as_user_errors(output):
        old = sorted(entry.name for entry in resolved.iterdir() if entry.name != OUTPUT_LEDGER)
    logger.warning("--overwrite: deleting %d entries of %s: %s", len(old), output, ", ".join(old))
    replace_directory(staging, resolved)


def remove_stale_epochs(output: Path, epochs_to_generate: int, with_holdout: bool) -> None:
    """After --overwrite, epochs beyond the new count (or a held-out set no longer asked for) must not linger."""
    keep = {epoch_directory_name(e) for e in range(epochs_to_generate)}
    if with_holdout:
        keep.add(HOLDOUT_DIRECTORY)
    for path in output.iterdir():
        stale_epoch = path.name.startswith("epoch_") and path.name not in keep
        if path.is_dir() and (
            stale_epoch or path.name.endswith(".partial") or (path.name == HOLDOUT_DIRECTORY and path.name not in keep)
        ):
            shutil.rmtree(path, ignore_errors=True)
