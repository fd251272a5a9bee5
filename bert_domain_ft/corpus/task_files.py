"""Labelled sentences for the probe: reading CSV or JSON-lines files and checking a train/test pair fits together.

A file is CSV (``.csv``; ``.tsv`` is tab-separated) with a header row, or JSON lines (``.jsonl``, ``.ndjson``,
``.json``: one object a line). Other names are recognised by their first character (``{`` means JSON lines).
Every problem is a ``UserError`` naming the file and, where there is one, the line: a missing column, an empty
text or label, a label set that differs between train and test, a single class. No torch here.

    train, test = read_probe_pair(Path("train.csv"), Path("test.csv"), text_column="text", label_column="label")

A task's own unlabelled text: reading it from a labelled-data file or plain text, writing it as a corpus.

Task-adaptive pretraining (TAPT, Gururangan et al. 2020) continues pretraining on the texts of the task itself;
``corpus_selection`` uses the same texts as queries to pick the nearest domain documents (kNN-TAPT). Labels are
never read: only the text column is looked at, so a file without labels, or with broken ones, reads the same.

The format is decided by the file name's extension:

* ``.csv`` (comma) / ``.tsv`` (tab): a header row, then one row per text; the text is in ``text_column``.
* ``.jsonl`` / ``.ndjson`` / ``.json``: JSON lines, one object per line, the text under ``text_column``.
* anything else: plain UTF-8 text. If the file has a blank line it is read as the corpus format (one sentence per
  line, a blank line between documents: each document is one text, its lines its sentences); otherwise every
  non-blank line is one text.

Whitespace inside a text is folded and control characters removed (``preparation.normalise_text``); empty texts
are skipped and counted. Every problem is a one-line ``UserError`` naming ``file:line``. No torch here.

    stats = write_task_corpus(Path("train.csv"), "text", Path("task_corpus.txt"))
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bert_domain_ft.corpus.config import DEFAULT_PUNKT_SAMPLE_BYTES
from bert_domain_ft.corpus.prepare import normalise_text
from bert_domain_ft.corpus.sentences import SentenceSplitter, load_punkt_parameters, split_long_sentence, train_punkt
from bert_domain_ft.errors import UserError, at_location
from bert_domain_ft.files import atomic_output

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


CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".json")
_BYTE_ORDER_MARK = "\ufeff"


@dataclass(frozen=True)
class TaskText:
    """One text of the task. ``sentences`` is set when the file already gives them (corpus-format input)."""

    line_number: int  # 1-based line where the row (or document) starts, for messages
    text: str  # normalised: single spaces, no control characters, never empty
    sentences: tuple[str, ...] | None = None


@dataclass
class TaskCorpusStats:
    """What ``write_task_corpus`` read and wrote."""

    rows: int = 0  # rows (or plain-text texts) read, empty ones included
    empty_rows_skipped: int = 0
    documents: int = 0  # one per non-empty row
    sentences: int = 0
    characters: int = 0  # of the sentences written, line ends excluded
    long_sentences_split: int = 0
    sentence_splitter: str = ""  # how sentences were found

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def task_file_format(path: Path) -> str:
    """``csv``, ``json_lines`` or ``plain``, from the file name's extension (see the module docstring)."""
    suffix = Path(path).suffix.lower()
    if suffix in CSV_DELIMITERS:
        return "csv"
    return "json_lines" if suffix in JSON_LINES_SUFFIXES else "plain"


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line with its line end) for every line; a line that is not UTF-8 is a ``UserError``."""
    if not path.is_file():
        raise UserError(at_location(path, None, "task data not found; give a CSV, TSV, JSON-lines or text file"))
    if path.stat().st_size == 0:
        raise UserError(at_location(path, None, "is empty; it needs one task text per row (or per line)"))
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                problem = f"byte {error.start + 1} of this line is not valid UTF-8; save the file as UTF-8"
                raise UserError(at_location(path, number, problem)) from None
            yield number, line.removeprefix(_BYTE_ORDER_MARK) if number == 1 else line


def _not_text(path: Path, line: int, column: str, value: Any) -> UserError:
    return UserError(at_location(path, line, f"'{column}' is not text ({value!r:.40}); quote it as a string"))


def _missing_text_column(path: Path, line: int, column: str, available: list[str]) -> UserError:
    shown = ", ".join(repr(name) for name in available) or "none"
    return UserError(at_location(path, line, f"no column '{column}' (columns: {shown}); name it with --text_column"))


def _iter_text_csv(path: Path, text_column: str) -> Iterator[tuple[int, str | None]]:
    lines = _decoded_lines(path)
    reader = csv.reader((line for _, line in lines), delimiter=CSV_DELIMITERS[path.suffix.lower()], strict=True)
    try:
        header = next(reader, [])
        if not any(name.strip() for name in header):
            raise UserError(at_location(path, 1, "has no header row; the first row must name the columns"))
        if text_column not in header:
            raise _missing_text_column(path, 1, text_column, header)
        column = header.index(text_column)
        start = reader.line_num + 1
        for row in reader:
            if not any(value.strip() for value in row):
                start = reader.line_num + 1
                continue  # a blank line
            if column >= len(row):
                problem = f"has {len(row)} fields but '{text_column}' is field {column + 1}; fix the row"
                raise UserError(at_location(path, start, problem))
            yield start, row[column]
            start = reader.line_num + 1
    except csv.Error as error:
        raise UserError(at_location(path, reader.line_num, f"not valid CSV ({error}); fix the quoting")) from None


def _iter_text_json_lines(path: Path, text_column: str) -> Iterator[tuple[int, str | None]]:
    for number, line in _decoded_lines(path):
        if not line.strip():
            continue
        if number == 1 and line.lstrip().startswith("["):
            raise UserError(at_location(path, 1, "holds a JSON array; write one JSON object per line (JSON lines)"))
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(at_location(path, number, f"not valid JSON ({error.msg}); one object per line")) from None
        if not isinstance(record, dict):
            raise UserError(at_location(path, number, "not a JSON object; write one {...} object per line"))
        if text_column not in record:
            raise _missing_text_column(path, number, text_column, list(record))
        value = record[text_column]
        if value is not None and not isinstance(value, str):
            raise _not_text(path, number, text_column, value)
        yield number, value


def _file_has_blank_line(path: Path) -> bool:
    return any(not line.strip() for _, line in _decoded_lines(path))


def _iter_plain(path: Path) -> Iterator[TaskText]:
    """Plain text: documents of the corpus format when the file has a blank line, else one text per line."""
    documents = _file_has_blank_line(path)
    block: list[str] = []
    block_start = 0
    for number, line in _decoded_lines(path):
        sentence = normalise_text(line)
        if sentence and not documents:
            yield TaskText(number, sentence)
        elif sentence:
            block_start = block_start or number
            block.append(sentence)
        elif block:
            yield TaskText(block_start, " ".join(block), tuple(block))
            block, block_start = [], 0
    if block:
        yield TaskText(block_start, " ".join(block), tuple(block))


def iter_task_rows(path: Path, text_column: str = "text") -> Iterator[TaskText | None]:
    """Every row in file order: a ``TaskText``, or None for a row whose text is empty (or JSON null).

    Streams the file (one row in memory). ``text_column`` is ignored for plain text.
    """
    path = Path(path)
    file_format = task_file_format(path)
    if file_format == "plain":
        yield from _iter_plain(path)
        return
    rows = _iter_text_csv(path, text_column) if file_format == "csv" else _iter_text_json_lines(path, text_column)
    for number, value in rows:
        text = normalise_text(value or "")
        yield TaskText(number, text) if text else None


def iter_task_texts(path: Path, text_column: str = "text") -> Iterator[TaskText]:
    """The non-empty texts of a task file, in file order (see ``iter_task_rows``); none at all is a ``UserError``."""
    found = False
    for row in iter_task_rows(path, text_column):
        if row is not None:
            found = True
            yield row
    if not found:
        raise UserError(at_location(path, None, "holds no task text; every row's text is empty"))


def _sentence_splitter(path: Path, text_column: str, punkt_file: Path | None) -> tuple[SentenceSplitter, str]:
    """Punkt from ``punkt_file`` (e.g. the domain corpus's ``.punkt.json``), else trained on the task texts."""
    if punkt_file is not None:
        return SentenceSplitter(load_punkt_parameters(punkt_file)), f"Punkt loaded from {punkt_file}"
    sample: list[str] = []
    sample_bytes = 0
    for row in iter_task_texts(path, text_column):
        if row.sentences is None:
            sample.append(row.text)
            sample_bytes += len(row.text) + 2
        if sample_bytes >= DEFAULT_PUNKT_SAMPLE_BYTES:
            break
    return SentenceSplitter(train_punkt(sample)), f"Punkt trained on {len(sample)} task texts"


def write_task_corpus(
    task_file: Path,
    text_column: str,
    output_path: Path,
    punkt_file: Path | None = None,
    max_sentence_chars: int = 1000,
) -> TaskCorpusStats:
    """Write the task's texts to ``output_path`` in the corpus format, atomically; return the counts.

    Each non-empty row becomes one document. Its sentences are found by the project's Punkt splitter (the same as
    ``prepare``'s; it needs no download: trained, unsupervised, on the task texts themselves, or loaded from
    ``punkt_file``); corpus-format input keeps its own sentence lines. Sentences longer than
    ``max_sentence_chars`` are cut at a safe point. Two passes over the file (training, writing); labels are
    never read; duplicate texts are kept (they are the task's distribution).

    A row with one sentence is still a document. NSP pregeneration (``instances``) always pairs a one-sentence
    chunk with a random sentence of another document ("not next"), so such documents give MLM text and negative
    NSP examples only; ``simple`` never starts a pair at them but uses them as random second segments.
    """
    task_file, output_path = Path(task_file), Path(output_path)
    stats = TaskCorpusStats()
    needs_splitting = task_file_format(task_file) != "plain" or not _file_has_blank_line(task_file)
    splitter = None
    if needs_splitting:
        splitter, stats.sentence_splitter = _sentence_splitter(task_file, text_column, punkt_file)
    else:
        stats.sentence_splitter = "the file's own lines (corpus format)"
    with atomic_output(output_path) as handle:
        for row in iter_task_rows(task_file, text_column):
            stats.rows += 1
            if row is None:
                stats.empty_rows_skipped += 1
                continue
            sentences = row.sentences or (splitter.split(row.text) if splitter else [row.text]) or [row.text]
            lines: list[str] = []
            for sentence in sentences:
                pieces = split_long_sentence(sentence, max_sentence_chars)
                stats.long_sentences_split += len(pieces) > 1
                lines.extend(pieces)
            handle.write((("\n" if stats.documents else "") + "\n".join(lines) + "\n").encode("utf-8"))
            stats.documents += 1
            stats.sentences += len(lines)
            stats.characters += sum(len(line) for line in lines)
        if stats.documents == 0:  # raised inside: the temporary file is removed, an older output stays
            raise UserError(at_location(task_file, None, "holds no task text; every row's text is empty"))
    return stats
