"""Reading the corpus format, streaming.

The corpus format: UTF-8 text, one sentence per line, documents separated by one or more blank lines (a line of
only whitespace counts as blank); ``\\n`` or ``\\r\\n`` line ends; an optional UTF-8 byte-order mark is ignored.
Nothing here holds more than one line in memory.

    for document in iter_documents(Path("corpus.txt")):
        print(len(document), "sentences, first on line", document[0].line_number)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError, at_location

_BYTE_ORDER_MARK = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class CorpusLine:
    """One sentence of the corpus. ``starts_document`` is true for the first sentence of every document."""

    line_number: int
    text: str
    starts_document: bool
    end_byte: int  # file offset just after this line, for progress bars in bytes


def open_corpus_checked(path: Path) -> None:
    """Raise a ``UserError`` when ``path`` is missing, a directory, or empty."""
    path = Path(path)
    if not path.exists():
        raise UserError(at_location(path, None, "corpus file not found; check the --train_corpus path"))
    if path.is_dir():
        raise UserError(at_location(path, None, "is a directory; give the corpus file (one sentence per line)"))
    if path.stat().st_size == 0:
        raise UserError(
            at_location(path, None, "corpus is empty; it needs one sentence per line and blank lines between documents")
        )


def iter_corpus_lines(path: Path) -> Iterator[CorpusLine]:
    """Yield every non-blank line of the corpus with its 1-based line number and document flag.

    Raises ``UserError`` naming the line when a line is not valid UTF-8.
    """
    path = Path(path)
    open_corpus_checked(path)
    next_starts_document = True
    end_byte = 0
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
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
        for raw in handle:
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
