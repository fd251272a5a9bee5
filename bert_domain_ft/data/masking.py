"""Masked-LM masking of token rows, vectorised, and the batch layout the model takes.

Per row: ``num_to_predict = min(max_predictions, max(1, round(length * masked_lm_prob)))`` (``length`` counts the
special tokens, as BERT does), never more than the row's maskable tokens. Candidates are the non-special tokens;
they are taken in random order — whole words at a time with whole-word masking, skipping a word that would
overshoot, exactly as BERT's create_pretraining_data. Of the chosen tokens 80% become the mask token, 10% a
random non-special token, 10% stay as they are; labels hold the original tokens, positions ascend. The row-wise
random order is an argsort of random keys, so an epoch is masked in a handful of numpy calls (``mask_rows``).

``DynamicMasking`` holds a run's rule and seed. Pregeneration applies it with each shard's generator; data
pregenerated with ``--dynamic_masking`` (RoBERTa's dynamic masking) and the ``simple`` stage mask at batch time
instead, each batch from its own generator seeded by (seed, training epoch, the batch's instance indices): a
batch is masked the same way however often it is built (exact resume, any prefetching, any process), while the
same instance gets fresh masks in every epoch. ``batch_arrays`` lays the rows and their masks out as the int64
arrays the model takes, for the loader's pregenerated batches and the simple stage's alike. Pure numpy.

    masking = DynamicMasking.from_manifest(manifest, seed=42, tokenizer=tokenizer)
    masked = masking.mask(rows, lengths, epoch=0, indices=np.array([3, 17, 21]))   # a MaskedRows
    batch = batch_arrays(rows, lengths, segment_a_lengths, masked)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bert_domain_ft.data.epoch_format import NO_NSP_LABEL
from bert_domain_ft.errors import UserError
from bert_domain_ft.model.tokenizer import TokenizerFacts, continuation_table, special_table


@dataclass(frozen=True)
class MaskingTables:
    """Per-vocabulary lookups masking needs; built once from the tokenizer, shared read-only by workers."""

    is_special: np.ndarray  # (V,) bool
    is_continuation: np.ndarray  # (V,) bool: "##" pieces that continue a word (WordPiece)
    replacement_ids: np.ndarray  # (K,) ids a token may be replaced with: every non-special id
    mask_id: int


@dataclass(frozen=True)
class MaskedRows:
    input_ids: np.ndarray  # (N, L) rows with masks applied
    positions: np.ndarray  # (N, P) uint16, ascending, padded with 0
    labels: np.ndarray  # (N, P) original ids, padded with 0
    counts: np.ndarray  # (N,) uint16 real entries per row


def _word_starts(rows: np.ndarray, candidate: np.ndarray, tables: MaskingTables) -> np.ndarray:
    """Where a word begins: a candidate that is not a continuation piece of the candidate before it."""
    continues = tables.is_continuation[rows] & candidate
    previous_is_candidate = np.zeros_like(candidate)
    previous_is_candidate[:, 1:] = candidate[:, :-1]
    # A continuation piece right after [SEP] or a truncation cut has no word to join: it starts its own.
    return candidate & ~(continues & previous_is_candidate)


def _select_tokens(candidate: np.ndarray, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boolean (N, L) selection of ``targets[row]`` random candidates per row (every word one token).

    Ranks, not a threshold on the keys: float keys can tie, and a tie at the threshold would select too many."""
    keys = np.where(candidate, rng.random(candidate.shape, dtype=np.float32), np.float32(2.0))
    order = np.argsort(keys, axis=1, kind="stable")
    chosen = np.zeros_like(candidate)
    np.put_along_axis(chosen, order, np.arange(candidate.shape[1])[None, :] < targets[:, None], axis=1)
    return chosen & candidate


def _select_words(
    candidate: np.ndarray, word_start: np.ndarray, targets: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Boolean (N, L) selection: words in random order, each taken whole if it still fits under the row's target."""
    count, width = candidate.shape
    word_index = np.cumsum(word_start, axis=1) - 1  # word number of each token within its row
    word_keys = rng.random((count, width))  # key of word w is word_keys[row, w]
    token_keys = np.where(candidate, np.take_along_axis(word_keys, np.maximum(word_index, 0), axis=1), 2.0)
    order = np.argsort(token_keys, axis=1, kind="stable")  # stable: a word's pieces stay in position order
    sorted_candidate = np.take_along_axis(candidate, order, axis=1)
    sorted_word = np.take_along_axis(word_index, order, axis=1)
    bins = np.where(candidate, word_index, width) + (width + 1) * np.arange(count)[:, None]
    word_size = np.bincount(bins.ravel(), minlength=count * (width + 1)).reshape(count, width + 1)
    running = np.cumsum(sorted_candidate, axis=1)
    # A token is chosen when the whole of its word fits: cumulative count at the word's last piece ≤ target.
    size_of_token_word = np.take_along_axis(word_size, np.where(sorted_candidate, sorted_word, width), axis=1)
    is_first_piece = np.ones_like(sorted_candidate)
    is_first_piece[:, 1:] = sorted_word[:, 1:] != sorted_word[:, :-1]
    word_end_running = np.where(is_first_piece, running - 1 + size_of_token_word, 0)
    word_end_running = np.maximum.accumulate(word_end_running, axis=1)
    fits = sorted_candidate & (word_end_running <= targets[:, None])
    # Prefix rule = BERT's rule until the first word that does not fit; rows where BERT would skip it and go on
    # to smaller words are finished below, one at a time (only a few rows: words of several pieces at the end).
    chosen_sorted = fits & (np.cumsum(~fits & sorted_candidate, axis=1) == 0)
    chosen = np.zeros_like(candidate)
    np.put_along_axis(chosen, order, chosen_sorted, axis=1)
    unfinished = np.flatnonzero((chosen.sum(axis=1) < targets) & (candidate.sum(axis=1) > chosen.sum(axis=1)))
    for row in unfinished:
        _finish_row(chosen[row], candidate[row], word_index[row], word_size[row], order[row], int(targets[row]))
    return chosen


def _finish_row(
    chosen: np.ndarray,
    candidate: np.ndarray,
    word_index: np.ndarray,
    word_size: np.ndarray,
    order: np.ndarray,
    target: int,
) -> None:
    """Continue BERT's walk over one row's words in random order, skipping words that would overshoot."""
    taken = int(chosen.sum())
    seen: set[int] = set()
    for token in order:
        if not candidate[token] or taken == target:
            break
        word = int(word_index[token])
        if word in seen:
            continue
        seen.add(word)
        if chosen[token] or taken + int(word_size[word]) > target:
            continue
        chosen |= candidate & (word_index == word)
        taken += int(word_size[word])


def mask_rows(
    rows: np.ndarray,
    lengths: np.ndarray,
    rng: np.random.Generator,
    tables: MaskingTables,
    masked_lm_prob: float,
    max_predictions: int,
    whole_word: bool,
) -> MaskedRows:
    """Mask every row of ``rows`` (N, L); returns new arrays, ``rows`` is not modified."""
    count, width = rows.shape
    lengths = np.asarray(lengths, dtype=np.int64)
    candidate = (np.arange(width)[None, :] < lengths[:, None]) & ~tables.is_special[rows]
    targets = np.minimum(max_predictions, np.maximum(1, np.rint(lengths * masked_lm_prob).astype(np.int64)))
    targets = np.minimum(targets, candidate.sum(axis=1))
    if whole_word:
        chosen = _select_words(candidate, _word_starts(rows, candidate, tables), targets, rng)
    else:
        chosen = _select_tokens(candidate, targets, rng)
    row_index, column = np.nonzero(chosen)  # row-major: positions ascend within each row
    original = rows[row_index, column]
    decision = rng.random(len(row_index))
    replaced = tables.replacement_ids[rng.integers(0, len(tables.replacement_ids), len(row_index))]
    new_values = np.where(decision < 0.8, tables.mask_id, np.where(decision < 0.9, original, replaced))
    masked = rows.copy()
    masked[row_index, column] = new_values.astype(rows.dtype)
    counts = chosen.sum(axis=1)
    slot = np.arange(len(row_index)) - np.repeat(np.cumsum(counts) - counts, counts)
    positions = np.zeros((count, max_predictions), dtype=np.uint16)
    labels = np.zeros((count, max_predictions), dtype=rows.dtype)
    positions[row_index, slot] = column
    labels[row_index, slot] = original
    return MaskedRows(masked, positions, labels, counts.astype(np.uint16))


IGNORE_INDEX = -100  # label of an unused slot: cross-entropy's ignore_index (model.pretraining's, without torch)
PAD_TO_MULTIPLE_OF = 8  # batch widths are rounded up to this (tensor-core and vector-unit friendly)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def batch_width(longest: int, limit: int) -> int:
    """Columns of a batch whose longest row has ``longest`` tokens: rounded up to ``PAD_TO_MULTIPLE_OF``, at most
    ``limit``. Trimming to the longest row costs nothing for packed rows (~full) and saves a lot for short pairs."""
    return min(limit, round_up(longest, PAD_TO_MULTIPLE_OF))


def batch_arrays(
    rows: np.ndarray,
    lengths: np.ndarray,
    segment_a_lengths: np.ndarray,
    masked: MaskedRows | None = None,
    is_random_next: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The int64 arrays the model takes for ``rows`` (B, L), or for ``masked.input_ids`` when ``masked`` is given.

    Keys and shapes (P = the batch's most masked row): input_ids, attention_mask, token_type_ids (B, L);
    masked_lm_positions, masked_lm_labels (B, P), labels ``IGNORE_INDEX`` in unused slots (only with ``masked``);
    next_sentence_label (B,), 1 = random next, ``IGNORE_INDEX`` where ``is_random_next`` holds ``NO_NSP_LABEL``
    (masked LM only; only with ``is_random_next``).
    """
    positions = np.arange(rows.shape[1])
    lengths = np.asarray(lengths, dtype=np.int64)
    attention_mask = positions[None, :] < lengths[:, None]
    token_type_ids = (positions[None, :] >= np.asarray(segment_a_lengths, dtype=np.int64)[:, None]) & attention_mask
    batch = {
        "input_ids": (rows if masked is None else masked.input_ids).astype(np.int64),
        "attention_mask": attention_mask.astype(np.int64),
        "token_type_ids": token_type_ids.astype(np.int64),
    }
    if masked is not None:
        counts = np.asarray(masked.counts, dtype=np.int64)
        slots = max(1, int(counts.max()))
        real = np.arange(slots)[None, :] < counts[:, None]
        # Widen before inserting -100: uint16 labels would wrap it to 65436.
        labels = np.asarray(masked.labels[:, :slots], dtype=np.int64)
        batch["masked_lm_positions"] = np.where(real, masked.positions[:, :slots], 0).astype(np.int64)
        batch["masked_lm_labels"] = np.where(real, labels, IGNORE_INDEX)
    if is_random_next is not None:
        labels = np.asarray(is_random_next, dtype=np.int64)
        batch["next_sentence_label"] = np.where(labels == NO_NSP_LABEL, IGNORE_INDEX, labels)
    return batch


MASKING_STREAM = 0x4D41534B  # "MASK": keeps these generators apart from every other stream drawn from the seed

RowMasker = Callable[[np.ndarray, np.ndarray, np.ndarray], MaskedRows]  # (rows, lengths, indices) → masked


def masking_tables(facts: TokenizerFacts, tokenizer: Any | None) -> MaskingTables:
    """Special-token, continuation and replacement tables of the tokenizer ``facts`` describe.

    ``tokenizer`` (whose vocabulary gives the '##' pieces) is needed for whole-word masking only."""
    special = special_table(facts)
    continuation = (
        continuation_table(tokenizer, facts) if tokenizer is not None else np.zeros(facts.vocab_size, dtype=bool)
    )
    return MaskingTables(
        is_special=special,
        is_continuation=continuation,
        replacement_ids=np.flatnonzero(~special),
        mask_id=facts.mask_token_id,
    )


@dataclass(frozen=True)
class DynamicMasking:
    """A run's masking rule (``mask_rows``'s settings) and seed; built once, shared read-only.

    At batch time (dynamic masking) ``mask`` draws from a generator keyed by the batch; pregeneration applies the
    same rule with each shard's own generator (``mask_with``)."""

    tables: MaskingTables
    masked_lm_prob: float  # share of each row's tokens (special tokens counted) to predict
    max_predictions: int  # at most this many per row (the data's max_predictions_per_seq)
    whole_word: bool  # mask every piece of a WordPiece word together
    seed: int

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], seed: int, tokenizer: Any | None = None) -> DynamicMasking:
        """The masking the data was pregenerated to receive; ``tokenizer`` is needed with whole-word masking."""
        generation = manifest.get("generation", {})
        whole_word = bool(generation.get("do_whole_word_mask", False))
        if whole_word and tokenizer is None:
            raise UserError("whole-word dynamic masking needs the tokenizer's vocabulary; pass the tokenizer")
        facts = TokenizerFacts.from_json(manifest["tokenizer"])
        return cls(
            tables=masking_tables(facts, tokenizer if whole_word else None),
            masked_lm_prob=float(generation.get("masked_lm_prob", 0.15)),
            max_predictions=int(manifest["max_predictions_per_seq"]),
            whole_word=whole_word,
            seed=seed,
        )

    def generator(self, epoch: int, indices: np.ndarray) -> np.random.Generator:
        """The generator of the batch of instances ``indices`` in training epoch ``epoch`` (order-independent)."""
        entropy = [self.seed, MASKING_STREAM, epoch, *np.sort(np.asarray(indices, dtype=np.int64)).tolist()]
        return np.random.default_rng(entropy)

    def mask(self, rows: np.ndarray, lengths: np.ndarray, epoch: int, indices: np.ndarray) -> MaskedRows:
        """Masked copies of ``rows`` (N, L), the rows of instances ``indices`` of training epoch ``epoch``."""
        if len(rows) != len(indices):
            raise ValueError(f"{len(rows)} rows but {len(indices)} instance indices")
        return self.mask_with(self.generator(epoch, indices), rows, lengths)

    def mask_with(self, rng: np.random.Generator, rows: np.ndarray, lengths: np.ndarray) -> MaskedRows:
        """Masked copies of ``rows`` (N, L) drawn from ``rng`` (pregeneration passes each shard's generator)."""
        return mask_rows(rows, lengths, rng, self.tables, self.masked_lm_prob, self.max_predictions, self.whole_word)

    def for_epoch(self, epoch: int) -> RowMasker:
        """``mask`` with the epoch fixed: the function ``loader.collate_rows`` takes."""

        def mask_in_epoch(rows: np.ndarray, lengths: np.ndarray, indices: np.ndarray) -> MaskedRows:
            return self.mask(rows, lengths, epoch, indices)

        return mask_in_epoch
