"""Two-sentence next-sentence-prediction pairs made on the fly: per-epoch sampling, length grouping, masked batches.

The rule (the original ``simple_lm_finetuning`` script's): instance ``i`` of every epoch starts at the ``i``-th
sentence that has a successor in its document. Per epoch, with probability 0.5 its second segment is that
successor ("is next"), otherwise a sentence drawn uniformly from all sentences of *other* documents ("random
next", label 1). Last sentences and one-sentence documents never start an instance (they have no true successor,
so giving them only random partners would skew the labels away from 50/50); they still serve as second segments.
Masked LM only (``with_nsp=False``: simple's objective "mlm") pairs every such sentence with its successor.

A task's own text (``--task_data``, TAPT) is the store's last corpus and adds ``num_task_instances`` pairs after the
corpus's own, so that they are ``task_share`` of every epoch while the corpus is still walked once. Every task
sentence can start one (a one-sentence row is the typical task text): with a successor in its row the 50/50 rule
applies; without one its partner is random and the pair has no NSP label (masked LM only, ``NO_NSP_LABEL``: as
"random next" every time, one-sentence rows taught the NSP head a constant). Partners come from other task rows,
and the corpus's instances draw random partners from the corpus only. The task's starting sentences are repeated
as often as needed in an order drawn per epoch; each repeat gets its own partner draw, and masks are drawn per
batch anyway.

An epoch is a pure function of ``(seed, epoch)``, drawn in a handful of numpy calls over sentence indices; only
the index (sentence and document offsets) is in RAM. Token ids are read and masked when a batch is built, with
the batch-time masking of ``masking.DynamicMasking`` (its generator is keyed by seed, epoch and the batch's instances):
every epoch sees fresh masks, and a resumed run sees exactly the batches it would have seen. Pairs longer than
``max_seq_len`` are truncated and masked by the pregeneration stage's own code (``instances.truncate_pairs``,
``masking.mask_rows``).

    index = PairIndex.from_store(store)
    pairs = sample_epoch_pairs(index, seed=42, epoch=0)
    batch = assemble_batch(store, index, pairs, np.array([3, 9]), layout, masking, epoch=0)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from bert_domain_ft.data.document_store import DocumentStore
from bert_domain_ft.data.instances import (
    SPECIAL_TOKENS_PER_PAIR,
    PairSpans,
    RowLayout,
    assemble_pairs,
    nsp_labels,
    truncate_pairs,
)
from bert_domain_ft.data.masking import DynamicMasking, batch_arrays, batch_width
from bert_domain_ft.errors import UserError

logger = logging.getLogger(__name__)

BATCHES_PER_LENGTH_GROUP = 100  # length grouping sorts within runs of this many batches of a shuffled order

# Independent random streams per epoch: SeedSequence([seed, epoch, stream]). Batches draw from the stream of
# DynamicMasking.generator(epoch, instances), which is keyed differently again.
PAIR_STREAM = 1
ORDER_STREAM = 2
TASK_STREAM = 3


def _log_task_labels(num_rows: int, num_sentences: int, task_share: float) -> None:
    """Say how many task pairs carry no NSP label (those started by a row's last sentence); warn when none does
    and nothing else is trained on."""
    nothing_labelled = task_share >= 1.0 and num_rows == num_sentences
    (logger.warning if nothing_labelled else logger.info)(
        "task text: %d of its %d sentences end their row: the pairs they start are masked-LM only (no next-sentence "
        "label)%s", num_rows, num_sentences,
        "; at --task_share 1 next-sentence prediction is not trained" if nothing_labelled else "",
    )  # fmt: skip


@dataclass(frozen=True)
class PairIndex:
    """The part of the corpus that sampling keeps in RAM: offsets only, never tokens (O(sentences) memory)."""

    sentence_offsets: np.ndarray  # (S + 1,) int64 token offset of each sentence (RAM copy)
    document_offsets: np.ndarray  # (D + 1,) int64 first sentence of each document (RAM copy)
    first_sentences: np.ndarray  # (N,) int64 the corpus sentences that start an instance: those with a successor
    task_first_sentence: int = -1  # sentences from here on are the task's (-1: no task text); S when none
    num_task_instances: int = 0  # task pairs per epoch

    @classmethod
    def from_store(cls, store: DocumentStore, task_share: float | None = None) -> PairIndex:
        """Copy the offsets out of ``store`` (sequential reads when it is on disk) and find the starting sentences.

        With ``task_share`` the store's last corpus is the task text: it adds
        ``round(task_share / (1 - task_share) * N)`` pairs to the corpus's N (share 1: N task pairs, none of the
        corpus), so that the task is ``task_share`` of every epoch."""
        sentence_offsets = np.array(store.sentence_offsets, dtype=np.int64)
        document_offsets = np.array(store.document_offsets, dtype=np.int64)
        has_successor = np.ones(len(sentence_offsets) - 1, dtype=bool)
        has_successor[document_offsets[1:] - 1] = False  # the last sentence of every document
        task_first_sentence = -1
        if task_share is not None:
            assert store.corpus_document_offsets is not None and len(store.corpus_document_offsets) > 2
            task_first_sentence = int(document_offsets[store.corpus_document_offsets[-2]])
            has_successor[task_first_sentence:] = False  # task pairs are drawn apart (sample_task_pairs)
        first_sentences = np.flatnonzero(has_successor)
        if len(first_sentences) == 0:
            raise UserError(
                "no document of the corpus has two sentences, so there is no next-sentence pair; put one sentence "
                "per line and keep the sentences of a document together (blank lines only between documents)"
            )
        if task_share is None:
            return cls(sentence_offsets, document_offsets, first_sentences)
        count = len(first_sentences)
        task_count = count if task_share >= 1.0 else round(task_share / (1.0 - task_share) * count)
        if task_share >= 1.0:
            first_sentences = first_sentences[:0]  # only the task is trained on
        _log_task_labels(len(document_offsets) - 1 - int(store.corpus_document_offsets[-2]),
                         len(sentence_offsets) - 1 - task_first_sentence, task_share)  # fmt: skip
        return cls(sentence_offsets, document_offsets, first_sentences, task_first_sentence, max(1, task_count))

    @property
    def num_instances(self) -> int:
        return len(self.first_sentences) + self.num_task_instances

    @property
    def num_sentences(self) -> int:
        return len(self.sentence_offsets) - 1

    @property
    def num_corpus_sentences(self) -> int:
        """Sentences before the task's (all of them without task text): the corpus's random partners."""
        return self.task_first_sentence if self.task_first_sentence >= 0 else self.num_sentences

    def document_of(self, sentences: np.ndarray) -> np.ndarray:
        """Document index of each sentence."""
        return np.searchsorted(self.document_offsets, sentences, side="right") - 1

    def sentence_lengths(self, sentences: np.ndarray) -> np.ndarray:
        return self.sentence_offsets[sentences + 1] - self.sentence_offsets[sentences]


@dataclass(frozen=True)
class EpochPairs:
    """One epoch's instances as sentence indices: instance ``i`` is sentence ``first[i]`` then ``second[i]``."""

    first: np.ndarray  # (N,) int64
    second: np.ndarray  # (N,) int64
    is_random_next: np.ndarray  # (N,) bool: the second sentence is another document's
    has_nsp_label: np.ndarray | None = None  # (N,) bool: False for task sentences that end their row; None: all

    def __len__(self) -> int:
        return len(self.first)

    def nsp_labels(self) -> np.ndarray:
        """(N,) uint8: 0 is next, 1 random next, ``NO_NSP_LABEL`` masked LM only (``instances.nsp_labels``)."""
        return nsp_labels(self.is_random_next, self.has_nsp_label)


def random_next_probability(with_nsp: bool) -> float:
    """0.5 for NSP pairs; 0 for masked LM only, drawn all the same so that an epoch's other draws do not change."""
    return 0.5 if with_nsp else 0.0


def _partners(
    index: PairIndex, first: np.ndarray, is_random: np.ndarray, draws: np.ndarray, pool: tuple[int, int]
) -> np.ndarray:
    """The successor of each ``first`` sentence, or where ``is_random`` a sentence of ``pool`` = [start, end)
    outside its own document (uniform: draw among the others, then step over the own range)."""
    start, end = pool
    document = index.document_of(first)
    own_first = index.document_offsets[document] - start
    own_count = index.document_offsets[document + 1] - index.document_offsets[document]
    others = end - start - own_count  # ≥ 1: the store guarantees two documents per corpus
    pick = np.minimum((draws * others).astype(np.int64), others - 1)
    pick = start + np.where(pick >= own_first, pick + own_count, pick)
    return np.where(is_random, pick, first + 1)


def sample_epoch_pairs(index: PairIndex, seed: int, epoch: int, with_nsp: bool = True) -> EpochPairs:
    """Draw epoch ``epoch``'s partners: the successor with probability 0.5, else a sentence of another document;
    then the task's pairs, if any, after the corpus's (``sample_task_pairs``). Without ``with_nsp`` (masked LM
    only) every partner that can be the successor is: the masked words are predicted from contiguous text."""
    rng = np.random.default_rng([seed, epoch, PAIR_STREAM])
    first = index.first_sentences
    is_random = rng.random(len(first)) < random_next_probability(with_nsp)
    draws = rng.random(len(first))
    second = _partners(index, first, is_random, draws, (0, index.num_corpus_sentences))
    if index.num_task_instances == 0:
        return EpochPairs(first, second, is_random)
    task = sample_task_pairs(index, seed, epoch, with_nsp)
    assert task.has_nsp_label is not None
    return EpochPairs(
        np.concatenate([first, task.first]),
        np.concatenate([second, task.second]),
        np.concatenate([is_random, task.is_random_next]),
        np.concatenate([np.ones(len(first), dtype=bool), task.has_nsp_label]),
    )


def sample_task_pairs(index: PairIndex, seed: int, epoch: int, with_nsp: bool = True) -> EpochPairs:
    """The ``num_task_instances`` task pairs of epoch ``epoch``: the task's sentences in an order drawn per epoch,
    repeated as needed; a sentence without a successor in its row is paired at random and gets no NSP label."""
    rng = np.random.default_rng([seed, epoch, TASK_STREAM])
    sentences = np.arange(index.task_first_sentence, index.num_sentences, dtype=np.int64)
    order = np.concatenate([rng.permutation(sentences) for _ in range(-(-index.num_task_instances // len(sentences)))])
    first = order[: index.num_task_instances]
    last_of_row = np.isin(first + 1, index.document_offsets)  # the next sentence starts a row (or is the end)
    is_random = last_of_row | (rng.random(len(first)) < random_next_probability(with_nsp))
    draws = rng.random(len(first))
    second = _partners(index, first, is_random, draws, (index.task_first_sentence, index.num_sentences))
    return EpochPairs(first, second, is_random, has_nsp_label=~last_of_row)


def pair_lengths(index: PairIndex, pairs: EpochPairs, max_seq_len: int) -> np.ndarray:
    """(N,) int64 length of each instance's row after truncation, special tokens included."""
    content = index.sentence_lengths(pairs.first) + index.sentence_lengths(pairs.second)
    return np.minimum(content, max_seq_len - SPECIAL_TOKENS_PER_PAIR) + SPECIAL_TOKENS_PER_PAIR


def length_grouped_order(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of the instances whose consecutive runs of ``batch_size`` have similar lengths.

    A shuffled order is cut into groups of ``BATCHES_PER_LENGTH_GROUP`` batches, each group is sorted by length
    and cut into batches, and the full batches are shuffled (the partial last batch stays last, so that cutting
    the order into ``batch_size`` runs from the start gives exactly these batches). Deterministic in (seed, epoch).
    """
    count = len(lengths)
    rng = np.random.default_rng([seed, epoch, ORDER_STREAM])
    shuffled = rng.permutation(count)
    group = np.arange(count) // (batch_size * BATCHES_PER_LENGTH_GROUP)
    grouped = shuffled[np.lexsort((-lengths[shuffled], group))]  # by group, then longest first within it
    full = count // batch_size
    batches = rng.permutation(full)
    head = grouped[: full * batch_size].reshape(full, batch_size)[batches].ravel()
    return np.concatenate([head, grouped[full * batch_size :]])


def _spans(index: PairIndex, first: np.ndarray, second: np.ndarray, is_random: np.ndarray) -> PairSpans:
    offsets = index.sentence_offsets
    return PairSpans(offsets[first], offsets[first + 1], offsets[second], offsets[second + 1], is_random)


def assemble_batch(
    store: DocumentStore,
    index: PairIndex,
    pairs: EpochPairs,
    instances: np.ndarray,
    layout: RowLayout,
    masking: DynamicMasking,
    epoch: int,
) -> dict[str, np.ndarray]:
    """The masked batch of ``instances`` (indices into ``pairs``) of training epoch ``epoch``, as int64 arrays
    (layout: ``masking.batch_arrays``; the width is the longest row's, rounded up, at most max_seq_len).

    Truncation and masks draw from ``masking.generator(epoch, instances)``: the same batch is built the same way
    however often it is built (resume, prefetching), while every epoch masks afresh.
    """
    instances = np.asarray(instances, dtype=np.int64)
    rng = masking.generator(epoch, instances)
    spans = _spans(index, pairs.first[instances], pairs.second[instances], pairs.is_random_next[instances])
    max_num_tokens = layout.max_seq_len - SPECIAL_TOKENS_PER_PAIR
    truncated = PairSpans(
        *truncate_pairs(spans.a_start, spans.a_end, spans.b_start, spans.b_end, max_num_tokens, rng),
        is_random_next=spans.is_random_next,
    )
    longest = int(np.max(truncated.a_end - truncated.a_start + truncated.b_end - truncated.b_start))
    width = batch_width(longest + SPECIAL_TOKENS_PER_PAIR, layout.max_seq_len)
    rows, lengths, segment_a = assemble_pairs(store, truncated, width, layout.cls_id, layout.sep_id, layout.pad_id)
    masked = masking.mask_with(rng, rows, lengths)
    labelled = None if pairs.has_nsp_label is None else pairs.has_nsp_label[instances]
    return batch_arrays(rows, lengths, segment_a, masked, nsp_labels(truncated.is_random_next, labelled))
