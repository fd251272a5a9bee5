"""Several corpora in one run: exponent-smoothed sampling probabilities and the training order they give.

Corpus i is drawn with probability p_i ∝ (n_i / Σn)^α (n = training tokens; α = ``sampling_exponent``): α = 1 keeps
the natural proportions, α → 0 makes every corpus equally likely, and XLM-R's 0.3 lifts small corpora (languages)
without drowning the large ones. The order of an epoch draws a corpus for every slot (or for every batch, with
``one_corpus_per_batch``) and takes that corpus's next instance from its own shuffled list, starting the list
again when it runs out, so small corpora are repeated and large ones subsampled. A task's own text
(``--task_data``, TAPT) gets a fixed share instead: ``probabilities_with_task_share`` gives it exactly that
probability and the other corpora the rest by the exponent rule; ``task_copies`` says how many freshly paired and
masked copies of it an epoch holds, so that its repeats are not the same masks again. Pure numpy; deterministic
under the generator.

    order = mixed_order(corpus_ids, sampling_probabilities(tokens, 0.3), batch_size=32, one_corpus_per_batch=False, rng=rng)
"""

from __future__ import annotations

import numpy as np


def sampling_probabilities(sizes: np.ndarray, exponent: float) -> np.ndarray:
    """p_i ∝ (n_i / Σn)^exponent, renormalised to sum to 1."""
    sizes = np.asarray(sizes, dtype=np.float64)
    if np.any(sizes <= 0):
        raise ValueError("every corpus needs a positive size")
    if exponent < 0:
        raise ValueError("the sampling exponent must be ≥ 0 (1 = proportional, 0 = uniform)")
    smoothed = (sizes / sizes.sum()) ** exponent
    return smoothed / smoothed.sum()


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
