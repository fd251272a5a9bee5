"""Masking: rates, the 80/10/10 split, special tokens, whole words — checked statistically on many rows."""

from __future__ import annotations

import numpy as np
import pytest

from bert_domain_ft.data.masking import MaskingTables, mask_rows

VOCAB = 1000
CLS, SEP, MASK, PAD = 2, 3, 4, 0
SPECIAL = [0, 1, 2, 3, 4]


def tables(continuation_ids: tuple[int, ...] = ()) -> MaskingTables:
    is_special = np.zeros(VOCAB, dtype=bool)
    is_special[SPECIAL] = True
    is_continuation = np.zeros(VOCAB, dtype=bool)
    is_continuation[list(continuation_ids)] = True
    return MaskingTables(is_special, is_continuation, np.flatnonzero(~is_special), MASK)


def random_rows(count: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(10, width + 1, size=count)
    rows = np.full((count, width), PAD, dtype=np.uint16)
    for row, length in enumerate(lengths):
        rows[row, :length] = rng.integers(5, VOCAB, size=length)
        rows[row, 0] = CLS
        rows[row, length // 2] = SEP
        rows[row, length - 1] = SEP
    return rows, lengths


def test_masked_count_is_fifteen_percent_of_length_capped_at_max_predictions() -> None:
    rows, lengths = random_rows(2000, 128)
    masked = mask_rows(rows, lengths, np.random.default_rng(1), tables(), 0.15, 20, whole_word=False)
    expected = np.minimum(20, np.maximum(1, np.rint(lengths * 0.15)))
    assert np.array_equal(masked.counts, expected)


def test_eighty_ten_ten_split_within_statistical_tolerance() -> None:
    rows, lengths = random_rows(4000, 128)
    masked = mask_rows(rows, lengths, np.random.default_rng(2), tables(), 0.15, 20, whole_word=False)
    row_index = np.repeat(np.arange(len(rows)), masked.counts)
    slots = np.concatenate([np.arange(c) for c in masked.counts])
    positions = masked.positions[row_index, slots]
    new = masked.input_ids[row_index, positions]
    original = masked.labels[row_index, slots]
    total = len(new)
    assert total > 40_000
    tolerance = 4 * np.sqrt(0.1 * 0.9 / total)  # four standard deviations of a 10% share
    assert abs(np.mean(new == MASK) - 0.8) < tolerance
    assert abs(np.mean(new == original) - 0.1) < tolerance + 1 / VOCAB
    replaced = (new != MASK) & (new != original)
    assert abs(np.mean(replaced) - 0.1) < tolerance
    assert not np.isin(new[replaced], SPECIAL).any(), "random replacements must never be special tokens"


def test_special_tokens_and_padding_are_never_masked() -> None:
    rows, lengths = random_rows(1000, 64)
    masked = mask_rows(rows, lengths, np.random.default_rng(3), tables(), 0.5, 64, whole_word=False)
    for row in range(len(rows)):
        positions = masked.positions[row, : masked.counts[row]]
        assert np.all(positions < lengths[row])
        assert not np.isin(rows[row, positions], SPECIAL).any()
        assert np.array_equal(masked.labels[row, : masked.counts[row]], rows[row, positions])
        assert np.all(np.diff(positions.astype(int)) > 0), "positions must ascend"
        unmasked = np.setdiff1d(np.arange(64), positions)
        assert np.array_equal(masked.input_ids[row, unmasked], rows[row, unmasked])


class TiedKeys:
    """A generator whose uniform draws are all equal: every selection key ties."""

    def __init__(self) -> None:
        self.generator = np.random.default_rng(0)

    def random(self, size=None, dtype=np.float64):
        return np.full(size, 0.5, dtype=dtype)

    def integers(self, *arguments, **options):
        return self.generator.integers(*arguments, **options)


@pytest.mark.parametrize("whole_word", [False, True])
def test_tied_random_keys_never_select_more_than_the_target(whole_word: bool) -> None:
    rows, lengths = random_rows(300, 64)
    masked = mask_rows(rows, lengths, TiedKeys(), tables(tuple(range(500, 1000))), 0.15, 6, whole_word=whole_word)
    expected = np.minimum(6, np.maximum(1, np.rint(lengths * 0.15)))
    assert np.all(masked.counts <= expected)
    assert whole_word or np.array_equal(masked.counts, expected)


def test_input_rows_are_not_modified() -> None:
    rows, lengths = random_rows(50, 32)
    before = rows.copy()
    mask_rows(rows, lengths, np.random.default_rng(4), tables(), 0.15, 5, whole_word=False)
    assert np.array_equal(rows, before)


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_whole_word_masking_never_splits_a_word_and_reaches_the_target(seed: int) -> None:
    continuation = tuple(range(500, 1000))  # ids ≥ 500 continue the previous word
    rows, lengths = random_rows(1500, 96, seed)
    masked = mask_rows(rows, lengths, np.random.default_rng(seed), tables(continuation), 0.15, 14, whole_word=True)
    is_continuation = tables(continuation).is_continuation
    for row in range(len(rows)):
        chosen = np.zeros(96, dtype=bool)
        chosen[masked.positions[row, : masked.counts[row]]] = True
        length = lengths[row]
        maskable = ~np.isin(rows[row, :length], SPECIAL)
        # Within a run of maskable tokens, a continuation piece shares its word's fate.
        for position in range(1, length):
            if maskable[position] and maskable[position - 1] and is_continuation[rows[row, position]]:
                assert chosen[position] == chosen[position - 1], f"row {row} splits a word at {position}"
    target = np.minimum(14, np.maximum(1, np.rint(lengths * 0.15)))
    # BERT's rule skips words that overshoot, so counts never exceed the target and rarely fall short.
    assert np.all(masked.counts <= target)
    assert np.mean(masked.counts == target) > 0.9


def test_same_generator_state_gives_same_masks_and_different_seeds_differ() -> None:
    rows, lengths = random_rows(200, 64)
    first = mask_rows(rows, lengths, np.random.default_rng(9), tables(), 0.15, 10, whole_word=False)
    again = mask_rows(rows, lengths, np.random.default_rng(9), tables(), 0.15, 10, whole_word=False)
    other = mask_rows(rows, lengths, np.random.default_rng(10), tables(), 0.15, 10, whole_word=False)
    assert np.array_equal(first.input_ids, again.input_ids) and np.array_equal(first.positions, again.positions)
    assert not np.array_equal(first.positions, other.positions)
