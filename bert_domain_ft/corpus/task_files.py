"""Reading the task's own files: labelled sentences for the probe, unlabelled texts for TAPT and selection.

Both read CSV (``.csv``; ``.tsv`` is tab-separated) with a header row, JSON lines (``.jsonl``, ``.ndjson``,
``.json``: one object a line), parquet files and ``datasets`` save_to_disk directories (``records``: the row
number stands for the line), through one reader (``_iter_records``) that finds the named columns and reports
every problem as a one-line ``UserError`` naming ``file:line``; the two uses word some messages their own way
(``_PROBE_ROWS``, ``_TASK_ROWS``).

* The probe's labelled files (``read_probe_pair``): a file of another name is JSON lines when it starts with
  ``{``; an empty text or label, a label set that differs between train and test, a single class are errors.
* A task's unlabelled text (task-adaptive pretraining, TAPT, Gururangan et al. 2020; the queries of
  ``corpus.selection``): labels are never read, only ``text_column``. A file that is neither CSV nor JSON lines
  is plain UTF-8 text: the corpus format when it has a blank line (each document one text, its lines its
  sentences), otherwise one text per non-blank line. Whitespace is folded and control characters removed
  (``prepare.normalise_text``); empty texts are skipped and counted. ``write_task_corpus`` writes the texts as a
  corpus, one document per row. No torch here.

    train, test = read_probe_pair(Path("train.csv"), Path("test.csv"), text_column="text", label_column="label")
    stats = write_task_corpus(Path("train.csv"), "text", Path("task_corpus.txt"))
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bert_domain_ft.corpus.config import DEFAULT_PUNKT_SAMPLE_BYTES
from bert_domain_ft.corpus.prepare import normalise_text
from bert_domain_ft.corpus.reading import decoded_lines, require_regular_file
from bert_domain_ft.corpus.records import is_dataset_directory, iter_record_rows, record_format
from bert_domain_ft.corpus.sentences import SentenceSplitter, load_punkt_parameters, split_long_sentence, train_punkt
from bert_domain_ft.errors import UserError, at_location
from bert_domain_ft.files import atomic_output

CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".json")
MAX_LISTED_LABELS = 5  # labels named in an error message before "…"
# Python's csv module refuses cells over 131,072 characters by default; a probe text this long is still a row.
MAX_CELL_CHARACTERS = 16 * 1024 * 1024


@dataclass(frozen=True)
class _RowWording:
    """How a use of the shared reader words what it finds wrong (the probe's messages and the task's differ)."""

    not_found: str
    empty_file: str | None  # an empty file is refused up front with this; None: the header check refuses it
    bad_utf8: str  # "{byte}" is the first bad byte's 1-based column
    no_header: tuple[bool, str]  # (name the line?, message) when the first row names no column
    column_flags: tuple[str, ...]  # "no column 'x' (columns: …); " + this, per column read
    strict_csv: bool
    long_cell: str | None  # raise the csv module's cell limit to MAX_CELL_CHARACTERS and say this beyond it


_PROBE_ROWS = _RowWording(
    not_found="not found; give a CSV or JSON-lines file of labelled sentences",
    empty_file=None,
    bad_utf8="not valid UTF-8; save the file as UTF-8",
    no_header=(False, "is empty; it needs a header row and one row per sentence"),
    column_flags=("name the right one with --text_column", "name the right one with --label_column"),
    strict_csv=False,
    long_cell="a probe row takes one sentence or a short text, shorten it",
)
_TASK_ROWS = _RowWording(
    not_found="task data not found; give a CSV, TSV, JSON-lines or text file",
    empty_file="is empty; it needs one task text per row (or per line)",
    bad_utf8="byte {byte} of this line is not valid UTF-8; save the file as UTF-8",
    no_header=(True, "has no header row; the first row must name the columns"),
    column_flags=("name it with --task_text_column", "name it with --document_field"),
    strict_csv=True,
    long_cell=None,
)
# The flag naming the text column, by what the file is to the command (the message names the one it has).
TASK_TEXT_FLAG = "--task_text_column"  # pregenerate/simple --task_data
RECORDS_TEXT_FLAG = "--text_field"  # records given as the corpus
SELECT_TEXT_FLAG = "--text_column"  # select --task_data


def _decoded_lines(path: Path, wording: _RowWording) -> Iterator[tuple[int, str]]:
    """(line number, line with its line end) for every line; a line that is not UTF-8 is a ``UserError``."""
    require_regular_file(path)
    if not path.is_file():
        raise UserError(at_location(path, None, wording.not_found))
    if wording.empty_file is not None and path.stat().st_size == 0:
        raise UserError(at_location(path, None, wording.empty_file))
    yield from decoded_lines(path, wording.bad_utf8)


def _missing_column(path: Path, line: int, column: str, available: list[str], flag: str) -> UserError:
    shown = ", ".join(repr(name) for name in available) or "none"
    return UserError(at_location(path, line, f"no column '{column}' (columns: {shown}); {flag}"))


def _iter_records(
    path: Path, file_format: str, columns: tuple[str, ...], wording: _RowWording
) -> Iterator[tuple[int, list[Any]]]:
    """(line where the row starts, its values of ``columns``) for every non-blank row of a CSV/JSON-lines file."""
    if file_format == "json_lines":
        yield from _iter_json_records(path, columns, wording)
        return
    if file_format in ("parquet", "arrow"):  # the row number stands where a text file's line number would
        yield from iter_record_rows(path, columns, wording.column_flags)
        return
    previous_limit = csv.field_size_limit()
    if wording.long_cell is not None:
        csv.field_size_limit(max(previous_limit, MAX_CELL_CHARACTERS))
    try:
        yield from _iter_csv_records(path, columns, wording)
    finally:
        csv.field_size_limit(previous_limit)  # the limit is process-wide: leave it as it was


def _iter_csv_records(path: Path, columns: tuple[str, ...], wording: _RowWording) -> Iterator[tuple[int, list[Any]]]:
    lines = (line for _, line in _decoded_lines(path, wording))
    delimiter = CSV_DELIMITERS.get(path.suffix.lower(), ",")
    reader = csv.reader(lines, delimiter=delimiter, strict=wording.strict_csv)
    start = 1  # the line the row being read starts on (the reader counts finished lines)
    try:
        header = next(reader, [])
        if not any(name.strip() for name in header):
            names_line, problem = wording.no_header
            raise UserError(at_location(path, 1 if names_line else None, problem))
        for column, flag in zip(columns, wording.column_flags):
            if column not in header:
                raise _missing_column(path, 1, column, header, flag)
        indices = [header.index(column) for column in columns]
        start = reader.line_num + 1
        for row in reader:
            if any(value.strip() for value in row):  # else a blank line
                if max(indices) >= len(row):
                    short = columns[indices.index(max(indices))]
                    problem = f"has {len(row)} fields but '{short}' is field {max(indices) + 1}; fix the row"
                    raise UserError(at_location(path, start, problem))
                yield start, [row[index] for index in indices]
            start = reader.line_num + 1
    except csv.Error as error:
        if wording.long_cell is not None and "field larger than field limit" in str(error):
            problem = f"a cell holds more than {MAX_CELL_CHARACTERS:,} characters; {wording.long_cell}"
            raise UserError(at_location(path, start, problem)) from None
        raise UserError(at_location(path, reader.line_num, f"not valid CSV ({error}); fix the quoting")) from None


def _iter_json_records(path: Path, columns: tuple[str, ...], wording: _RowWording) -> Iterator[tuple[int, list[Any]]]:
    first = True
    for number, line in _decoded_lines(path, wording):
        if not line.strip():
            continue
        if first and line.lstrip().startswith("["):
            raise UserError(
                at_location(path, number, "holds a JSON array; write one JSON object per line (JSON lines)")
            )
        first = False
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(at_location(path, number, f"not valid JSON ({error.msg}); one object per line")) from None
        if not isinstance(record, dict):
            raise UserError(at_location(path, number, "not a JSON object; write one {...} object per line"))
        for column, flag in zip(columns, wording.column_flags):
            if column not in record:
                raise _missing_column(path, number, column, list(record), flag)
        yield number, [record[column] for column in columns]


@dataclass(frozen=True)
class LabelledSet:
    """Sentences and their class names, in file order; ``path`` for messages."""

    path: Path
    texts: tuple[str, ...]
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)


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


def _probe_file_format(path: Path) -> str:
    """``parquet``/``arrow`` (see ``records``), else ``json_lines`` or ``csv`` by the extension; another name is
    JSON lines when it starts with ``{`` or ``[``."""
    if record_format(path) is not None:
        return str(record_format(path))
    suffix = path.suffix.lower()
    if suffix in JSON_LINES_SUFFIXES:
        return "json_lines"
    if suffix in CSV_DELIMITERS:
        return "csv"
    lines = _decoded_lines(path, _PROBE_ROWS)
    first = next((line for _, line in lines if line.strip()), "")
    return "json_lines" if first.lstrip().startswith(("{", "[")) else "csv"


def read_labelled_file(path: Path, text_column: str = "text", label_column: str = "label") -> LabelledSet:
    """Every (text, label) row of a CSV or JSON-lines file; whitespace inside texts is folded to single spaces."""
    path = Path(path)
    if not (path.is_file() or is_dataset_directory(path)):
        raise UserError(
            at_location(path, None, "not found; give a CSV, JSON-lines or parquet file of labelled sentences")
        )
    columns = (text_column, label_column)
    records = _iter_records(path, _probe_file_format(path), columns, _PROBE_ROWS)
    rows = [_checked_row(path, line, text, label, columns) for line, (text, label) in records]
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


@dataclass(frozen=True)
class TaskText:
    """One text of the task. ``sentences`` is set when the file already gives them (corpus-format input)."""

    line_number: int  # 1-based line where the row (or document) starts, for messages
    text: str  # normalised: single spaces, no control characters, never empty
    sentences: tuple[str, ...] | None = None
    document: Any = None  # the row's value of the document column, when one is read


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
    """``csv``, ``json_lines``, ``parquet``, ``arrow`` (a save_to_disk directory) or ``plain``, from the file
    name's extension (see the module docstring)."""
    if record_format(path) is not None:
        return str(record_format(path))
    suffix = Path(path).suffix.lower()
    if suffix in CSV_DELIMITERS:
        return "csv"
    return "json_lines" if suffix in JSON_LINES_SUFFIXES else "plain"


def holds_records(path: Path) -> bool:
    """A file of rows with named columns (CSV/TSV, JSON lines, parquet, a save_to_disk directory), not text in
    the corpus format."""
    return task_file_format(path) != "plain"


def _not_text(path: Path, line: int, column: str, value: Any) -> UserError:
    return UserError(at_location(path, line, f"'{column}' is not text ({value!r:.40}); quote it as a string"))


def _file_has_blank_line(path: Path) -> bool:
    return any(not line.strip() for _, line in _decoded_lines(path, _TASK_ROWS))


def _iter_plain(path: Path) -> Iterator[TaskText]:
    """Plain text: documents of the corpus format when the file has a blank line, else one text per line."""
    documents = _file_has_blank_line(path)
    block: list[str] = []
    block_start = 0
    for number, line in _decoded_lines(path, _TASK_ROWS):
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


def iter_task_rows(
    path: Path, text_column: str = "text", document_column: str | None = None, text_flag: str = TASK_TEXT_FLAG
) -> Iterator[TaskText | None]:
    """Every row in file order: a ``TaskText``, or None for a row whose text is empty (or JSON null).

    Streams the file (one row, or one batch of parquet/Arrow rows, in memory). ``text_column`` is ignored for
    plain text; ``document_column`` (its value kept as ``TaskText.document``) needs a file of columns.
    ``text_flag``: the flag that names ``text_column`` in the command that reads the file (for messages).
    """
    path = Path(path)
    file_format = task_file_format(path)
    if file_format == "plain":
        if document_column is not None:
            raise UserError(at_location(path, None, "plain text has no columns: drop --document_field"))
        yield from _iter_plain(path)
        return
    columns = (text_column,) if document_column is None else (text_column, document_column)
    wording = replace(_TASK_ROWS, column_flags=(f"name it with {text_flag}", *_TASK_ROWS.column_flags[1:]))
    for number, values in _iter_records(path, file_format, columns, wording):
        value = values[0]
        if value is not None and not isinstance(value, str):
            raise _not_text(path, number, text_column, value)
        text = normalise_text(value or "")
        yield TaskText(number, text, document=values[1] if document_column else None) if text else None


def iter_task_texts(path: Path, text_column: str = "text", text_flag: str = TASK_TEXT_FLAG) -> Iterator[TaskText]:
    """The non-empty texts of a task file, in file order (see ``iter_task_rows``); none at all is a ``UserError``."""
    found = False
    for row in iter_task_rows(path, text_column, text_flag=text_flag):
        if row is not None:
            found = True
            yield row
    if not found:
        raise UserError(at_location(path, None, "holds no task text; every row's text is empty"))


def _sentence_splitter(
    path: Path, text_column: str, punkt_file: Path | None, text_flag: str
) -> tuple[SentenceSplitter, str]:
    """Punkt from ``punkt_file`` (e.g. the domain corpus's ``.punkt.json``), else trained on the task texts."""
    if punkt_file is not None:
        return SentenceSplitter(load_punkt_parameters(punkt_file)), f"Punkt loaded from {punkt_file}"
    sample: list[str] = []
    sample_bytes = 0
    for row in iter_task_texts(path, text_column, text_flag):
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
    document_column: str | None = None,
    text_flag: str = TASK_TEXT_FLAG,
) -> TaskCorpusStats:
    """Write the task's texts to ``output_path`` in the corpus format, atomically; return the counts.

    Each non-empty row becomes one document; with ``document_column``, consecutive rows with the same value
    there make one document together (rows that are sentences or paragraphs of one text). Its sentences are found
    by the project's Punkt splitter (the same as ``prepare``'s; it needs no download: trained, unsupervised, on the
    task texts themselves, or loaded from ``punkt_file``); corpus-format input keeps its own sentence lines.
    Sentences longer than ``max_sentence_chars`` are cut at a safe point. Two passes over the file (training, writing); labels are
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
        splitter, stats.sentence_splitter = _sentence_splitter(task_file, text_column, punkt_file, text_flag)
    else:
        stats.sentence_splitter = "the file's own lines (corpus format)"
    previous: list[Any] = []  # the document value of the last row written (none yet)
    with atomic_output(output_path) as handle:
        for row in iter_task_rows(task_file, text_column, document_column, text_flag):
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
            new_document = document_column is None or previous != [row.document]
            previous = [row.document]
            separator = "\n" if stats.documents and new_document else ""
            handle.write((separator + "\n".join(lines) + "\n").encode("utf-8"))
            stats.documents += new_document
            stats.sentences += len(lines)
            stats.characters += sum(len(line) for line in lines)
        if stats.documents == 0:  # raised inside: the temporary file is removed, an older output stays
            raise UserError(at_location(task_file, None, "holds no task text; every row's text is empty"))
    return stats
