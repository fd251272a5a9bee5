"""Making one epoch: shards of documents become instances in worker processes, then one set of arrays.

Work is cut into shards of whole documents (~256k tokens each; boundaries depend on the corpus only). Shard ``s``
of corpus ``c`` in epoch ``e`` draws from its own random stream ``SeedSequence([seed, stream, e, c, s])``, so the
bytes of an epoch do not depend on how many workers made it. A worker makes its shard's rows by the context's
``InstanceRecipe``, masks them (unless the trainer will) and writes them into ``epoch_XXX.partial/``; once all
shards of the epoch are in, they are concatenated in order into the final arrays (with SHA-256 checksums),
``epoch.json`` is written, and the directory is renamed to ``epoch_XXX``.

    run_shard(ShardTask(epoch_directory, stream, epoch, shard, first, end), context)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bert_domain_ft.data.document_store import DocumentStore, open_document_store
from bert_domain_ft.data.epoch_format import EPOCH_DESCRIPTION_NAME, NO_NSP_LABEL, describe_arrays
from bert_domain_ft.data.instances import DocumentPool, InstanceRecipe
from bert_domain_ft.data.masking import DynamicMasking
from bert_domain_ft.files import (
    NpyAppender,
    fresh_directory,
    os_errors_as_user_errors,
    replace_directory,
    write_json_atomic,
)

TOKENS_PER_SHARD = 1 << 18
LABELS_PER_COUNT = 1 << 23  # NSP labels counted at a time for the statistics (64 MiB of int64 counts at most)
TRAINING_STREAM = 1
HOLDOUT_STREAM = 2


@dataclass(frozen=True)
class GenerationContext:
    """Everything a worker needs, read-only; inherited by forked workers (memmaps are shared, not copied)."""

    store: DocumentStore
    store_directory: Path | None  # set when the store is on disk (--reduce_memory)
    pools: dict[tuple[int, int], DocumentPool]  # by (stream, corpus): training or held-out documents of a corpus
    recipe: InstanceRecipe  # "nsp": BERT pairs; "mlm": packed contiguous text, no NSP labels
    masking: DynamicMasking  # the rule; its seed is the run's, which every shard's random stream starts from
    dynamic_masking: bool  # training masks are drawn by the trainer per batch, not stored

    @property
    def several_corpora(self) -> bool:
        return len({corpus for _, corpus in self.pools}) > 1


@dataclass(frozen=True)
class ShardTask:
    directory: Path  # the epoch's .partial directory
    stream: int
    epoch: int
    shard: int
    first_position: int  # pool positions [first_position, end_position)
    end_position: int
    num_tokens: int  # for progress
    documents: np.ndarray | None = None  # "mlm": the shard's store documents in this epoch's order
    corpus: int = 0  # which named corpus (pools are per stream and corpus)
    corpus_shard: int = 0  # the shard's number within its corpus: part of its random stream


def shard_boundaries(store: DocumentStore, documents: np.ndarray) -> list[int]:
    """Positions in ``documents`` where shards start (plus the end), cutting after ~``TOKENS_PER_SHARD`` tokens."""
    tokens_per_shard = TOKENS_PER_SHARD
    tokens = store.document_token_counts()[documents]
    cumulative = np.cumsum(tokens)
    cuts = np.searchsorted(cumulative, np.arange(tokens_per_shard, int(cumulative[-1]), tokens_per_shard), side="left")
    return sorted({0, *(int(cut) + 1 for cut in cuts), len(documents)})


def _shard_path(directory: Path, shard: int, name: str) -> Path:
    return directory / f"shard_{shard:05d}.{name}.npy"


def _shard_store(context: GenerationContext) -> DocumentStore:
    """The store for one shard. On disk, a fresh memmap per shard: its pages are unmapped when the shard is done,
    so resident memory stays flat instead of growing to the size of the corpus as every page gets touched."""
    return context.store if context.store_directory is None else open_document_store(context.store_directory)


def run_shard(task: ShardTask, context: GenerationContext) -> dict[str, Any]:
    """Generate and mask the instances of one shard; write them beside the epoch; return counts."""
    rng = np.random.default_rng([context.masking.seed, task.stream, task.epoch, task.corpus, task.corpus_shard])
    positions = range(task.first_position, task.end_position)
    pool = context.pools[(task.stream, task.corpus)]
    arrays = context.recipe.rows(_shard_store(context), pool, positions, task.documents, rng)
    # The held-out set is always masked once, here: evaluation must see the same masks every time.
    if not context.dynamic_masking or task.stream == HOLDOUT_STREAM:
        masked = context.masking.mask_with(rng, arrays["input_ids"], arrays["lengths"])
        arrays.update(
            input_ids=masked.input_ids, masked_positions=masked.positions, masked_labels=masked.labels,
            num_masked=masked.counts,
        )  # fmt: skip
    if context.several_corpora:
        arrays["corpus_ids"] = np.full(len(arrays["input_ids"]), task.corpus, dtype=np.uint8)
    with os_errors_as_user_errors(task.directory):
        for name, array in arrays.items():
            np.save(_shard_path(task.directory, task.shard, name), array)
    return {"instances": len(arrays["input_ids"]), "tokens": task.num_tokens}


def _nsp_statistics(directory: Path) -> dict[str, Any]:
    """The share of "random next" among the instances that carry an NSP label, and how many do and do not
    (``NO_NSP_LABEL``: masked LM only); all None without NSP labels ("mlm"). Counted in chunks: ``bincount``
    would otherwise copy the whole memmapped array to 8-byte integers."""
    path = directory / "is_random_next.npy"
    if not path.exists():
        return {"random_next_fraction": None, "nsp_labelled_instances": None, "mlm_only_instances": None}
    labels = np.load(path, mmap_mode="r")
    counts = np.zeros(NO_NSP_LABEL + 1, dtype=np.int64)
    for start in range(0, len(labels), LABELS_PER_COUNT):
        counts += np.bincount(labels[start : start + LABELS_PER_COUNT], minlength=NO_NSP_LABEL + 1)[: NO_NSP_LABEL + 1]
    labelled = int(counts[0] + counts[1])
    return {
        "random_next_fraction": float(counts[1] / labelled) if labelled else None,
        "nsp_labelled_instances": labelled,
        "mlm_only_instances": int(counts[NO_NSP_LABEL]),
    }


def _statistics(directory: Path, max_seq_len: int) -> dict[str, Any]:
    def mean_of(name: str) -> float | None:
        path = directory / f"{name}.npy"
        if not path.exists():
            return None  # no stored masks (dynamic masking)
        values = np.load(path, mmap_mode="r")
        return float(values.mean()) if len(values) else 0.0

    lengths = np.load(directory / "lengths.npy", mmap_mode="r")
    count = len(lengths)
    return {
        "num_instances": count,
        "packing_fill": float(lengths.sum(dtype=np.int64) / (count * max_seq_len)) if count else 0.0,
        **_nsp_statistics(directory),
        "mean_masked_per_instance": mean_of("num_masked"),
        "num_tokens": int(lengths.sum(dtype=np.int64)),
    }


def assemble_epoch(
    directory: Path, final: Path, num_shards: int, names: tuple[str, ...], max_seq_len: int, extra: dict[str, Any]
) -> dict[str, Any]:
    """Concatenate the shards in ``directory`` into the epoch's arrays, describe them, rename to ``final``."""
    checksums: dict[str, str] = {}
    for name in names:
        first = np.load(_shard_path(directory, 0, name), mmap_mode="r")
        with NpyAppender(directory / f"{name}.npy", first.dtype, first.shape[1:]) as output:
            for shard in range(num_shards):
                path = _shard_path(directory, shard, name)
                output.append(np.load(path, mmap_mode="r"))
        checksums[name] = output.sha256 or ""
        for shard in range(num_shards):
            _shard_path(directory, shard, name).unlink()
    statistics = _statistics(directory, max_seq_len)
    description = {"statistics": statistics, "arrays": describe_arrays(directory, names, checksums), **extra}
    write_json_atomic(directory / EPOCH_DESCRIPTION_NAME, description)
    replace_directory(directory, final)
    return statistics


def read_complete_epoch(final: Path) -> dict[str, Any] | None:
    """Statistics of an already complete epoch directory (for --resume), or None when it is not complete."""
    description_path = final / EPOCH_DESCRIPTION_NAME
    if not description_path.exists():
        return None
    description = json.loads(description_path.read_text(encoding="utf-8"))
    for name, record in description["arrays"].items():
        path = final / f"{name}.npy"
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            return None
        if list(array.shape) != record["shape"]:
            return None
    return description["statistics"]


def fresh_partial_directory(final: Path) -> Path:
    partial = final.with_name(final.name + ".partial")
    with os_errors_as_user_errors(partial):
        fresh_directory(partial)  # a link planted at the name is removed, never written through
    return partial
