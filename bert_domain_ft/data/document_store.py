"""The tokenized corpus: one flat token array plus sentence and document offsets.

Layout (all int64 offsets, half-open ranges):
    tokens            (num_tokens,)        uint16 when every id fits, else int32
    sentence_offsets  (num_sentences + 1,) sentence s is tokens[sentence_offsets[s]:sentence_offsets[s + 1]]
    document_offsets  (num_documents + 1,) document d is sentences document_offsets[d] .. document_offsets[d + 1] - 1
The sentences of a document are contiguous in ``tokens``, so any run of whole sentences is one slice, and
``concatenated_ranges`` turns many such slices into one gather index.

In memory by default; given a directory (``--reduce_memory``) the three arrays are ``.npy`` files there, written
streaming and opened as read-only memmaps, so peak RAM does not grow with the corpus. Sentences that tokenize to
nothing are dropped (and counted), and so are documents left with no sentence. Given ``max_sentence_tokens``
(pregeneration passes what fits one NSP instance), a longer line is cut into pieces of at most that many tokens,
at word starts where it can, each stored as a sentence of its document: nothing of it is cut away unseen. Such
lines are counted per corpus (``LongLines``) for the log and the manifest.

    store = build_document_store(Path("corpus.txt"), tokenizer, facts, directory=None)
    document_tokens = store.tokens[store.sentence_offsets[store.document_offsets[3]] : ...]
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from bert_domain_ft.corpus.reading import iter_corpus_lines, require_two_documents
from bert_domain_ft.files import NpyAppender, fresh_directory, write_json_atomic
from bert_domain_ft.model.tokenizer import TokenizerFacts, continuation_table, encode_sentences


def concatenated_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])`` without a Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    run_starts = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - run_starts, lengths) + np.arange(total)


SENTENCES_PER_BATCH = 4096
STORE_DESCRIPTION = "store.json"
LONG_LINES_LISTED = 5  # line numbers kept per corpus for the log and the manifest


@dataclass(frozen=True)
class LongLines:
    """Lines of one corpus longer than ``max_sentence_tokens``, each cut into pieces that are stored as sentences."""

    lines: int = 0
    tokens: int = 0  # tokens of those lines, all kept
    pieces: int = 0
    first_line_numbers: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "tokens": self.tokens,
            "pieces": self.pieces,
            "first_line_numbers": list(self.first_line_numbers),
        }


def cut_points(ids: np.ndarray, max_tokens: int, continues_word: np.ndarray) -> list[int]:
    """Offsets ``[0, …, len(ids)]`` cutting ``ids`` into pieces of at most ``max_tokens``; a cut moves back (by at
    most half a piece) to the start of a word, so a word's pieces stay together where possible."""
    cuts = [0]
    while len(ids) - cuts[-1] > max_tokens:
        start = cuts[-1]
        end = start + max_tokens
        while end > start + max_tokens // 2 and continues_word[ids[end]]:
            end -= 1
        cuts.append(end if not continues_word[ids[end]] else start + max_tokens)
    cuts.append(len(ids))
    return cuts


@dataclass(frozen=True)
class DocumentStore:
    tokens: np.ndarray
    sentence_offsets: np.ndarray
    document_offsets: np.ndarray
    dropped_empty_sentences: int = 0
    dropped_empty_documents: int = 0
    tokens_file: Path | None = None  # on-disk stores: read token runs with pread, not through the memmap
    corpus_document_offsets: np.ndarray | None = None  # (num_corpora + 1,): corpus c is documents [c] .. [c + 1] - 1
    long_lines: tuple[LongLines, ...] = ()  # per corpus, when built with max_sentence_tokens

    def read_ranges(self, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The tokens of the runs ``[starts[i], starts[i] + lengths[i])``, concatenated.

        On disk, each run is read with ``os.pread`` into private memory: touching a memmap at scattered places
        lets the kernel map large chunks around every fault, and resident memory would grow to the whole file.
        """
        if self.tokens_file is None:
            return self.tokens[concatenated_ranges(starts, lengths)]
        output = np.empty(int(np.sum(lengths)), dtype=self.tokens.dtype)
        itemsize = output.itemsize
        view = memoryview(output).cast("B")
        header = int(self.tokens.offset)  # type: ignore[attr-defined]
        position = 0
        with open(self.tokens_file, "rb", buffering=0) as handle:
            descriptor = handle.fileno()
            for start, length in zip(starts.tolist(), lengths.tolist()):
                size = length * itemsize
                view[position : position + size] = os.pread(descriptor, size, header + start * itemsize)
                position += size
        return output

    @property
    def num_documents(self) -> int:
        return len(self.document_offsets) - 1

    @property
    def num_sentences(self) -> int:
        return len(self.sentence_offsets) - 1

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    def sentence_lengths(self) -> np.ndarray:
        return np.diff(self.sentence_offsets)

    def document_tokens(self, document: int) -> np.ndarray:
        first_sentence, end_sentence = self.document_offsets[document], self.document_offsets[document + 1]
        return self.tokens[self.sentence_offsets[first_sentence] : self.sentence_offsets[end_sentence]]

    def document_token_counts(self) -> np.ndarray:
        return np.diff(self.sentence_offsets[self.document_offsets])


class _OffsetsBuilder:
    """Collects the three arrays either in RAM (lists of blocks) or in streaming ``.npy`` files."""

    def __init__(self, token_dtype: np.dtype, directory: Path | None):
        self.directory = directory
        self.token_dtype = token_dtype
        if directory is None:
            self._blocks: dict[str, list[np.ndarray]] = {"tokens": [], "sentence_offsets": [], "document_offsets": []}
        else:
            fresh_directory(directory)  # a link planted at the name is removed, never written through
            self._files = {
                "tokens": NpyAppender(directory / "tokens.npy", token_dtype, with_checksum=False),
                "sentence_offsets": NpyAppender(directory / "sentence_offsets.npy", np.int64, with_checksum=False),
                "document_offsets": NpyAppender(directory / "document_offsets.npy", np.int64, with_checksum=False),
            }

    def append(self, name: str, values: np.ndarray) -> None:
        if self.directory is None:
            self._blocks[name].append(values)
        else:
            self._files[name].append(values)

    def abandon(self) -> None:
        if self.directory is not None:
            for appender in self._files.values():
                appender.abandon()

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        names = ("tokens", "sentence_offsets", "document_offsets")
        if self.directory is None:
            dtypes = (self.token_dtype, np.int64, np.int64)
            return tuple(  # type: ignore[return-value]
                np.concatenate(self._blocks[name]) if self._blocks[name] else np.zeros(0, dtype)
                for name, dtype in zip(names, dtypes)
            )
        for appender in self._files.values():
            appender.close()
        return tuple(np.load(self.directory / f"{name}.npy", mmap_mode="r") for name in names)  # type: ignore


class _StoreWriter:
    """Tokenizes corpus lines batch by batch into an ``_OffsetsBuilder``, keeping the running counts."""

    def __init__(self, tokenizer: Any, facts: TokenizerFacts, directory: Path | None, max_sentence_tokens: int | None):
        self.tokenizer = tokenizer
        self.facts = facts
        self.max_sentence_tokens = max_sentence_tokens
        self.continues_word = continuation_table(tokenizer, facts) if max_sentence_tokens is not None else None
        self.builder = _OffsetsBuilder(facts.token_dtype, directory)
        self.builder.append("sentence_offsets", np.zeros(1, np.int64))
        self.builder.append("document_offsets", np.zeros(1, np.int64))
        self.counters = {"tokens": 0, "sentences": 0, "documents": 0, "empty_sentences": 0, "empty_documents": 0}
        self.document_has_sentence = self.document_has_line = False
        self.corpus_document_ends = [0]
        self.long_lines: list[LongLines] = []
        self._start_long_lines()

    def _start_long_lines(self) -> None:
        self.long = {"lines": 0, "tokens": 0, "pieces": 0}
        self.long_numbers: list[int] = []

    def add_corpus(self, path: Path, progress: tqdm) -> None:
        """Every line of ``path``, in batches of ``SENTENCES_PER_BATCH``; the corpus must hold two documents."""
        pending: list[tuple[str, bool, int]] = []  # (text, starts a document, line number)
        last_byte = 0
        for line in iter_corpus_lines(path):
            pending.append((line.text, line.starts_document, line.line_number))
            if len(pending) >= SENTENCES_PER_BATCH:
                self._add_batch(pending)
                progress.update(line.end_byte - last_byte)
                last_byte = line.end_byte
        if pending:
            self._add_batch(pending)
        # The last document is closed by the end of the file, not by a blank line.
        last_document_end: list[int] = []
        self._close_document(last_document_end)
        if last_document_end:
            self.builder.append("document_offsets", np.asarray(last_document_end, dtype=np.int64))
        progress.update(path.stat().st_size - last_byte)
        require_two_documents(path, self.counters["documents"] - self.corpus_document_ends[-1])
        self.corpus_document_ends.append(self.counters["documents"])
        self.long_lines.append(LongLines(**self.long, first_line_numbers=tuple(self.long_numbers)))
        self._start_long_lines()

    def _close_document(self, document_ends: list[int]) -> None:
        if self.document_has_sentence:
            document_ends.append(self.counters["sentences"])
            self.counters["documents"] += 1
        elif self.document_has_line:
            self.counters["empty_documents"] += 1
        self.document_has_sentence = self.document_has_line = False

    def _pieces(self, ids: list[int], line_number: int) -> list[list[int]]:
        """The line's ids as one sentence, or cut into sentences of at most ``max_sentence_tokens`` (counted)."""
        if self.max_sentence_tokens is None or len(ids) <= self.max_sentence_tokens:
            return [ids]
        assert self.continues_word is not None
        cuts = cut_points(np.asarray(ids, dtype=np.int64), self.max_sentence_tokens, self.continues_word)
        pieces = [ids[start:end] for start, end in zip(cuts[:-1], cuts[1:])]
        self.long["lines"] += 1
        self.long["tokens"] += len(ids)
        self.long["pieces"] += len(pieces)
        if len(self.long_numbers) < LONG_LINES_LISTED:
            self.long_numbers.append(line_number)
        return pieces

    def _add_batch(self, pending: list[tuple[str, bool, int]]) -> None:
        encoded = encode_sentences(self.tokenizer, [text for text, _, _ in pending])
        kept_ids: list[list[int]] = []
        document_ends: list[int] = []
        for (_, starts_document, line_number), ids in zip(pending, encoded):
            if starts_document:
                self._close_document(document_ends)
            self.document_has_line = True
            if not ids:
                self.counters["empty_sentences"] += 1
                continue
            pieces = self._pieces(ids, line_number)
            kept_ids.extend(pieces)
            self.counters["sentences"] += len(pieces)
            self.document_has_sentence = True
        if kept_ids:
            self._append_tokens(kept_ids)
        if document_ends:
            self.builder.append("document_offsets", np.asarray(document_ends, dtype=np.int64))
        pending.clear()

    def _append_tokens(self, sentences: list[list[int]]) -> None:
        lengths = [len(ids) for ids in sentences]
        flat = np.fromiter(chain.from_iterable(sentences), dtype=np.int64, count=sum(lengths))
        if flat.size and int(flat.max()) >= self.facts.vocab_size:
            raise ValueError(f"token id {int(flat.max())} outside the vocabulary of size {self.facts.vocab_size}")
        self.builder.append("tokens", flat.astype(self.facts.token_dtype))
        self.builder.append("sentence_offsets", self.counters["tokens"] + np.cumsum(lengths, dtype=np.int64))
        self.counters["tokens"] += int(flat.size)

    def finish(self, tokens_file: Path | None) -> DocumentStore:
        tokens, sentence_offsets, document_offsets = self.builder.finish()
        return DocumentStore(
            tokens,
            sentence_offsets,
            document_offsets,
            self.counters["empty_sentences"],
            self.counters["empty_documents"],
            corpus_document_offsets=np.asarray(self.corpus_document_ends, dtype=np.int64),
            tokens_file=tokens_file,
            long_lines=tuple(self.long_lines),
        )


def build_document_store(
    corpus_path: Path | Sequence[Path],
    tokenizer: Any,
    facts: TokenizerFacts,
    directory: Path | None = None,
    show_progress: bool = True,
    max_sentence_tokens: int | None = None,
) -> DocumentStore:
    """Tokenize ``corpus_path`` (or several corpora, one after the other) in batches and return the document store
    (on disk under ``directory`` if given). Each corpus must hold at least two documents. Lines longer than
    ``max_sentence_tokens`` (if given) are cut into sentences of at most that many tokens."""
    paths = [Path(corpus_path)] if isinstance(corpus_path, (str, Path)) else [Path(p) for p in corpus_path]
    writer = _StoreWriter(tokenizer, facts, directory, max_sentence_tokens)
    try:
        total_bytes = sum(path.stat().st_size for path in paths if path.exists())
        with tqdm(
            total=total_bytes, unit="B", unit_scale=True, desc="tokenizing", disable=not show_progress
        ) as progress:
            for path in paths:
                writer.add_corpus(path, progress)
    except BaseException:
        writer.builder.abandon()
        raise
    store = writer.finish(None if directory is None else directory / "tokens.npy")
    if directory is not None:
        write_json_atomic(
            directory / STORE_DESCRIPTION,
            {
                "corpora": [str(path) for path in paths],
                "corpus_document_offsets": writer.corpus_document_ends,
                "vocab_fingerprint": facts.vocab_fingerprint,
                "num_tokens": store.num_tokens,
                "num_sentences": store.num_sentences,
                "num_documents": store.num_documents,
                "dropped_empty_sentences": store.dropped_empty_sentences,
                "dropped_empty_documents": store.dropped_empty_documents,
            },
        )
    return store


def open_document_store(directory: Path) -> DocumentStore:
    """Open a store written by ``build_document_store(..., directory=...)`` as read-only memmaps."""
    description = json.loads((directory / STORE_DESCRIPTION).read_text())
    arrays = [
        np.load(directory / f"{name}.npy", mmap_mode="r") for name in ("tokens", "sentence_offsets", "document_offsets")
    ]
    return DocumentStore(
        *arrays,
        description["dropped_empty_sentences"],
        description["dropped_empty_documents"],
        tokens_file=directory / "tokens.npy",
        corpus_document_offsets=np.asarray(description["corpus_document_offsets"], dtype=np.int64),
    )
