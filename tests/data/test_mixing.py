"""Several corpora: the sampling formula, the observed mix of a training order, and multi-corpus pregeneration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tiny_assets

from bert_domain_ft.cli import pregenerate_training_data as classic_main
from bert_domain_ft.data.epoch_format import open_epoch, read_manifest
from bert_domain_ft.data.mixing import mixed_order, sampling_probabilities


def test_exponent_one_is_proportional_and_zero_is_uniform() -> None:
    sizes = np.array([900.0, 90.0, 10.0])
    assert np.allclose(sampling_probabilities(sizes, 1.0), sizes / sizes.sum())
    assert np.allclose(sampling_probabilities(sizes, 0.0), 1 / 3)
    assert np.allclose(sampling_probabilities(sizes, 1e-9), 1 / 3, atol=1e-6)


def test_worked_example_with_exponent_point_three() -> None:
    # q = (0.9, 0.1); q^0.3 = (0.96888, 0.50119); normalised: (0.65909, 0.34091)
    probabilities = sampling_probabilities(np.array([9_000, 1_000]), 0.3)
    assert probabilities == pytest.approx([0.65909, 0.34091], abs=1e-4)


def test_invalid_sizes_and_exponents_are_refused() -> None:
    with pytest.raises(ValueError):
        sampling_probabilities(np.array([1.0, 0.0]), 1.0)
    with pytest.raises(ValueError):
        sampling_probabilities(np.array([1.0, 2.0]), -0.5)


@pytest.mark.parametrize("one_corpus_per_batch", [False, True])
def test_observed_corpus_frequencies_match_the_probabilities(one_corpus_per_batch: bool) -> None:
    corpus_ids = np.repeat([0, 1, 2], [8000, 1500, 500])
    probabilities = sampling_probabilities(np.array([8000, 1500, 500]), 0.3)
    counts = np.zeros(3)
    for epoch in range(20):
        order = mixed_order(corpus_ids, probabilities, 16, one_corpus_per_batch, np.random.default_rng([1, epoch]))
        assert len(order) == len(corpus_ids)
        counts += np.bincount(corpus_ids[order], minlength=3)
        if one_corpus_per_batch:
            batches = corpus_ids[order][: len(order) // 16 * 16].reshape(-1, 16)
            assert np.all(batches == batches[:, :1]), "each batch comes from one corpus"
    assert counts / counts.sum() == pytest.approx(probabilities, abs=0.01)


def test_order_is_deterministic_under_a_seed_and_visits_small_corpora_repeatedly() -> None:
    corpus_ids = np.repeat([0, 1], [900, 100])
    probabilities = np.array([0.5, 0.5])
    first = mixed_order(corpus_ids, probabilities, 8, False, np.random.default_rng(3))
    again = mixed_order(corpus_ids, probabilities, 8, False, np.random.default_rng(3))
    assert np.array_equal(first, again)
    small = first[corpus_ids[first] == 1]
    assert len(set(small.tolist())) == 100 and len(small) > 300, "the small corpus is upsampled, all of it used"


def test_named_corpora_pregenerate_with_ids_and_probabilities(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    large = tiny_assets.write_corpus(tmp_path / "train.big", num_documents=90, seed=1)
    small = tiny_assets.write_corpus(tmp_path / "train.small", num_documents=12, seed=2)
    status = classic_main(
        [
            "--train_corpus", f"big={large}", f"small={small}", "--sampling_exponent", "0.3",
            "--bert_model", str(tiny_tokenizer_dir), "--output_dir", str(tmp_path / "out"),
            "--epochs_to_generate", "1", "--max_seq_len", "32", "--no_progress",
        ]
    )  # fmt: skip
    assert status == 0
    manifest = read_manifest(tmp_path / "out")
    corpora = manifest["corpora"]
    assert [c["name"] for c in corpora] == ["big", "small"]
    tokens = np.array([c["training_tokens"] for c in corpora])
    assert [c["sampling_probability"] for c in corpora] == pytest.approx(sampling_probabilities(tokens, 0.3))
    epoch = open_epoch(tmp_path / "out", manifest, 0)
    assert set(np.unique(epoch.corpus_ids).tolist()) == {0, 1}
    # A directory of train.NAME files names the corpora the same way.
    assert classic_main(
        ["--train_corpus", str(tmp_path), "--bert_model", str(tiny_tokenizer_dir), "--output_dir",
         str(tmp_path / "from_directory"), "--epochs_to_generate", "1", "--max_seq_len", "32", "--no_progress"]
    ) == 0  # fmt: skip
    assert [c["name"] for c in read_manifest(tmp_path / "from_directory")["corpora"]] == ["big", "small"]
