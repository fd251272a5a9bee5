"""Masked-LM-only instances: contiguous text packed into full sequences, with the tokenizer's own specials.

A row is ``cls_id + tokens + sep_id`` (``[CLS] … [SEP]`` for BERT, ``<s> … </s>`` for RoBERTa), filled to the last
position. Across documents (the default, as RoBERTa's FULL-SENTENCES), documents follow each other in the epoch's
order with ``sep_id`` between them, and a sequence may run on into the next document; with
``cross_document=False`` every document is cut into its own sequences and the last one of each is padded.
The cut falls wherever the sequence is full — packing fill is ~100% across documents.

    rows, lengths = pack_documents(store, documents, max_seq_len=128, cross_document=True, cls_id=0, sep_id=2, pad_id=1)
"""

from __future__ import annotations

import numpy as np

from .document_store import DocumentStore
from .ranges import concatenated_ranges

SPECIAL_TOKENS_PER_ROW = 2  # cls_id at the start, sep_id at the end


def _document_stream(store: DocumentStore, documents: np.ndarray, sep_id: int) -> np.ndarray:
    """The tokens of ``documents`` in order, ``sep_id`` after each but the last."""
    first_token = store.sentence_offsets[store.document_offsets[documents]]
    end_token = store.sentence_offsets[store.document_offsets[documents + 1]]
    lengths = end_token - first_token
    with_separators = lengths + 1
    destinations = concatenated_ranges(np.cumsum(with_separators) - with_separators, lengths)
    stream = np.full(int(with_separators.sum()), sep_id, dtype=store.tokens.dtype)
    stream[destinations] = store.read_ranges(first_token, lengths)
    return stream[:-1] if len(stream) else stream


def _rows_from_pieces(
    source: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    max_seq_len: int,
    cls_id: int,
    sep_id: int,
    pad_id: int,
) -> tuple[np.ndarray, np.ndarray]:
    count = len(starts)
    rows = np.full(count * max_seq_len, pad_id, dtype=source.dtype)
    row_base = np.arange(count, dtype=np.int64) * max_seq_len
    rows[row_base] = cls_id
    rows[concatenated_ranges(row_base + 1, lengths)] = source[concatenated_ranges(starts, lengths)]
    rows[row_base + 1 + lengths] = sep_id
    return rows.reshape(count, max_seq_len), (lengths + SPECIAL_TOKENS_PER_ROW).astype(np.uint16)


def pack_documents(
    store: DocumentStore,
    documents: np.ndarray,
    max_seq_len: int,
    cross_document: bool,
    cls_id: int,
    sep_id: int,
    pad_id: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows (N, max_seq_len) and their lengths for ``documents`` (store indices, in epoch order)."""
    capacity = max_seq_len - SPECIAL_TOKENS_PER_ROW
    documents = np.asarray(documents, dtype=np.int64)
    if cross_document:
        stream = _document_stream(store, documents, sep_id)
        starts = np.arange(0, len(stream), capacity, dtype=np.int64)
        lengths = np.minimum(capacity, len(stream) - starts)
        return _rows_from_pieces(stream, starts, lengths, max_seq_len, cls_id, sep_id, pad_id)
    first_token = store.sentence_offsets[store.document_offsets[documents]]
    end_token = store.sentence_offsets[store.document_offsets[documents + 1]]
    pieces_per_document = -(-(end_token - first_token) // capacity)
    piece_index = concatenated_ranges(np.zeros_like(pieces_per_document), pieces_per_document)
    starts = np.repeat(first_token, pieces_per_document) + piece_index * capacity
    lengths = np.minimum(capacity, np.repeat(end_token, pieces_per_document) - starts)
    source = store.read_ranges(starts, lengths)  # the pieces, back to back
    return _rows_from_pieces(source, np.cumsum(lengths) - lengths, lengths, max_seq_len, cls_id, sep_id, pad_id)
