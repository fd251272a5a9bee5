"""On-the-fly two-sentence pairs: pair statistics, determinism, fresh masks, padding, length grouping, disk = RAM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bert_domain_ft.data.document_store import DocumentStore, build_document_store
from bert_domain_ft.data.masking import IGNORE_INDEX, DynamicMasking, MaskingTables, masking_tables
from bert_domain_ft.data.simple_pairs import (
    BATCHES_PER_LENGTH_GROUP,
    PairIndex,
    RowLayout,
    assemble_batch,
    length_grouped_order,
    pair_lengths,
    sample_epoch_pairs,
)
from bert_domain_ft.errors import UserError
from bert_domain_ft.model.tokenizer import describe_tokenizer, load_tokenizer

SPECIAL = 5  # ids 0..4 are special in the synthetic vocabulary: [PAD] [UNK] [CLS] [SEP] [MASK]
PAD, CLS, SEP, MASK = 0, 2, 3, 4
PERIOD = 1000  # token t of the synthetic corpus is SPECIAL + t % PERIOD


def synthetic_store(
    seed: int = 0, documents: int = 300, max_sentences: int = 12, max_length: int = 40
) -> DocumentStore:
    rng = np.random.default_rng(seed)
    sentences_per_document = rng.integers(1, max_sentences + 1, size=documents)
    sentence_lengths = rng.integers(1, max_length + 1, size=int(sentences_per_document.sum()))
    sentence_offsets = np.concatenate([[0], np.cumsum(sentence_lengths)]).astype(np.int64)
    document_offsets = np.concatenate([[0], np.cumsum(sentences_per_document)]).astype(np.int64)
    tokens = (np.arange(sentence_offsets[-1]) % PERIOD + SPECIAL).astype(np.uint16)
    return DocumentStore(tokens, sentence_offsets, document_offsets)


def synthetic_settings(max_seq_len: int = 64, **masking: Any) -> tuple[RowLayout, DynamicMasking]:
    vocabulary = SPECIAL + PERIOD
    is_special = np.zeros(vocabulary, dtype=bool)
    is_special[:SPECIAL] = True
    tables = MaskingTables(is_special, np.zeros(vocabulary, bool), np.flatnonzero(~is_special), MASK)
    options = {"masked_lm_prob": 0.15, "max_predictions": 20, "whole_word": False, "seed": 0, **masking}
    return RowLayout(max_seq_len, CLS, SEP, PAD), DynamicMasking(tables=tables, **options)


@pytest.fixture(scope="module")
def store() -> DocumentStore:
    return synthetic_store()


@pytest.fixture(scope="module")
def index(store: DocumentStore) -> PairIndex:
    return PairIndex.from_store(store)


def test_every_sentence_with_a_successor_starts_exactly_one_instance(store: DocumentStore, index: PairIndex) -> None:
    last_sentences = set((store.document_offsets[1:] - 1).tolist())
    expected = [s for s in range(store.num_sentences) if s not in last_sentences]
    assert index.first_sentences.tolist() == expected
    pairs = sample_epoch_pairs(index, seed=1, epoch=0)
    assert np.array_equal(pairs.first, index.first_sentences)


def test_next_fraction_is_one_half(index: PairIndex) -> None:
    labels = np.concatenate([sample_epoch_pairs(index, seed=3, epoch=e).is_random_next for e in range(5)])
    standard_error = np.sqrt(0.25 / len(labels))
    assert abs((~labels).mean() - 0.5) < 4 * standard_error


def test_next_pairs_are_a_sentence_and_its_successor_in_the_same_document(index: PairIndex) -> None:
    pairs = sample_epoch_pairs(index, seed=3, epoch=0)
    is_next = ~pairs.is_random_next
    assert np.array_equal(pairs.second[is_next], pairs.first[is_next] + 1)
    assert np.array_equal(index.document_of(pairs.second[is_next]), index.document_of(pairs.first[is_next]))


def test_random_pairs_are_cross_document_and_spread_over_all_other_sentences(index: PairIndex) -> None:
    seconds, firsts = [], []
    for epoch in range(20):
        pairs = sample_epoch_pairs(index, seed=5, epoch=epoch)
        firsts.append(pairs.first[pairs.is_random_next])
        seconds.append(pairs.second[pairs.is_random_next])
    first, second = np.concatenate(firsts), np.concatenate(seconds)
    assert np.all(index.document_of(first) != index.document_of(second))
    assert np.all((second >= 0) & (second < index.num_sentences))
    # Uniform over sentences: a document is picked in proportion to its sentence count.
    picked = np.bincount(index.document_of(second), minlength=len(index.document_offsets) - 1)
    sizes = np.diff(index.document_offsets)
    large, small = sizes >= 10, sizes <= 2
    ratio = (picked[large].sum() / sizes[large].sum()) / (picked[small].sum() / sizes[small].sum())
    assert 0.85 < ratio < 1.15


def test_an_epoch_is_a_function_of_seed_and_epoch(index: PairIndex) -> None:
    first = sample_epoch_pairs(index, seed=7, epoch=2)
    again = sample_epoch_pairs(index, seed=7, epoch=2)
    other_epoch = sample_epoch_pairs(index, seed=7, epoch=3)
    assert np.array_equal(first.second, again.second)
    assert np.array_equal(first.is_random_next, again.is_random_next)
    assert not np.array_equal(first.is_random_next, other_epoch.is_random_next)


def segments_of_row(row: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    separators = np.flatnonzero(row[:length] == SEP)
    return row[1 : separators[0]], row[separators[0] + 1 : length - 1]


def test_batches_hold_the_sentences_truncated_to_max_seq_len_with_cls_and_seps(
    store: DocumentStore, index: PairIndex
) -> None:
    layout, plain = synthetic_settings(max_seq_len=40, max_predictions=0)
    pairs = sample_epoch_pairs(index, seed=0, epoch=0)
    instances = np.arange(0, 200)
    batch = assemble_batch(store, index, pairs, instances, layout, plain, epoch=0)
    lengths = batch["attention_mask"].sum(axis=1)
    assert batch["input_ids"].shape[1] <= 40 and lengths.max() <= 40
    for row, length, instance, types in zip(batch["input_ids"], lengths, instances, batch["token_type_ids"]):
        assert row[0] == CLS and row[length - 1] == SEP and np.all(row[length:] == PAD)
        a, b = segments_of_row(row, length)
        sentence_a = store.tokens[
            index.sentence_offsets[pairs.first[instance]] : index.sentence_offsets[pairs.first[instance] + 1]
        ]
        sentence_b = store.tokens[
            index.sentence_offsets[pairs.second[instance]] : index.sentence_offsets[pairs.second[instance] + 1]
        ]
        assert len(a) >= 1 and len(b) >= 1
        # Truncation cuts from either end: what is left is a contiguous piece of the sentence.
        assert (a[0] - sentence_a[0]) % PERIOD <= len(sentence_a) - len(a) and np.all(
            np.diff(a.astype(int)) % PERIOD == 1
        )
        assert len(sentence_b) >= len(b) and np.all(np.diff(b.astype(int)) % PERIOD == 1)
        assert (
            np.all(types[: len(a) + 2] == 0) and np.all(types[len(a) + 2 : length] == 1) and np.all(types[length:] == 0)
        )
        if len(sentence_a) + len(sentence_b) <= 37:
            assert np.array_equal(a, sentence_a) and np.array_equal(b, sentence_b)
    assert np.array_equal(batch["next_sentence_label"], pairs.is_random_next[instances].astype(np.int64))


def test_batch_width_is_the_longest_row_rounded_up_to_eight(store: DocumentStore, index: PairIndex) -> None:
    layout, masking = synthetic_settings(max_seq_len=128)
    pairs = sample_epoch_pairs(index, seed=0, epoch=0)
    lengths = pair_lengths(index, pairs, 128)
    for instances in (np.argsort(lengths)[:16], np.argsort(lengths)[-16:], np.arange(16)):
        batch = assemble_batch(store, index, pairs, instances, layout, masking, epoch=0)
        longest = int(lengths[instances].max())
        assert np.array_equal(batch["attention_mask"].sum(axis=1), lengths[instances])
        assert batch["input_ids"].shape[1] == min(128, -(-longest // 8) * 8)


def test_masking_follows_the_pregeneration_rules(store: DocumentStore, index: PairIndex) -> None:
    layout, masking = synthetic_settings(max_seq_len=64)
    _, no_masks = synthetic_settings(max_seq_len=64, max_predictions=0)
    pairs = sample_epoch_pairs(index, seed=0, epoch=0)
    instances = np.arange(1000)
    unmasked = assemble_batch(store, index, pairs, instances, layout, no_masks, epoch=0)
    batch = assemble_batch(store, index, pairs, instances, layout, masking, epoch=0)
    lengths = batch["attention_mask"].sum(axis=1)
    labels, positions = batch["masked_lm_labels"], batch["masked_lm_positions"]
    counts = (labels != IGNORE_INDEX).sum(axis=1)
    assert np.array_equal(counts, np.minimum(20, np.maximum(1, np.rint(lengths * 0.15))))
    rows = np.repeat(np.arange(len(instances)), labels.shape[1])[labels.ravel() != IGNORE_INDEX]
    columns = positions.ravel()[labels.ravel() != IGNORE_INDEX]
    original = unmasked["input_ids"][rows, columns]  # same stream → same truncation
    assert np.array_equal(labels.ravel()[labels.ravel() != IGNORE_INDEX], original)
    assert np.all(original >= SPECIAL), "special tokens are never masked"
    replaced = batch["input_ids"][rows, columns]
    assert 0.77 < np.mean(replaced == MASK) < 0.83 and 0.07 < np.mean(replaced == original) < 0.13
    untouched = np.ones_like(batch["input_ids"], dtype=bool)
    untouched[rows, columns] = False
    assert np.array_equal(batch["input_ids"][untouched], unmasked["input_ids"][untouched])


def test_each_epoch_draws_fresh_masks_and_a_batch_is_reproducible(store: DocumentStore, index: PairIndex) -> None:
    layout, masking = synthetic_settings()
    pairs = sample_epoch_pairs(index, seed=0, epoch=0)
    instances = np.arange(64)
    epoch_0 = assemble_batch(store, index, pairs, instances, layout, masking, epoch=0)
    epoch_1 = assemble_batch(store, index, pairs, instances, layout, masking, epoch=1)
    again = assemble_batch(store, index, pairs, instances, layout, masking, epoch=0)
    differing_rows = np.any(epoch_0["masked_lm_positions"] != epoch_1["masked_lm_positions"], axis=1)
    assert differing_rows.mean() > 0.9
    for name in epoch_0:
        assert np.array_equal(epoch_0[name], again[name]), name


def test_length_grouping_is_a_permutation_with_homogeneous_batches(index: PairIndex) -> None:
    pairs = sample_epoch_pairs(index, seed=0, epoch=0)
    lengths = pair_lengths(index, pairs, 128)
    batch_size = 8
    order = length_grouped_order(lengths, batch_size, seed=0, epoch=0)
    assert np.array_equal(np.sort(order), np.arange(len(lengths)))
    assert np.array_equal(order, length_grouped_order(lengths, batch_size, seed=0, epoch=0))
    assert not np.array_equal(order, length_grouped_order(lengths, batch_size, seed=0, epoch=1))
    full = len(order) // batch_size * batch_size
    grouped = lengths[order[:full]].reshape(-1, batch_size)
    shuffled = lengths[np.random.default_rng(0).permutation(len(lengths))[:full]].reshape(-1, batch_size)
    padded = lambda rows: (np.ceil(rows.max(axis=1) / 8) * 8 * batch_size - rows.sum(axis=1)).sum()  # noqa: E731
    assert padded(grouped) < 0.35 * padded(shuffled)
    # Batches are shuffled: their longest rows are not in ascending or descending order.
    maxima = grouped.max(axis=1)
    assert 0.2 < np.mean(np.diff(maxima) > 0) < 0.8


def test_length_grouping_keeps_the_partial_batch_last() -> None:
    lengths = np.arange(1, 1000) % 97  # 999 instances: 99 full batches of 10 and one of 9, all in one group
    assert 999 < 10 * BATCHES_PER_LENGTH_GROUP
    order = length_grouped_order(lengths, 10, seed=1, epoch=0)
    # Within a group rows go longest first, so the partial batch holds the 9 shortest rows; it stays at the end,
    # where cutting the order into runs of 10 puts it.
    assert np.array_equal(np.sort(lengths[order[990:]]), np.sort(lengths)[:9])
    assert np.all(np.diff(lengths[order[:990]].reshape(99, 10), axis=1) <= 0)


def test_on_disk_store_gives_the_same_batches_as_in_memory(
    tmp_path: Path, tiny_corpus: Path, tiny_tokenizer_dir: Path
) -> None:
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir))
    facts = describe_tokenizer(tokenizer, str(tiny_tokenizer_dir))
    in_memory = build_document_store(tiny_corpus, tokenizer, facts, directory=None, show_progress=False)
    on_disk = build_document_store(tiny_corpus, tokenizer, facts, directory=tmp_path / "store", show_progress=False)
    assert isinstance(on_disk.tokens, np.memmap)
    layout = RowLayout(64, facts.cls_token_id, facts.sep_token_id, facts.pad_token_id)
    masking = DynamicMasking(masking_tables(facts, tokenizer), 0.15, 20, whole_word=True, seed=0)
    for store in (in_memory, on_disk):
        index = PairIndex.from_store(store)
        assert not any(isinstance(array, np.memmap) for array in (index.sentence_offsets, index.document_offsets))
    index = PairIndex.from_store(in_memory)
    pairs = sample_epoch_pairs(index, seed=0, epoch=0)
    instances = np.arange(0, len(pairs), 3)
    ram = assemble_batch(in_memory, index, pairs, instances, layout, masking, epoch=0)
    disk = assemble_batch(on_disk, PairIndex.from_store(on_disk), pairs, instances, layout, masking, epoch=0)
    for name in ram:
        assert np.array_equal(ram[name], disk[name]), name
    assert not np.any(np.isin(ram["masked_lm_labels"], facts.special_token_ids))


def test_a_corpus_without_two_sentence_documents_is_refused() -> None:
    store = DocumentStore(np.arange(5, 15, dtype=np.uint16), np.arange(0, 11, 2), np.arange(0, 6))
    with pytest.raises(UserError, match="two sentences"):
        PairIndex.from_store(store)


def test_masked_lm_only_pairs_are_each_sentence_and_its_successor(index: PairIndex) -> None:
    pairs = sample_epoch_pairs(index, seed=3, epoch=0, with_nsp=False)
    assert not pairs.is_random_next.any()  # no partner from another document: contiguous text to predict from
    assert np.array_equal(pairs.second, pairs.first + 1)
    assert np.array_equal(pairs.first, sample_epoch_pairs(index, seed=3, epoch=0).first)  # the same instances
