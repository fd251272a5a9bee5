"""Several corpora: the sampling formula, the observed mix of a training order, and multi-corpus pregeneration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tiny_assets
from training_helpers import run_cli

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


def test_a_large_exponent_gives_finite_probabilities_that_favour_the_largest_corpus() -> None:
    # (n_i / Σn)^α underflows to 0 for every corpus once α is large: 0/0 would be NaN probabilities.
    probabilities = sampling_probabilities(np.array([900.0, 100.0, 100.0]), 5000.0)
    assert np.all(np.isfinite(probabilities)) and probabilities.tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert sampling_probabilities(np.array([50.0, 50.0]), 1e300).tolist() == pytest.approx([0.5, 0.5])


@pytest.mark.parametrize("probabilities", [[np.nan, 0.5], [np.inf, 0.5], [-0.5, 1.5], [0.0, 0.0]])
def test_unusable_probabilities_are_refused_before_numpy_draws(probabilities: list[float]) -> None:
    with pytest.raises(ValueError, match="sampling probabilities"):
        mixed_order(np.array([0, 1, 0, 1]), np.array(probabilities), 2, False, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--sampling_exponent", "nan"), ("--sampling_exponent", "inf"), ("--sampling_exponent", "-1"),
     ("--task_share", "nan")],
)  # fmt: skip
def test_non_finite_sampling_settings_are_one_line_and_nothing_is_written(
    tiny_tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    big = tiny_assets.write_corpus(tmp_path / "big.txt", num_documents=20, seed=1)
    small = tiny_assets.write_corpus(tmp_path / "small.txt", num_documents=10, seed=2)
    task = tiny_assets.write_task_file(tmp_path / "task.csv", num_rows=10, seed=3)
    output = tmp_path / "out"
    status, error, _ = run_cli(
        capsys,
        ["pregenerate", "--train_corpus", f"big={big}", f"small={small}", "--bert_model", str(tiny_tokenizer_dir),
         "--output_dir", str(output), "--task_data", str(task), "--max_seq_len", "32", "--epochs_to_generate", "1",
         "--no_progress", flag, value],
    )  # fmt: skip
    assert status == 2 and flag in error and value in error.lower(), error
    assert not (output / "manifest.json").exists()


def test_a_manifest_with_nan_sampling_probabilities_is_one_line_before_training(
    tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tiny_assets.write_corpus(tmp_path / "big.txt", num_documents=20, seed=1)
    small = tiny_assets.write_corpus(tmp_path / "small.txt", num_documents=10, seed=2)
    data = tmp_path / "data"
    status, _, _ = run_cli(
        capsys,
        ["pregenerate", "--train_corpus", f"big={big}", f"small={small}", "--bert_model", str(tiny_bert_dir),
         "--output_dir", str(data), "--max_seq_len", "32", "--epochs_to_generate", "1", "--no_progress"],
    )  # fmt: skip
    assert status == 0
    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    manifest["corpora"][0]["sampling_probability"] = float("nan")  # json writes NaN, as the old code did
    (data / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    status, error, _ = run_cli(
        capsys,
        ["finetune", "--pregenerated_data", str(data), "--bert_model", str(tiny_bert_dir), "--output_dir",
         str(tmp_path / "model"), "--no_cuda", "--no_progress", "--train_batch_size", "8", "--max_steps", "1"],
    )  # fmt: skip
    assert status == 2 and "manifest.json" in error and "sampling probabilit" in error, error


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
