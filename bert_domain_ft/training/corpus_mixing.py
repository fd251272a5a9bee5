"""The training order of an epoch drawn from several corpora with the manifest's sampling probabilities.

Pregenerated data from several named corpora holds each corpus in its natural proportion; training draws from
them with ``manifest["corpora"][i]["sampling_probability"]`` instead (``mixing.mixed_order``: small corpora are
repeated, large ones subsampled, the epoch keeps its number of instances). With ``one_corpus_per_batch`` every
block of ``batch_size`` consecutive instances of the order (one optimizer step of all processes) comes from a
single corpus. The order is a pure function of (seed, epoch), like the usual shuffle, so exact resume holds.

    mixing = CorpusMixing(seed=42, batch_size=64, one_corpus_per_batch=True)
    order = mixing.order(corpus_ids, manifest, epoch=0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UserError
from ..mixing import mixed_order

MIXING_STREAM = 0x4D4958  # "MIX": keeps this generator apart from the shuffle and masking streams of the seed


def corpus_probabilities(manifest: dict[str, Any]) -> np.ndarray | None:
    """Sampling probability of each corpus (manifest order), or None for data with a single corpus."""
    corpora = manifest.get("corpora") or []
    if len(corpora) < 2:
        return None
    probabilities = np.array([float(corpus["sampling_probability"]) for corpus in corpora])
    return probabilities / probabilities.sum()  # exact sum 1 for numpy's choice, whatever the JSON rounding


@dataclass(frozen=True)
class CorpusMixing:
    """How the training sampler mixes several corpora."""

    seed: int
    batch_size: int  # instances per optimizer step over all processes: the unit of one_corpus_per_batch
    one_corpus_per_batch: bool = False

    def order(self, corpus_ids: np.ndarray, manifest: dict[str, Any], epoch: int) -> np.ndarray | None:
        """Instance indices of training epoch ``epoch`` (may repeat), or None for single-corpus data."""
        probabilities = corpus_probabilities(manifest)
        if probabilities is None or corpus_ids is None:
            return None
        rng = np.random.default_rng([self.seed, epoch, MIXING_STREAM])
        corpus_ids = np.asarray(corpus_ids)
        empty = [corpus["name"] for index, corpus in enumerate(manifest["corpora"]) if not np.any(corpus_ids == index)]
        if empty:
            raise UserError(
                f"corpus {empty[0]} has no instances in this epoch but a sampling probability above zero; "
                "add text to it or leave it out of --train_corpus"
            )
        return mixed_order(corpus_ids, probabilities, self.batch_size, self.one_corpus_per_batch, rng)
