"""Masking at batch time (RoBERTa's dynamic masking) for data pregenerated with ``--dynamic_masking``.

The rules are pregeneration's own (``masking.mask_rows``: the same share of tokens, 80% mask / 10% random /
10% kept, never a special token, whole words when the data asked for it), with the settings read from the
manifest. Each batch draws from its own generator, seeded by (seed, training epoch, the batch's instance
indices): a batch is masked the same way however often it is built (exact resume, any prefetching, any process),
while the same instance gets fresh masks in every epoch. Pure numpy.

    masking = DynamicMasking.from_manifest(manifest, seed=42, tokenizer=tokenizer)
    masked = masking.mask(rows, lengths, epoch=0, indices=np.array([3, 17, 21]))   # a masking.MaskedRows
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import UserError
from .masking import MaskedRows, MaskingTables, mask_rows
from .tokenization import TokenizerFacts, continuation_table, special_table

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
    """Everything batch-time masking needs; built once per run, shared read-only by the loader thread."""

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
        rng = self.generator(epoch, indices)
        return mask_rows(rows, lengths, rng, self.tables, self.masked_lm_prob, self.max_predictions, self.whole_word)

    def for_epoch(self, epoch: int) -> RowMasker:
        """``mask`` with the epoch fixed: the function ``batches.collate_rows`` takes."""

        def mask_in_epoch(rows: np.ndarray, lengths: np.ndarray, indices: np.ndarray) -> MaskedRows:
            return self.mask(rows, lengths, epoch, indices)

        return mask_in_epoch
