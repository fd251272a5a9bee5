"""Several corpora in one run, the task's own text among them: sampling probabilities and the training order.

Corpus i is drawn with probability p_i ∝ (n_i / Σn)^α (n = training tokens; α = ``sampling_exponent``): α = 1 keeps
the natural proportions, α → 0 makes every corpus equally likely, and XLM-R's 0.3 lifts small corpora (languages)
without drowning the large ones. The order of an epoch draws a corpus for every slot (or for every batch, with
``one_corpus_per_batch``) and takes that corpus's next instance from its own shuffled list, starting the list
again when it runs out, so small corpora are repeated and large ones subsampled (``mixed_order``).

A task's own text (``--task_data``, task-adaptive pretraining) is one more corpus, named "task" and never held
out. Its file is read once before anything is written (``read_task_sample``: a bad row is one line naming
``file:line``), then written in the corpus format (``task_files.write_task_corpus``) and tokenized after the
user's corpora. Training draws exactly ``task_share`` of each epoch from it and the other corpora the rest by the
exponent rule (``probabilities_with_task_share``). Because the task text is small, an epoch holds several copies
of it, each paired and masked afresh (``task_copies``, from the instances per token ``instances_per_token``
estimates), so that the other corpora are drawn about once per epoch and the task's repeats do not meet the same
masks again. Pure numpy; deterministic under the generator.

    order = mixed_order(corpus_ids, sampling_probabilities(tokens, 0.3), 32, one_corpus_per_batch=False, rng=rng)
    probabilities, copies = plan_task_mixing(training_tokens, rates, sampling_exponent=1.0, task_share=0.5)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from bert_domain_ft.corpus.task_files import TaskCorpusStats, iter_task_texts
from bert_domain_ft.data.document_store import DocumentStore
from bert_domain_ft.data.instances import DocumentPool, InstanceRecipe, create_pair_spans, pack_documents
from bert_domain_ft.errors import UserError

logger = logging.getLogger(__name__)


def sampling_probabilities(sizes: np.ndarray, exponent: float) -> np.ndarray:
    """p_i ∝ (n_i / Σn)^exponent, renormalised to sum to 1. Computed from logarithms, shifted so that the largest
    corpus has weight 1: (n_i / Σn)^exponent itself underflows to 0 for every corpus once the exponent is large
    (a few hundred), and 0/0 would be NaN probabilities."""
    sizes = np.asarray(sizes, dtype=np.float64)
    if np.any(sizes <= 0):
        raise ValueError("every corpus needs a positive size")
    if not np.isfinite(exponent) or exponent < 0:
        raise ValueError(
            f"the sampling exponent must be finite and ≥ 0 (1 = proportional, 0 = uniform), got {exponent}"
        )
    log_weights = exponent * (np.log(sizes) - np.log(sizes.max()))  # ≤ 0, exactly 0 for the largest corpus
    smoothed = np.exp(log_weights)
    return smoothed / smoothed.sum()


def check_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """``probabilities`` as float64 after checking that numpy can draw with them: finite, ≥ 0, with a positive sum
    (a ``ValueError`` saying so, instead of numpy's own from deep inside an epoch)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if not np.all(np.isfinite(probabilities)) or np.any(probabilities < 0) or probabilities.sum() <= 0:
        shown = ", ".join(f"{value:g}" for value in probabilities.tolist())
        raise ValueError(f"sampling probabilities [{shown}] must be finite, ≥ 0 and not all 0")
    return probabilities


def probabilities_with_task_share(sizes: np.ndarray, exponent: float, task_share: float) -> np.ndarray:
    """[(1 − task_share)·p_1, …, (1 − task_share)·p_k, task_share]: ``p`` by ``sampling_probabilities`` over the
    other corpora's ``sizes``; the task comes last. ``task_share`` 1 leaves the other corpora at probability 0."""
    if not 0.0 < task_share <= 1.0:
        raise ValueError("the task share must be in (0, 1]")
    others = sampling_probabilities(sizes, exponent)
    return np.append((1.0 - task_share) * others, task_share)


def task_copies(other_instances: float, task_instances: float, task_share: float, max_copies: int) -> int:
    """Copies of the task text per epoch, each paired and masked afresh, so that every draw meets a fresh one.

    Training draws ``task_share`` of an epoch's instances from the task and the rest from the other corpora, and
    an epoch has as many draws as instances. With k copies the other corpora are drawn about once each when
    k·task_instances = task_share / (1 − task_share) · other_instances. ``task_share`` 1 (no other corpus is
    drawn) makes as many task instances as the other corpora have, each then drawn about twice. At least 1, at
    most ``max_copies``; beyond it copies are drawn more than once and the other corpora less than once.
    """
    if task_instances <= 0 or other_instances < 0:
        raise ValueError("the task needs instances and the other corpora a count ≥ 0")
    ratio = 1.0 if task_share >= 1.0 else task_share / (1.0 - task_share)
    return int(min(max_copies, max(1, round(ratio * other_instances / task_instances))))


def mixed_order(
    corpus_ids: np.ndarray,
    probabilities: np.ndarray,
    batch_size: int,
    one_corpus_per_batch: bool,
    rng: np.random.Generator,
) -> np.ndarray:
    """Instance indices for one epoch of ``len(corpus_ids)`` draws (batch-aligned when one corpus per batch)."""
    corpus_ids = np.asarray(corpus_ids)
    probabilities = check_probabilities(probabilities)
    total = len(corpus_ids)
    members = [rng.permutation(np.flatnonzero(corpus_ids == corpus)) for corpus in range(len(probabilities))]
    if one_corpus_per_batch:
        batches = -(-total // batch_size)
        slots = np.repeat(rng.choice(len(probabilities), size=batches, p=probabilities), batch_size)[:total]
    else:
        slots = rng.choice(len(probabilities), size=total, p=probabilities)
    order = np.empty(total, dtype=np.int64)
    for corpus, indices in enumerate(members):
        where = np.flatnonzero(slots == corpus)
        if len(where) == 0:
            continue
        if len(indices) == 0:
            raise ValueError(f"corpus {corpus} has no instances but a sampling probability above zero")
        order[where] = indices[np.arange(len(where)) % len(indices)]
    return order


MAX_TASK_COPIES = 1000  # copies of the task text per epoch at most (each one shard at least: bounds the work)
TASK_SAMPLE_TEXTS = 1000  # task texts the tokenizer check looks at
ESTIMATE_DOCUMENTS = 2000  # documents per corpus whose instances are counted to estimate instances per token
ESTIMATE_STREAM = 0x455354  # "EST": the seed-sequence word of the estimate's draws, apart from every epoch's


def read_task_sample(task_data: Path, text_column: str) -> list[str]:
    """Read the whole task file (a bad row is a one-line ``UserError`` naming file:line); return its first texts
    for the tokenizer check. Two texts at least: NSP draws a random segment from another document."""
    sample: list[str] = []
    count = 0
    for row in iter_task_texts(task_data, text_column):
        count += 1
        if len(sample) < TASK_SAMPLE_TEXTS:
            sample.append(row.text)
    if count < 2:
        raise UserError(f"{task_data}: holds only one task text; --task_data needs at least two (one per row)")
    return sample


def instances_per_token(store: DocumentStore, documents: np.ndarray, recipe: InstanceRecipe, seed: int) -> float:
    """Instances one pass over ``documents`` makes per token, counted on up to ``ESTIMATE_DOCUMENTS`` of them
    drawn by seed (offsets only for "nsp"; "mlm" packs the sample). Short one-sentence rows make more instances
    per token than long documents, so the copies of a task are counted in instances, not tokens."""
    rng = np.random.default_rng([seed, ESTIMATE_STREAM])
    if len(documents) > ESTIMATE_DOCUMENTS:
        documents = np.sort(rng.choice(documents, size=ESTIMATE_DOCUMENTS, replace=False))
    tokens = int(store.document_token_counts()[documents].sum())
    max_seq_len = recipe.layout.max_seq_len
    if recipe.objective == "mlm":
        rows, _ = pack_documents(store, documents, max_seq_len, recipe.cross_document, 0, 0, 0)
        return len(rows) / tokens
    pool = DocumentPool.from_documents(store, documents)
    spans = create_pair_spans(store, pool, range(len(documents)), max_seq_len, recipe.short_seq_prob, rng)
    return len(spans) / tokens


def plan_task_mixing(
    training_tokens: np.ndarray, rates: np.ndarray, sampling_exponent: float, task_share: float
) -> tuple[np.ndarray, int]:
    """Sampling probabilities of the corpora (the task last, at ``task_share``) and the task's copies per epoch,
    from each corpus's training tokens and estimated instances per token."""
    probabilities = probabilities_with_task_share(training_tokens[:-1], sampling_exponent, task_share)
    other_instances = float(np.dot(training_tokens[:-1], rates[:-1]))
    task_instances = max(1.0, float(training_tokens[-1] * rates[-1]))
    copies = task_copies(other_instances, task_instances, task_share, MAX_TASK_COPIES)
    logger.info(
        "task text: %d tokens, %.0f%% of each epoch's training draws, %d fresh cop%s per epoch%s",
        int(training_tokens[-1]), 100 * task_share, copies, "y" if copies == 1 else "ies",
        " (the most made: copies are drawn more than once)" if copies == MAX_TASK_COPIES else "",
    )  # fmt: skip
    return probabilities, copies


def task_manifest_entry(
    task_data: Path, text_column: str, task_share: float, corpus_file: str, copies: int, stats: TaskCorpusStats
) -> dict[str, Any]:
    """The manifest's ``task_data``: where the task text came from, its share and copies, what was read."""
    return {
        "source": str(task_data),
        "text_column": text_column,
        "corpus_file": corpus_file,  # relative to the output directory
        "task_share": task_share,
        "copies_per_epoch": copies,
        "held_out": False,
        **stats.to_json(),
    }
