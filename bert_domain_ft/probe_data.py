"""Labelled sentences for the probe: reading CSV or JSON-lines files and checking a train/test pair fits together.

A file is CSV (``.csv``; ``.tsv`` is tab-separated) with a header row, or JSON lines (``.jsonl``, ``.ndjson``,
``.json``: one object a line). Other names are recognised by their first character (``{`` means JSON lines).
Every problem is a ``UserError`` naming the file and, where there is one, the line: a missing column, an empty
text or label, a label set that differs between train and test, a single class. No torch here.

    train, test = read_probe_pair(Path("train.csv"), Path("test.csv"), text_column="text", label_column="label")
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError, at_location

JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".json")
CSV_SUFFIXES = (".csv", ".tsv")
MAX_LISTED_LABELS = 5  # labels named in an error message before "…"
# Python's csv module refuses cells over 131,072 characters by default; a probe text this long is still a row.
MAX_CELL_CHARACTERS = 16 * 1024 * 1024


@dataclass(frozen=True)
class LabelledSet:
    """Sentences and their class names, in file order; ``path`` for messages."""

    path: Path
    texts: tuple[str, ...]
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def class_counts(self) -> Counter[str]:
        return Counter(self.labels)


def _label_text(value: Any) -> str:
    # JSON labels may be numbers or booleans; the class *name* is what identifies a class in both files.
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _checked_row(path: Path, line: int, text: Any, label: Any, columns: tuple[str, str]) -> tuple[str, str]:
    text_column, label_column = columns
    if not isinstance(text, str):
        raise UserError(at_location(path, line, f"'{text_column}' is not text ({text!r}); quote it as a string"))
    if not text.strip():
        raise UserError(at_location(path, line, f"empty '{text_column}'; remove the row or give it a sentence"))
    if label is None or isinstance(label, (list, dict)) or not _label_text(label):
        raise UserError(
            at_location(path, line, f"empty or invalid '{label_column}' ({label!r}); every row needs one class name")
        )
    return " ".join(text.split()), _label_text(label)


def _missing_column(path: Path, line: int, column: str, available: list[str], flag: str) -> UserError:
    shown = ", ".join(repr(name) for name in available) or "none"
    return UserError(
        at_location(path, line, f"no column '{column}' (columns: {shown}); name the right one with {flag}")
    )


def _iter_csv(path: Path, text: str, columns: tuple[str, str]) -> Iterator[tuple[str, str]]:
    previous_limit = csv.field_size_limit(max(csv.field_size_limit(), MAX_CELL_CHARACTERS))
    try:
        yield from _iter_csv_rows(path, text, columns)
    finally:
        csv.field_size_limit(previous_limit)  # the limit is process-wide: leave it as it was


def _iter_csv_rows(path: Path, text: str, columns: tuple[str, str]) -> Iterator[tuple[str, str]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [name for name in (reader.fieldnames or []) if name is not None]
    if not header:
        raise UserError(at_location(path, None, "is empty; it needs a header row and one row per sentence"))
    for column, flag in zip(columns, ("--text_column", "--label_column")):
        if column not in header:
            raise _missing_column(path, 1, column, header, flag)
    next_record = reader.line_num + 1  # the line the record being read starts on (the reader counts finished lines)
    try:
        for row in reader:
            line, next_record = reader.line_num, reader.line_num + 1
            if not any((value or "").strip() for value in row.values() if isinstance(value, str)):
                continue  # a blank line
            yield _checked_row(path, line, row[columns[0]], row[columns[1]], columns)
    except csv.Error as error:
        if "field larger than field limit" in str(error):
            raise UserError(
                at_location(path, next_record, f"a cell holds more than {MAX_CELL_CHARACTERS:,} characters; "
                            "a probe row takes one sentence or a short text, shorten it")
            ) from None  # fmt: skip
        raise UserError(at_location(path, reader.line_num, f"not valid CSV ({error}); fix the quoting")) from None


def _iter_json_lines(path: Path, text: str, columns: tuple[str, str]) -> Iterator[tuple[str, str]]:
    if text.lstrip().startswith("["):
        raise UserError(at_location(path, 1, "holds a JSON array; write one JSON object per line (JSON lines)"))
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(at_location(path, number, f"not valid JSON ({error.msg}); one object per line")) from None
        if not isinstance(record, dict):
            raise UserError(at_location(path, number, "not a JSON object; write one {...} object per line"))
        for column, flag in zip(columns, ("--text_column", "--label_column")):
            if column not in record:
                raise _missing_column(path, number, column, list(record), flag)
        yield _checked_row(path, number, record[columns[0]], record[columns[1]], columns)


def _is_json_lines(path: Path, text: str) -> bool:
    suffix = path.suffix.lower()
    if suffix in JSON_LINES_SUFFIXES:
        return True
    if suffix in CSV_SUFFIXES:
        return False
    return text.lstrip().startswith(("{", "["))


def read_labelled_file(path: Path, text_column: str = "text", label_column: str = "label") -> LabelledSet:
    """Every (text, label) row of a CSV or JSON-lines file; whitespace inside texts is folded to single spaces."""
    path = Path(path)
    if not path.is_file():
        raise UserError(at_location(path, None, "not found; give a CSV or JSON-lines file of labelled sentences"))
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets often write a byte-order mark
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise UserError(at_location(path, line, "not valid UTF-8; save the file as UTF-8")) from None
    columns = (text_column, label_column)
    rows = list(_iter_json_lines(path, text, columns) if _is_json_lines(path, text) else _iter_csv(path, text, columns))
    if not rows:
        raise UserError(at_location(path, None, "holds no labelled rows; add one row per sentence"))
    texts, labels = zip(*rows)
    return LabelledSet(path=path, texts=tuple(texts), labels=tuple(labels))


def _listed(labels: set[str]) -> str:
    names = sorted(labels)
    shown = ", ".join(repr(name) for name in names[:MAX_LISTED_LABELS])
    return shown + (", …" if len(names) > MAX_LISTED_LABELS else "")


def class_names(train: LabelledSet, test: LabelledSet) -> list[str]:
    """The classes (sorted) after checking that both sets have examples of exactly the same ones."""
    train_classes, test_classes = set(train.labels), set(test.labels)
    only_train, only_test = train_classes - test_classes, test_classes - train_classes
    if only_test:
        raise UserError(
            f"{test.path}: label set mismatch, classes {_listed(only_test)} have no examples in {train.path}; "
            "every test class needs training examples"
        )
    if only_train:
        raise UserError(
            f"{test.path}: label set mismatch, classes {_listed(only_train)} of {train.path} are empty here; "
            "give every class test examples (or remove it from the training file)"
        )
    if len(train_classes) < 2:
        raise UserError(f"{train.path}: only one class ({_listed(train_classes)}); a classifier needs at least two")
    return sorted(train_classes)


def read_probe_pair(
    train_path: Path, test_path: Path, text_column: str = "text", label_column: str = "label"
) -> tuple[LabelledSet, LabelledSet]:
    """Both files read and checked against each other (see ``class_names``)."""
    train = read_labelled_file(train_path, text_column, label_column)
    test = read_labelled_file(test_path, text_column, label_column)
    class_names(train, test)
    return train, test
