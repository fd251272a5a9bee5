"""Reading text, streaming: the corpus format, and the raw inputs ``prepare`` turns into it.

The corpus format is UTF-8 text, one sentence per line, documents separated by one or more blank lines (a line of
only whitespace counts as blank); ``\\n`` or ``\\r\\n`` line ends; an optional UTF-8 byte-order mark is ignored.
``iter_corpus_lines`` and ``iter_documents`` read it holding one line in memory.

``prepare``'s raw inputs are found by ``discover_input_files`` and read by ``iter_text_blocks`` as blocks of
paragraph text: a plain-text file is one document (or, with ``paragraph_documents``, each blank-line-separated
paragraph is one); a JSON-lines file holds one document per line, its text under ``text_field``; a parquet file
or a ``datasets`` save_to_disk directory (``records``) one document per row, its text under ``text_field``
("text" unless given). Memory holds one
paragraph at most — a paragraph longer than ``PARAGRAPH_BLOCK_CHARACTERS`` (a file without blank lines) arrives in
several blocks marked ``continues_paragraph``.

    for document in iter_documents(Path("corpus.txt")):
        print(len(document), "sentences, first on line", document[0].line_number)
    for block in iter_text_blocks(discover_input_files([Path("raw/")], "*.txt", []), InputOptions()):
        print(block.starts_document, block.text[:40])
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bert_domain_ft.corpus.records import input_bytes, is_dataset_directory, iter_record_rows, record_format
from bert_domain_ft.corpus.sentences import split_long_sentence
from bert_domain_ft.errors import UserError, at_location

_BYTE_ORDER_MARK = b"\xef\xbb\xbf"
# Longest line read (bytes, its line end included): a file without line breaks (or /dev/zero) is refused after
# this much, never read whole into memory. A JSON-lines record of a whole book fits; Python's csv cells have
# the same bound (``task_files.MAX_CELL_CHARACTERS``).
MAX_LINE_BYTES = 16 << 20


def bounded_lines(handle: BinaryIO, path: Path, advice: str = "one sentence or paragraph a line") -> Iterator[bytes]:
    """The lines of a binary ``handle`` (line ends kept), as iterating it would give them; a line longer than
    ``MAX_LINE_BYTES`` is a ``UserError`` naming ``path`` and the line (``advice``: what a line should hold)."""
    number = 0
    while raw := handle.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(raw) > MAX_LINE_BYTES:
            problem = f"line is longer than {MAX_LINE_BYTES / 2**20:g} MB (a file without line breaks?); write {advice}"
            raise UserError(at_location(path, number, problem))
        yield raw


def decoded_lines(
    path: Path, bad_utf8: str = "byte {byte} of this line is not valid UTF-8; save the file as UTF-8",
    advice: str = "one row a line",
) -> Iterator[tuple[int, str]]:  # fmt: skip
    """(1-based line number, line with its line end, a leading byte-order mark dropped) of a UTF-8 file; a line
    that is not UTF-8 is a ``UserError`` (``bad_utf8``, its ``{byte}`` the first bad byte's column)."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(bounded_lines(handle, path, advice), start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise UserError(at_location(path, number, bad_utf8.format(byte=error.start + 1))) from None
            yield number, line.removeprefix("\ufeff") if number == 1 else line


def require_regular_file(path: Path) -> None:
    """A ``UserError`` when ``path`` is a pipe (``<(cat corpus.txt)``, ``/dev/fd/N``) or a device: it can be read
    only once, and a corpus or task file is read several times (counted, then read)."""
    if path.exists() and not path.is_file() and not path.is_dir() and not is_dataset_directory(path):
        raise UserError(
            at_location(path, None, "is a pipe or a device, not a file, and it is read more than once; save it to "
                        "a file first (e.g. `cat … > corpus.txt`)")
        )  # fmt: skip


@dataclass(frozen=True)
class CorpusLine:
    """One sentence of the corpus. ``starts_document`` is true for the first sentence of every document."""

    line_number: int
    text: str
    starts_document: bool
    end_byte: int  # file offset just after this line, for progress bars in bytes


def open_corpus_checked(path: Path, read_once: bool = False) -> None:
    """Raise a ``UserError`` when ``path`` is missing, a directory, or empty; or a pipe, unless the caller reads
    it only once (``read_once``: a pipe's emptiness shows only when it is read)."""
    path = Path(path)
    if not path.exists():
        raise UserError(at_location(path, None, "corpus file not found; check the --train_corpus path"))
    if read_once and not path.is_file() and not path.is_dir():
        return
    require_regular_file(path)
    if path.is_dir():
        raise UserError(at_location(path, None, "is a directory; give the corpus file (one sentence per line)"))
    if path.stat().st_size == 0:
        raise UserError(
            at_location(path, None, "corpus is empty; it needs one sentence per line and blank lines between documents")
        )


def iter_corpus_lines(path: Path, read_once: bool = False) -> Iterator[CorpusLine]:
    """Yield every non-blank line of the corpus with its 1-based line number and document flag.

    Raises ``UserError`` naming the line when a line is not valid UTF-8. ``read_once``: the caller reads the file
    only this once, so a pipe will do (see ``open_corpus_checked``).
    """
    path = Path(path)
    open_corpus_checked(path, read_once)
    next_starts_document = True
    end_byte = 0
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(bounded_lines(handle, path), start=1):
            end_byte += len(raw)
            if line_number == 1 and raw.startswith(_BYTE_ORDER_MARK):
                raw = raw[len(_BYTE_ORDER_MARK) :]
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError as error:
                problem = (
                    f"byte {error.start + 1} of this line is not valid UTF-8; re-encode the file as UTF-8 "
                    "(e.g. `iconv -f latin1 -t utf-8`) or run `bert-domain-ft prepare` on the raw text"
                )
                raise UserError(at_location(path, line_number, problem)) from None
            if not text:
                next_starts_document = True
                continue
            yield CorpusLine(line_number, text, next_starts_document, end_byte)
            next_starts_document = False


def iter_documents(path: Path) -> Iterator[list[CorpusLine]]:
    """Yield documents as lists of their sentences (streaming: one document in memory at a time)."""
    document: list[CorpusLine] = []
    for line in iter_corpus_lines(path):
        if line.starts_document and document:
            yield document
            document = []
        document.append(line)
    if document:
        yield document


def require_two_documents(path: Path, num_documents: int) -> None:
    """Next-sentence prediction needs a second document to draw random sentences from."""
    if num_documents < 2:
        found = "no document" if num_documents == 0 else "only one document"
        raise UserError(
            at_location(
                path,
                None,
                f"{found} with text; next-sentence prediction needs at least two: separate documents with a blank line",
            )
        )


def sample_lines(path: Path, max_lines: int = 1000, max_characters: int = 10_000) -> list[str]:
    """The first ``max_lines`` non-blank lines of ``path`` (each cut to ``max_characters``), to judge a tokenizer
    by. Lines that are not UTF-8 are skipped here; reading the corpus reports them."""
    sample: list[str] = []
    with open(path, "rb") as handle:
        for raw in bounded_lines(handle, path):
            try:
                text = raw.decode("utf-8").lstrip("\ufeff").strip()
            except UnicodeDecodeError:
                continue
            if text:
                sample.append(text[:max_characters])
                if len(sample) >= max_lines:
                    break
    return sample


FINGERPRINT_BLOCK_BYTES = 1 << 20


def corpus_fingerprint(path: Path) -> str:
    """A hash of the file's bytes (BLAKE2b, 128 bits, read in 1 MiB blocks): --resume compares it to refuse a corpus
    edited since the interrupted run, even when its size did not change."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while block := handle.read(FINGERPRINT_BLOCK_BYTES):
            digest.update(block)
    return f"blake2b-128:{digest.hexdigest()}"


# Longest run of text kept before a paragraph is handed on in pieces (characters): bounds memory per paragraph.
PARAGRAPH_BLOCK_CHARACTERS = 1_000_000
# Progress is reported in steps of this many bytes, not per line (tqdm updates are not free).
PROGRESS_STEP_BYTES = 1 << 20
_BLANK_LINES = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class TextBlock:
    """A paragraph of raw text (lines joined by newlines), or a piece of one."""

    text: str
    starts_document: bool
    continues_paragraph: bool = False  # the paragraph goes on in the next block (cut to bound memory)


@dataclass(frozen=True)
class InputOptions:
    text_field: str | None = None  # read every file as JSON lines, the text under this field
    paragraph_documents: bool = False  # each paragraph is a document (else each file / JSON record is)
    encoding: str = "utf-8"  # an ASCII-compatible encoding (lines are split on the byte 0x0A)


def discover_input_files(inputs: Sequence[Path], glob: str, exclude: Sequence[Path]) -> list[Path]:
    """Files named in ``inputs``, directories expanded recursively with ``glob`` (sorted), ``exclude`` left out."""
    excluded = {Path(path).resolve() for path in exclude}
    files: list[Path] = []
    for given in inputs:
        path = Path(given)
        if not path.exists():
            raise UserError(at_location(path, None, "input not found; give text files or directories"))
        if is_dataset_directory(path):  # a save_to_disk directory is one input, not a folder of files
            files.append(path)
        elif path.is_dir():
            found = sorted(candidate for candidate in path.rglob(glob) if candidate.is_file())
            found = [candidate for candidate in found if candidate.resolve() not in excluded]
            if not found:
                raise UserError(at_location(path, None, f"no file matching --glob {glob!r} in this directory"))
            files.extend(found)
        elif path.resolve() in excluded:
            raise UserError(at_location(path, None, "is also the output; write the corpus to another file"))
        else:
            files.append(path)
    return files


def _read_lines(path: Path, encoding: str, on_bytes: Callable[[int], None]) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line without its line end), reporting bytes read in coarse steps."""
    pending_bytes = 0
    try:
        with open(path, "rb") as handle:  # raw text: a paragraph a line at most (longer lines are cut below)
            for line_number, raw in enumerate(bounded_lines(handle, path, "a paragraph a line at most"), start=1):
                pending_bytes += len(raw)
                if pending_bytes >= PROGRESS_STEP_BYTES:
                    on_bytes(pending_bytes)
                    pending_bytes = 0
                try:
                    text = raw.decode(encoding)
                except UnicodeDecodeError as error:
                    problem = (
                        f"byte {error.start + 1} of this line is not valid {encoding}; pass the file's real encoding "
                        "with --encoding (e.g. --encoding latin-1) or re-encode it (iconv -t utf-8)"
                    )
                    raise UserError(at_location(path, line_number, problem)) from None
                yield line_number, text.rstrip("\r\n")
    except OSError as error:  # the consumer's own errors never arrive here: only reading this file can raise
        raise UserError(at_location(path, None, f"cannot read ({error.strerror}); check the file")) from None
    on_bytes(pending_bytes)


def _iter_plain_file(path: Path, options: InputOptions, on_bytes: Callable[[int], None]) -> Iterator[TextBlock]:
    lines: list[str] = []
    characters = 0
    document_started = False
    paragraph_cut = False  # the last block was a piece of a paragraph that is still going on

    def block(continues: bool) -> TextBlock:
        nonlocal lines, characters, document_started, paragraph_cut
        starts = (not document_started) or (options.paragraph_documents and not paragraph_cut)
        result = TextBlock("\n".join(lines), starts_document=starts, continues_paragraph=continues)
        document_started, paragraph_cut = True, continues
        lines, characters = [], 0
        return result

    for _, line in _read_lines(path, options.encoding, on_bytes):
        if not line.strip():
            if lines or paragraph_cut:  # an empty closing block ends a paragraph that was cut just before
                yield block(continues=False)
            continue
        for piece in _within_a_block(line):
            lines.append(piece)
            characters += len(piece) + 1
            if characters >= PARAGRAPH_BLOCK_CHARACTERS:
                yield block(continues=True)
    if lines or paragraph_cut:
        yield block(continues=False)
    if not document_started and not options.paragraph_documents:
        yield TextBlock("", starts_document=True)  # an empty file is an empty document: counted, not hidden


def _within_a_block(text: str) -> list[str]:
    """``text`` in pieces of at most ``PARAGRAPH_BLOCK_CHARACTERS``, cut at spaces where it can: one line (or a
    record's paragraph) of megabytes arrives in several blocks, as a long paragraph does."""
    return split_long_sentence(text, PARAGRAPH_BLOCK_CHARACTERS) if len(text) > PARAGRAPH_BLOCK_CHARACTERS else [text]


def _paragraph_blocks(paragraphs: list[str], paragraph_documents: bool) -> Iterator[TextBlock]:
    """The blocks of one record's paragraphs: the first starts the document (each one, with
    ``paragraph_documents``); a paragraph longer than a block continues in the next."""
    for index, paragraph in enumerate(paragraphs):
        pieces = _within_a_block(paragraph)
        for number, piece in enumerate(pieces):
            starts = number == 0 and (index == 0 or paragraph_documents)
            yield TextBlock(piece, starts_document=starts, continues_paragraph=number < len(pieces) - 1)


def _record_text(path: Path, line_number: int, line: str, field: str) -> str:
    def invalid(problem: str) -> UserError:
        return UserError(at_location(path, line_number, problem))

    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise invalid(f"not valid JSON ({error.msg}); every line must be one JSON object") from None
    if not isinstance(record, dict):
        raise invalid(f"a JSON {type(record).__name__}, not an object with a {field!r} field")
    if field not in record:
        raise invalid(f"no {field!r} field; fields here: {', '.join(sorted(record)) or 'none'} (check --text_field)")
    text = record[field]
    if not isinstance(text, str):
        raise invalid(f"field {field!r} holds a JSON {type(text).__name__}, not a string of text")
    return text


def _iter_json_lines_file(path: Path, options: InputOptions, on_bytes: Callable[[int], None]) -> Iterator[TextBlock]:
    assert options.text_field is not None
    for line_number, line in _read_lines(path, options.encoding, on_bytes):
        if not line.strip():
            continue
        text = _record_text(path, line_number, line, options.text_field)
        paragraphs = [paragraph for paragraph in _BLANK_LINES.split(text) if paragraph.strip()]
        if not paragraphs and not options.paragraph_documents:
            yield TextBlock("", starts_document=True)  # a record without text is an empty document
        yield from _paragraph_blocks(paragraphs, options.paragraph_documents)


def _iter_record_file(path: Path, options: InputOptions, on_bytes: Callable[[int], None]) -> Iterator[TextBlock]:
    """A parquet file or save_to_disk directory: one document per row, its text under ``text_field`` ("text"
    unless given), streamed a batch of rows at a time."""
    field = options.text_field or "text"
    for row, (text,) in iter_record_rows(path, (field,), (f"name it with --text_field (now {field!r})",)):
        if text is not None and not isinstance(text, str):
            raise UserError(f"{path}: row {row}: column {field!r} holds {type(text).__name__}, not text")
        paragraphs = [paragraph for paragraph in _BLANK_LINES.split(text or "") if paragraph.strip()]
        if not paragraphs and not options.paragraph_documents:
            yield TextBlock("", starts_document=True)  # a row without text is an empty document: counted
        yield from _paragraph_blocks(paragraphs, options.paragraph_documents)
    on_bytes(input_bytes(path))


def iter_text_blocks(
    files: Sequence[Path], options: InputOptions, on_bytes: Callable[[int], None] = lambda _: None
) -> Iterator[TextBlock]:
    """Every paragraph of every file, in order, flagged where a new document starts."""
    for path in files:
        if record_format(path) is not None:
            yield from _iter_record_file(path, options, on_bytes)
        elif options.text_field is None:
            yield from _iter_plain_file(path, options, on_bytes)
        else:
            yield from _iter_json_lines_file(path, options, on_bytes)
