"""Reuse data made by the original ``pregenerate_training_data.py``: convert it once to the memmap format.

The original wrote ``epoch_N.json`` (JSON lines with ``tokens``, ``segment_ids``, ``is_random_next``,
``masked_lm_positions``, ``masked_lm_labels``; tokens as strings) and ``epoch_N_metrics.json``
(``num_training_examples``, ``max_seq_len``). Tokens become ids through the model's vocabulary; the result is an
ordinary pregenerated directory under ``<data>/bert_domain_ft_memmap`` that is reused while the JSON files and the
vocabulary are unchanged.

    converted = convert_legacy_directory(Path("old_data"), tokenizer, facts, show_progress=True)
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from bert_domain_ft.data.epoch_format import (
    EPOCH_DESCRIPTION_NAME,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    array_names,
    describe_arrays,
    epoch_directory_name,
)
from bert_domain_ft.errors import UserError, at_location
from bert_domain_ft.files import (
    TEMPORARY_SUFFIX,
    data_sha256,
    os_errors_as_user_errors,
    replace_directory,
    write_json_atomic,
)
from bert_domain_ft.model.tokenizer import TokenizerFacts

logger = logging.getLogger(__name__)

CONVERTED_DIRECTORY = "bert_domain_ft_memmap"
_LEGACY_EPOCH = re.compile(r"^epoch_(\d+)\.json$")


def find_legacy_epochs(directory: Path) -> list[tuple[Path, Path]]:
    """(data, metrics) file pairs of epochs 0, 1, … (stopping at the first missing one, as the original did)."""
    pairs = []
    for index in range(len(list(Path(directory).glob("epoch_*.json")))):
        data, metrics = directory / f"epoch_{index}.json", directory / f"epoch_{index}_metrics.json"
        if not (data.exists() and metrics.exists()):
            break
        pairs.append((data, metrics))
    return pairs


def is_legacy_directory(directory: Path) -> bool:
    return not (Path(directory) / MANIFEST_NAME).exists() and bool(find_legacy_epochs(Path(directory)))


def _source_signature(pairs: list[tuple[Path, Path]], facts: TokenizerFacts) -> dict[str, Any]:
    files = {path.name: [path.stat().st_size, path.stat().st_mtime_ns] for pair in pairs for path in pair}
    return {"files": files, "vocab_fingerprint": facts.vocab_fingerprint}


class _EpochWriter:
    """Fills the fixed-width arrays of one epoch; masked positions/labels are kept flat until the width is known."""

    def __init__(self, directory: Path, num_rows: int, max_seq_len: int, token_dtype: np.dtype):
        self.directory = directory
        self.max_seq_len = max_seq_len
        self.token_dtype = token_dtype
        shapes = {"input_ids": ((num_rows, max_seq_len), token_dtype), "lengths": ((num_rows,), np.uint16)}
        shapes.update({"segment_a_lengths": ((num_rows,), np.uint16), "num_masked": ((num_rows,), np.uint16)})
        shapes["is_random_next"] = ((num_rows,), np.uint8)
        self.arrays = {
            name: np.lib.format.open_memmap(directory / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
            for name, (shape, dtype) in shapes.items()
        }
        self.positions: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def put(self, row: int, ids: np.ndarray, segment_a: int, positions: np.ndarray, labels: np.ndarray, nsp: int):
        self.arrays["input_ids"][row, : len(ids)] = ids
        self.arrays["lengths"][row] = len(ids)
        self.arrays["segment_a_lengths"][row] = segment_a
        self.arrays["num_masked"][row] = len(positions)
        self.arrays["is_random_next"][row] = nsp
        self.positions.append(positions.astype(np.uint16))
        self.labels.append(labels.astype(self.token_dtype))

    def finish(self) -> int:
        """Write the (N, P) mask arrays; returns P."""
        counts = np.asarray(self.arrays["num_masked"], dtype=np.int64)
        width = max(1, int(counts.max()) if counts.size else 1)
        rows = np.repeat(np.arange(counts.size), counts)
        slots = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
        for name, parts, dtype in (
            ("masked_positions", self.positions, np.uint16),
            ("masked_labels", self.labels, self.token_dtype),
        ):
            array = np.lib.format.open_memmap(
                self.directory / f"{name}.npy", mode="w+", dtype=dtype, shape=(counts.size, width)
            )
            array[rows, slots] = np.concatenate(parts) if parts else np.zeros(0, dtype)
            array.flush()
        for array in self.arrays.values():
            array.flush()
        return width


def _parse_line(line: str, path: Path, number: int, vocab: dict[str, int], max_seq_len: int) -> tuple[Any, ...]:
    def fail(problem: str) -> UserError:
        return UserError(at_location(path, number, problem))

    try:
        record = json.loads(line)
        tokens, segments = record["tokens"], record["segment_ids"]
        positions, label_tokens = record["masked_lm_positions"], record["masked_lm_labels"]
        is_random_next = int(bool(record["is_random_next"]))
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise fail(f"not an instance of the original format ({error}); regenerate this epoch") from None
    unknown = next((token for token in [*tokens, *label_tokens] if token not in vocab), None)
    if unknown is not None:
        raise fail(f"token {unknown!r} is not in the model's vocabulary; use the --bert_model the data was made with")
    if len(tokens) > max_seq_len or len(segments) != len(tokens) or len(positions) != len(label_tokens):
        raise fail(f"inconsistent instance ({len(tokens)} tokens, {len(segments)} segment ids, max {max_seq_len})")
    segment_a = segments.count(0)
    if segments != [0] * segment_a + [1] * (len(segments) - segment_a):
        raise fail("segment_ids are not 0…0 1…1; regenerate this epoch")
    order = np.argsort(np.asarray(positions, dtype=np.int64), kind="stable")
    positions_array = np.asarray(positions, dtype=np.int64)[order]
    if positions_array.size and (positions_array.min() < 0 or positions_array.max() >= len(tokens)):
        raise fail("a masked_lm_position is outside the tokens; regenerate this epoch")
    ids = np.fromiter((vocab[token] for token in tokens), dtype=np.int64, count=len(tokens))
    labels = np.fromiter((vocab[token] for token in label_tokens), dtype=np.int64, count=len(label_tokens))[order]
    return ids, segment_a, positions_array, labels, is_random_next


def convert_epoch(
    data_path: Path, metrics_path: Path, vocab: dict[str, int], facts: TokenizerFacts, out: Path, show_progress: bool
) -> dict[str, Any]:
    """Convert one ``epoch_N.json`` into epoch directory ``out``; returns its manifest entry (without index)."""
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        num_rows, max_seq_len = int(metrics["num_training_examples"]), int(metrics["max_seq_len"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise UserError(f"{metrics_path}: unreadable metrics file ({error}); regenerate this epoch") from None
    out.mkdir(parents=True)
    writer = _EpochWriter(out, num_rows, max_seq_len, facts.token_dtype)
    row = 0
    with open(data_path, encoding="utf-8") as handle:
        for number, line in enumerate(tqdm(handle, total=num_rows, desc=data_path.name, disable=not show_progress), 1):
            if not line.strip():
                continue
            if row >= num_rows:
                raise UserError(
                    at_location(data_path, number, f"more instances than the {num_rows} in {metrics_path.name}")
                )
            writer.put(row, *_parse_line(line, data_path, number, vocab, max_seq_len))
            row += 1
    if row != num_rows:
        raise UserError(f"{data_path}: {row} instances but {metrics_path.name} says {num_rows}; regenerate this epoch")
    width = writer.finish()
    names = array_names("nsp", "static")
    checksums = {name: data_sha256(out / f"{name}.npy") for name in names}
    statistics = {"num_instances": num_rows, "converted_from": str(data_path), "max_predictions_per_seq": width}
    arrays = describe_arrays(out, names, checksums)
    write_json_atomic(out / EPOCH_DESCRIPTION_NAME, {"statistics": statistics, "arrays": arrays})
    return {"num_instances": num_rows, "statistics": statistics, "max_seq_len": max_seq_len}


def convert_legacy_directory(
    directory: Path, tokenizer: Any, facts: TokenizerFacts, show_progress: bool = True, destination: Path | None = None
) -> Path:
    """Convert the original format in ``directory`` (once: an up-to-date conversion is reused); returns its path."""
    directory = Path(directory)
    pairs = find_legacy_epochs(directory)
    if not pairs:
        raise UserError(f"{directory}: no epoch_0.json with epoch_0_metrics.json; give a pregenerated directory")
    destination = Path(destination) if destination is not None else directory / CONVERTED_DIRECTORY
    signature = _source_signature(pairs, facts)
    manifest_path = destination / MANIFEST_NAME
    if manifest_path.exists():
        previous = json.loads(manifest_path.read_text(encoding="utf-8"))
        if previous.get("generation", {}).get("source_signature") == signature:
            logger.info("reusing %s (converted earlier from the original format)", destination)
            return destination
    logger.info("converting %d epoch(s) of the original JSON format in %s to %s", len(pairs), directory, destination)
    temporary = destination.with_name(destination.name + TEMPORARY_SUFFIX)
    with os_errors_as_user_errors(temporary):
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    vocab = tokenizer.get_vocab()
    epochs = []
    for index, (data_path, metrics_path) in enumerate(pairs):
        out = temporary / epoch_directory_name(index)
        with os_errors_as_user_errors(out):
            entry = convert_epoch(data_path, metrics_path, vocab, facts, out, show_progress)
        epochs.append({"index": index, "directory": out.name, **entry})
    write_json_atomic(temporary / MANIFEST_NAME, _manifest(directory, facts, epochs, signature))
    replace_directory(temporary, destination)
    return destination


def _manifest(directory: Path, facts: TokenizerFacts, epochs: list[dict[str, Any]], signature: Any) -> dict[str, Any]:
    lengths = {entry.pop("max_seq_len") for entry in epochs}
    if len(lengths) != 1:
        raise UserError(f"{directory}: epochs have different max_seq_len {sorted(lengths)}; regenerate them alike")
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "objective": "nsp",
        "masking": "static",
        "tokenizer": facts.to_json(),
        "max_seq_len": lengths.pop(),
        "max_predictions_per_seq": max(entry["statistics"]["max_predictions_per_seq"] for entry in epochs),
        "generation": {"converted_from": str(directory), "source_signature": signature},
        "corpus": {},
        "epochs": epochs,
        "holdout": None,
    }
