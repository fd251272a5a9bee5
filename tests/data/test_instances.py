"""NSP pair construction on token offsets: contiguity, document boundaries, truncation, lengths."""

from __future__ import annotations

import numpy as np
import pytest

from bert_domain_ft.data.document_store import DocumentStore
from bert_domain_ft.data.epoch_format import NO_NSP_LABEL
from bert_domain_ft.data.instances import DocumentPool, assemble_pairs, create_pair_spans, truncate_pairs


def synthetic_store(seed: int = 0, documents: int = 60) -> DocumentStore:
    """Documents of 1..12 sentences of 1..40 tokens; token t of the corpus is the id (t % 997) + 5."""
    rng = np.random.default_rng(seed)
    sentences_per_document = rng.integers(1, 13, size=documents)
    sentence_lengths = rng.integers(1, 41, size=int(sentences_per_document.sum()))
    sentence_offsets = np.concatenate([[0], np.cumsum(sentence_lengths)]).astype(np.int64)
    document_offsets = np.concatenate([[0], np.cumsum(sentences_per_document)]).astype(np.int64)
    tokens = (np.arange(sentence_offsets[-1]) % 997 + 5).astype(np.uint16)
    return DocumentStore(tokens, sentence_offsets, document_offsets)


def document_of_token(store: DocumentStore, token: np.ndarray) -> np.ndarray:
    sentence = np.searchsorted(store.sentence_offsets, token, side="right") - 1
    return np.searchsorted(store.document_offsets, sentence, side="right") - 1


def sequential_truncation(length_a: int, length_b: int, limit: int) -> tuple[int, int]:
    """The reference: BERT's loop, counting removals from each segment."""
    removed_a = removed_b = 0
    while length_a + length_b > limit:
        if length_a > length_b:
            length_a -= 1
            removed_a += 1
        else:
            length_b -= 1
            removed_b += 1
    return removed_a, removed_b


def test_closed_form_truncation_removes_what_the_reference_loop_removes() -> None:
    rng = np.random.default_rng(0)
    length_a = rng.integers(1, 300, size=3000)
    length_b = rng.integers(1, 300, size=3000)
    zeros = np.zeros_like(length_a)
    a_start, a_end, b_start, b_end = truncate_pairs(zeros, length_a, zeros, length_b, 125, rng)
    for i in range(len(length_a)):
        removed_a, removed_b = sequential_truncation(int(length_a[i]), int(length_b[i]), 125)
        assert (a_end[i] - a_start[i], b_end[i] - b_start[i]) == (length_a[i] - removed_a, length_b[i] - removed_b)
    assert np.all(a_start >= 0) and np.all(a_end <= length_a) and np.all(b_end <= length_b)
    removed = (length_a - (a_end - a_start)).sum() + (length_b - (b_end - b_start)).sum()
    from_front = a_start.sum() + b_start.sum()
    assert removed > 10_000
    assert abs(from_front / removed - 0.5) < 0.02, "each removal is from the front or the back with probability 1/2"


@pytest.mark.parametrize("max_seq_len", [16, 64, 128])
def test_pairs_are_contiguous_runs_of_one_document_or_cross_document_when_random(max_seq_len: int) -> None:
    store = synthetic_store()
    pool = DocumentPool.from_documents(store, np.arange(store.num_documents))
    spans = create_pair_spans(store, pool, range(0, store.num_documents), max_seq_len, 0.1, np.random.default_rng(1))
    assert len(spans) > 50
    length_a = spans.a_end - spans.a_start
    length_b = spans.b_end - spans.b_start
    assert np.all(length_a >= 1) and np.all(length_b >= 1)
    assert np.all(length_a + length_b <= max_seq_len - 3)
    doc_a_first = document_of_token(store, spans.a_start)
    doc_a_last = document_of_token(store, spans.a_end - 1)
    doc_b_first = document_of_token(store, spans.b_start)
    doc_b_last = document_of_token(store, spans.b_end - 1)
    assert np.array_equal(doc_a_first, doc_a_last), "A never crosses a document boundary"
    assert np.array_equal(doc_b_first, doc_b_last), "B never crosses a document boundary"
    is_next = ~spans.is_random_next
    assert np.all(doc_a_first[is_next] == doc_b_first[is_next]), "'is next' B comes from A's document"
    assert np.all(spans.b_start[is_next] >= spans.a_end[is_next]), "'is next' B follows A"
    assert np.all(doc_a_first[~is_next] != doc_b_first[~is_next]), "random B comes from another document"
    if max_seq_len >= 64:  # shorter limits make one-sentence chunks, which are always random next
        assert 0.35 < spans.is_random_next.mean() < 0.75


def test_is_next_pairs_split_at_a_sentence_boundary_before_truncation() -> None:
    store = synthetic_store(seed=3)
    pool = DocumentPool.from_documents(store, np.arange(store.num_documents))
    spans = create_pair_spans(store, pool, range(0, store.num_documents), 512, 0.0, np.random.default_rng(2))
    untruncated = (spans.a_end - spans.a_start) + (spans.b_end - spans.b_start) < 509
    is_next = ~spans.is_random_next & untruncated
    assert is_next.sum() > 10
    boundaries = set(store.sentence_offsets.tolist())
    assert all(int(a) in boundaries for a in spans.a_end[is_next])
    assert np.array_equal(spans.a_end[is_next], spans.b_start[is_next])


def test_one_sentence_documents_get_a_random_second_segment_and_no_nsp_label() -> None:
    lengths = np.full(40, 7)
    store = DocumentStore(
        np.arange(280, dtype=np.uint16) % 100 + 5,
        np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        np.arange(41, dtype=np.int64),  # every document is one sentence
    )
    pool = DocumentPool.from_documents(store, np.arange(40))
    spans = create_pair_spans(store, pool, range(0, 40), 64, 0.1, np.random.default_rng(0))
    assert len(spans) == 40 and spans.is_random_next.all()  # B is another document's text: the row stays full
    # ... but such an instance could never be "is next": a label of 1 would teach the NSP head a constant.
    assert np.all(spans.nsp_labels() == NO_NSP_LABEL)


def two_sentence_store(documents: int = 1500) -> DocumentStore:
    """Short documents of two short sentences: BERT's rule labels 2 of 3 of their instances "random next"."""
    lengths = np.full(2 * documents, 5)
    tokens = (np.arange(int(lengths.sum())) % 997 + 5).astype(np.uint16)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return DocumentStore(tokens, offsets, np.arange(0, 2 * documents + 1, 2, dtype=np.int64))


@pytest.mark.parametrize(("store", "max_seq_len"), [(synthetic_store(seed=8, documents=600), 16),
                                                    (synthetic_store(seed=9, documents=600), 128),
                                                    (two_sentence_store(), 64)])  # fmt: skip
def test_nsp_labelled_pairs_are_half_random_next_and_one_sentence_chunks_are_masked_lm_only(
    store: DocumentStore, max_seq_len: int
) -> None:
    pool = DocumentPool.from_documents(store, np.arange(store.num_documents))
    spans = create_pair_spans(store, pool, range(0, store.num_documents), max_seq_len, 0.1, np.random.default_rng(3))
    labels = spans.nsp_labels()
    labelled = labels != NO_NSP_LABEL
    assert set(np.unique(labels).tolist()) == {0, 1, NO_NSP_LABEL}
    share = float(np.mean(labels[labelled] == 1))
    assert abs(share - 0.5) < 4 * np.sqrt(0.25 / labelled.sum()), share  # 4 standard errors
    assert np.all(labels[labelled] == spans.is_random_next[labelled])
    assert np.all(spans.is_random_next[~labelled]), "an unlabelled instance is a one-sentence chunk, B at random"


def test_random_next_draws_only_from_the_pool() -> None:
    store = synthetic_store(seed=4)
    half = np.arange(0, store.num_documents, 2)
    pool = DocumentPool.from_documents(store, half)
    spans = create_pair_spans(store, pool, range(0, len(half)), 64, 0.1, np.random.default_rng(5))
    assert set(document_of_token(store, spans.b_start).tolist()) <= set(half.tolist())


def test_assembled_rows_hold_cls_a_sep_b_sep_then_padding() -> None:
    store = synthetic_store(seed=6)
    pool = DocumentPool.from_documents(store, np.arange(store.num_documents))
    spans = create_pair_spans(store, pool, range(0, store.num_documents), 48, 0.1, np.random.default_rng(7))
    rows, lengths, segment_a = assemble_pairs(store, spans, 48, cls_id=2, sep_id=3, pad_id=0)
    for i in range(len(spans)):
        a = store.tokens[spans.a_start[i] : spans.a_end[i]]
        b = store.tokens[spans.b_start[i] : spans.b_end[i]]
        expected = np.concatenate([[2], a, [3], b, [3]])
        assert lengths[i] == len(expected) <= 48 and segment_a[i] == len(a) + 2
        assert np.array_equal(rows[i, : lengths[i]], expected)
        assert np.all(rows[i, lengths[i] :] == 0)
