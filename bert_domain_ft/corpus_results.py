"""Evaluation per corpus of data drawn from several named corpora: batches that never mix corpora, and the table.

Held-out instances of several corpora carry ``corpus_ids`` (epoch_format.py). Evaluating them in batches of one
corpus each makes every batch's loss and counts belong to exactly one corpus, so the per-corpus sums (and the
overall ones, which are their total) stay exact without any per-row bookkeeping. Pure numpy and text.

    for corpus, rows in batches_by_corpus(epoch.corpus_ids, epoch.num_instances, batch_size=64): ...
    print(format_corpus_table({"zul": {...}, "xho": {...}}))
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from .text_table import render_table

# Per-corpus columns of the table (the overall table above it has NSP rows when there are NSP labels).
CORPUS_COLUMNS = (("mlm_loss", "MLM loss"), ("perplexity", "perplexity"), ("mlm_accuracy", "MLM accuracy"))


def batches_by_corpus(
    corpus_ids: np.ndarray | None, num_instances: int, batch_size: int
) -> Iterator[tuple[int | None, np.ndarray]]:
    """(corpus index, row indices) of consecutive batches; each batch within one corpus (None: a single corpus)."""
    if corpus_ids is None:
        for start in range(0, num_instances, batch_size):
            yield None, np.arange(start, min(start + batch_size, num_instances))
        return
    corpus_ids = np.asarray(corpus_ids)
    for corpus in np.unique(corpus_ids):
        members = np.flatnonzero(corpus_ids == corpus)
        for start in range(0, len(members), batch_size):
            yield int(corpus), members[start : start + batch_size]


def corpus_names(manifest: Mapping[str, Any] | None, count: int) -> list[str]:
    """Names of the manifest's corpora (``corpus_<i>`` when it names fewer than ``count``)."""
    corpora = list((manifest or {}).get("corpora") or [])
    if len(corpora) >= count:
        return [str(corpus["name"]) for corpus in corpora]
    return [f"corpus_{index}" for index in range(count)]


FLAT_KEYS = ("mlm_loss", "perplexity", "mlm_accuracy", "nsp_loss", "nsp_accuracy")


def flatten_corpus_metrics(corpora: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """``{"zul/mlm_loss": 2.1, …}``: per-corpus metrics as flat keys, for ``metrics.jsonl`` records."""
    return {
        f"{name}/{key}": float(values[key])
        for name, values in corpora.items()
        for key in FLAT_KEYS
        if values.get(key) is not None
    }


def _cell(key: str, value: float) -> str:
    if key.endswith("accuracy"):
        return f"{100 * value:.2f}%"
    if key == "perplexity":
        return f"{value:,.2f}" if math.isfinite(value) else "inf"
    return f"{value:.4f}"


def format_corpus_table(corpora: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per corpus: instances, MLM loss (nats/token), perplexity, MLM accuracy."""
    header = ["corpus", "instances", *(label for _, label in CORPUS_COLUMNS)]
    rows = [header]
    for name, values in corpora.items():
        cells = [_cell(key, float(values[key])) for key, _ in CORPUS_COLUMNS]
        rows.append([name, f"{int(values['num_instances']):,}", *cells])
    return render_table(rows)
