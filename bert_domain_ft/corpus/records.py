"""Text kept as records: parquet files and ``datasets`` directories, streamed a batch of rows at a time.

Two kinds of input hold a table of rows with named columns, as the Hugging Face ``datasets`` world keeps text:

* a **parquet** file (``.parquet``, ``.pq``), read with pyarrow's ``ParquetFile.iter_batches`` over the named
  columns only;
* a **directory written by** ``datasets.Dataset.save_to_disk`` (``state.json`` beside ``data-*.arrow`` files in
  Arrow's IPC stream format), read batch by batch with pyarrow's IPC stream reader, without importing
  ``datasets``. A ``DatasetDict`` directory is refused with the names of its splits.

(JSON lines, the third kind, is read line by line by ``task_files`` and ``reading``.) Memory holds one batch of
``BATCH_ROWS`` rows of the wanted columns (and one row group of a parquet file, one record batch of an Arrow
file), whatever the file's size: streaming 58 M and 231 M characters of parquet peaked at 141 and 142 MB RSS,
of a datasets directory at 82 MB both (Python with pyarrow imported: ~80 MB). pyarrow is an optional dependency
(``pip install 'bert_domain_ft[datasets]'``); its absence, a file that is not parquet or Arrow, a truncated one
and a missing column are each a one-line ``UserError`` naming the file. Rows are numbered from 1 (messages say
``file.parquet: row 12``).

    for row, (text,) in iter_record_rows(Path("train.parquet"), ("text",)):
        print(row, text[:40])
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bert_domain_ft.errors import UserError, first_line

PARQUET_SUFFIXES = (".parquet", ".pq")
DATASET_STATE_FILE = "state.json"  # what save_to_disk writes beside its data-*.arrow files
DATASET_DICT_FILE = "dataset_dict.json"  # a DatasetDict: one save_to_disk directory per split
BATCH_ROWS = 1024  # rows per batch read: bounds memory (1024 texts) whatever the file's size
FINGERPRINT_BLOCK_BYTES = 1 << 20


def is_dataset_directory(path: Path) -> bool:
    """``path`` is a directory written by ``Dataset.save_to_disk`` (or by ``DatasetDict.save_to_disk``)."""
    path = Path(path)
    return path.is_dir() and ((path / DATASET_STATE_FILE).is_file() or (path / DATASET_DICT_FILE).is_file())


def record_format(path: Path) -> str | None:
    """``parquet``, ``arrow`` (a save_to_disk directory) or None (some other file)."""
    path = Path(path)
    if is_dataset_directory(path):
        return "arrow"
    return "parquet" if path.suffix.lower() in PARQUET_SUFFIXES else None


def _pyarrow(path: Path) -> Any:
    try:
        import pyarrow
    except ImportError:
        raise UserError(
            f"{path}: reading parquet and datasets directories needs pyarrow; pip install 'bert_domain_ft[datasets]' "
            "(or pip install pyarrow), or give the text as JSON lines"
        ) from None
    return pyarrow


def _unreadable(path: Path, kind: str, error: BaseException) -> UserError:
    return UserError(
        f"{path}: not a readable {kind} ({first_line(error)}); the file may be truncated or not {kind}: "
        "write it again (e.g. Dataset.to_parquet / save_to_disk)"
    )


def _missing_column(path: Path, column: str, names: Sequence[str], advice: str) -> UserError:
    shown = ", ".join(repr(name) for name in names) or "none"
    return UserError(f"{path}: no column '{column}' (columns: {shown}); {advice}")


def arrow_files(directory: Path) -> list[Path]:
    """The data files of a save_to_disk directory, in the dataset's row order (``state.json``'s list)."""
    directory = Path(directory)
    if (directory / DATASET_DICT_FILE).is_file() and not (directory / DATASET_STATE_FILE).is_file():
        splits = sorted(child.name for child in directory.iterdir() if is_dataset_directory(child))
        raise UserError(
            f"{directory}: a DatasetDict (splits: {', '.join(splits) or 'none'}); give one split's directory, "
            f"e.g. {directory / (splits[0] if splits else 'train')}"
        )
    try:
        state = json.loads((directory / DATASET_STATE_FILE).read_text(encoding="utf-8"))
        names = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"{directory / DATASET_STATE_FILE}: not the state.json of Dataset.save_to_disk ({first_line(error)}); "
            "save the dataset again"
        ) from None
    files = [directory / name for name in names]
    for file in files:
        if not file.is_file():
            raise UserError(f"{file}: listed in {DATASET_STATE_FILE} but missing; save the dataset again")
    return files


def record_columns(path: Path) -> list[str]:
    """The column names of a parquet file or save_to_disk directory (reads only the schema)."""
    if not Path(path).exists():
        raise UserError(f"{path}: not found; check the path")
    pyarrow = _pyarrow(path)
    if record_format(path) == "parquet":
        import pyarrow.parquet as parquet

        try:
            return list(parquet.ParquetFile(str(path)).schema_arrow.names)
        except (pyarrow.ArrowException, OSError) as error:
            raise _unreadable(path, "parquet file", error) from None
    files = arrow_files(path)
    try:
        with pyarrow.OSFile(str(files[0])) as source:
            return list(pyarrow.ipc.open_stream(source).schema.names)
    except (pyarrow.ArrowException, OSError) as error:
        raise _unreadable(files[0], "Arrow stream file", error) from None


def _column_values(batch: Any, columns: Sequence[str]) -> list[list[Any]]:
    return [batch.column(batch.schema.get_field_index(name)).to_pylist() for name in columns]


def _parquet_batches(path: Path, columns: Sequence[str]) -> Iterator[list[list[Any]]]:
    pyarrow = _pyarrow(path)
    import pyarrow.parquet as parquet

    try:
        # pre_buffer=False: pyarrow would otherwise keep every row group it read, i.e. the whole file by the end.
        reader = parquet.ParquetFile(str(path), pre_buffer=False)
        for batch in reader.iter_batches(batch_size=BATCH_ROWS, columns=list(columns), use_threads=False):
            yield _column_values(batch, columns)
    except (pyarrow.ArrowException, OSError) as error:
        raise _unreadable(path, "parquet file", error) from None


def _arrow_batches(directory: Path, columns: Sequence[str]) -> Iterator[list[list[Any]]]:
    pyarrow = _pyarrow(directory)
    for file in arrow_files(directory):
        try:
            with pyarrow.OSFile(str(file)) as source:  # read, not mapped: a map's pages would add up in RSS
                for batch in pyarrow.ipc.open_stream(source):
                    for start in range(0, batch.num_rows, BATCH_ROWS):  # a writer's batch may be large
                        yield _column_values(batch.slice(start, BATCH_ROWS), columns)
        except (pyarrow.ArrowException, OSError) as error:
            raise _unreadable(file, "Arrow stream file", error) from None


def iter_record_rows(
    path: Path, columns: Sequence[str], advice: Sequence[str] = ("name it with --text_field",)
) -> Iterator[tuple[int, list[Any]]]:
    """(row number from 1, the row's values of ``columns``) for every row of a parquet file or save_to_disk
    directory; a missing column is a ``UserError`` ending with its ``advice`` (the flag that chose it)."""
    path = Path(path)
    names = record_columns(path)
    for column, what_to_do in zip(columns, advice):
        if column not in names:
            raise _missing_column(path, column, names, what_to_do)
    batches = _parquet_batches(path, columns) if record_format(path) == "parquet" else _arrow_batches(path, columns)
    row = 0
    for values in batches:
        for row_values in zip(*values):
            row += 1
            yield row, list(row_values)


def input_files(path: Path) -> list[Path]:
    """The files that hold an input's bytes: the file itself, or a save_to_disk directory's state and data."""
    path = Path(path)
    if not is_dataset_directory(path):
        return [path]
    return [path / DATASET_STATE_FILE, *arrow_files(path)]


def input_bytes(path: Path) -> int:
    """Size of an input in bytes (a save_to_disk directory: its state and data files)."""
    return sum(file.stat().st_size for file in input_files(path))


def input_fingerprint(path: Path) -> str:
    """BLAKE2b-128 of an input's bytes (a directory: its files' names and bytes in order), read in 1 MiB blocks:
    --resume compares it to refuse an input edited since the interrupted run."""
    digest = hashlib.blake2b(digest_size=16)
    several = is_dataset_directory(path)
    for file in input_files(path):
        if several:
            digest.update(file.name.encode("utf-8") + b"\0")
        with open(file, "rb") as handle:
            while block := handle.read(FINGERPRINT_BLOCK_BYTES):
                digest.update(block)
    return f"blake2b-128:{digest.hexdigest()}"
