"""Several corpora through training and evaluation: the real sampler draws them with the manifest's probabilities,
--batch_from_one_corpus keeps every optimizer step within one corpus, and evaluation reports each corpus."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny_assets
import torch

from bert_domain_ft.data import loader as training_data
from bert_domain_ft.data.epoch_format import open_epoch, open_holdout, read_manifest
from bert_domain_ft.data.loader import CorpusMixing, PregeneratedSource, plan_epoch, source_order
from bert_domain_ft.data.pregenerate import PregenerateConfig, pregenerate
from bert_domain_ft.evaluation.heldout import evaluate_pretraining, format_result_table
from bert_domain_ft.model.pretraining import load_pretraining_model

NAMES = ("big", "mid", "small")


@pytest.fixture(scope="module")
def mixed_data(tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three corpora of 300, 100 and 30 documents, sampled with exponent 0.3 (far from their natural shares)."""
    root = tmp_path_factory.mktemp("mixed")
    corpora = {
        name: tiny_assets.write_corpus(root / f"{name}.txt", num_documents=documents, seed=seed)
        for name, documents, seed in zip(NAMES, (300, 100, 30), (1, 2, 3))
    }
    config = PregenerateConfig(
        train_corpus=corpora, output_dir=root / "data", bert_model=str(tiny_tokenizer_dir), objective="mlm",
        sampling_exponent=0.3, epochs_to_generate=1, max_seq_len=32, holdout_fraction=0.2, show_progress=False,
    )  # fmt: skip
    pregenerate(config)
    return root / "data"


def _setup(data: Path, one_corpus_per_batch: bool, batch_size: int, seed: int = 5):
    manifest = read_manifest(data)
    mixing = CorpusMixing(seed=seed, batch_size=batch_size, one_corpus_per_batch=one_corpus_per_batch)
    source = PregeneratedSource(data, manifest, training_epochs=1, mixing=mixing)
    corpus_ids = np.asarray(open_epoch(data, manifest, 0).corpus_ids)
    probabilities = np.array([corpus["sampling_probability"] for corpus in manifest["corpora"]])
    return source, corpus_ids, probabilities


def _plan(source: PregeneratedSource, epoch: int, micro: int, seed: int = 5, rank: int = 0, world: int = 1):
    order = source_order(source, epoch)
    return plan_epoch(source.epoch_size(epoch), micro, seed, epoch, rank, world, order)


def test_the_training_sampler_draws_corpora_with_the_manifest_probabilities(mixed_data: Path) -> None:
    source, corpus_ids, probabilities = _setup(mixed_data, one_corpus_per_batch=False, batch_size=16)
    natural = np.bincount(corpus_ids, minlength=3) / len(corpus_ids)
    assert np.abs(natural - probabilities).max() > 0.1, "the exponent must move the shares for this to test much"
    drawn = np.concatenate([np.concatenate(_plan(source, epoch, micro=16)) for epoch in range(30)])
    observed = np.bincount(corpus_ids[drawn], minlength=3) / len(drawn)
    assert len(drawn) > 20_000
    np.testing.assert_allclose(observed, probabilities, atol=0.015)


def test_batch_from_one_corpus_keeps_each_optimizer_step_of_every_process_in_one_corpus(mixed_data: Path) -> None:
    world, micro, accumulation = 2, 4, 2
    step_size = micro * accumulation * world  # train_batch_size × world_size, as finetune sets it
    source, corpus_ids, probabilities = _setup(mixed_data, one_corpus_per_batch=True, batch_size=step_size)
    step_corpora = []
    for epoch in range(25):
        plans = [_plan(source, epoch, micro, rank=rank, world=world) for rank in range(world)]
        steps = len(plans[0]) // accumulation  # whole optimizer steps (the last, merged batch may mix)
        for step in range(steps):
            rows = np.concatenate(
                [plan[k] for plan in plans for k in range(step * accumulation, (step + 1) * accumulation)]
            )
            assert len(rows) == step_size
            corpora = set(corpus_ids[rows].tolist())
            assert len(corpora) == 1, f"epoch {epoch} step {step} mixes corpora {corpora}"
            step_corpora.append(corpora.pop())
    observed = np.bincount(step_corpora, minlength=3) / len(step_corpora)
    assert len(step_corpora) > 1000
    np.testing.assert_allclose(observed, probabilities, atol=0.04)


def test_the_mixed_order_depends_only_on_seed_and_epoch(mixed_data: Path) -> None:
    source, _, _ = _setup(mixed_data, one_corpus_per_batch=False, batch_size=16)
    again, _, _ = _setup(mixed_data, one_corpus_per_batch=False, batch_size=16)
    other_seed, _, _ = _setup(mixed_data, one_corpus_per_batch=False, batch_size=16, seed=6)
    first = source_order(source, 0)
    assert np.array_equal(first, source_order(again, 0)), "resume rebuilds exactly this order"
    assert not np.array_equal(first, source_order(source, 1))
    assert not np.array_equal(first, source_order(other_seed, 0))
    unmixed = PregeneratedSource(mixed_data, read_manifest(mixed_data), training_epochs=1)
    assert source_order(unmixed, 0) is None, "without a mixing the usual shuffle (every instance once) is used"


def test_finetune_with_batch_from_one_corpus_trains_on_single_corpus_steps_and_evaluates_per_corpus(
    mixed_data: Path, tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training_helpers import quick_config, read_metrics

    from bert_domain_ft.training.recipe import finetune

    corpus_ids = np.asarray(open_epoch(mixed_data, read_manifest(mixed_data), 0).corpus_ids)
    seen: list[set[int]] = []
    original = training_data.collate_rows

    def recording(arrays: Any, indices: np.ndarray, masker: Any = None) -> dict[str, torch.Tensor]:
        if arrays.corpus_ids is not None and len(arrays.corpus_ids) == len(corpus_ids):  # training epoch rows only
            seen.append(set(corpus_ids[np.asarray(indices)].tolist()))
        return original(arrays, indices, masker)

    monkeypatch.setattr(training_data, "collate_rows", recording)
    config = quick_config(
        mixed_data, tiny_bert_dir, tmp_path / "out", train_batch_size=16, gradient_accumulation_steps=2,
        batch_from_one_corpus=True, logging_steps=5,
    )  # fmt: skip
    finetune(config)
    steps = [seen[index] | seen[index + 1] for index in range(0, len(seen) - 1, 2)]
    assert len(steps) > 20 and all(len(corpora) == 1 for corpora in steps[:-1])
    evaluations = [record for record in read_metrics(tmp_path / "out") if record["kind"] == "eval"]
    assert evaluations, "the held-out set is evaluated before and after training"
    for name in NAMES:
        assert {f"{name}/mlm_loss", f"{name}/perplexity", f"{name}/mlm_accuracy"} <= evaluations[-1].keys()


def test_evaluation_reports_each_corpus_and_an_overall_result_that_is_their_total(
    mixed_data: Path, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    from bert_domain_ft.evaluation.config import EvaluateConfig
    from bert_domain_ft.evaluation.evaluate import evaluate_model

    holdout = open_holdout(mixed_data)
    assert holdout is not None and holdout.corpus_ids is not None
    model = load_pretraining_model(str(tiny_bert_dir)).model
    result = evaluate_pretraining(model, holdout, batch_size=16, device="cpu", show_progress=False, names=NAMES)
    assert result.corpora is not None and list(result.corpora) == list(NAMES)
    assert result.nsp_loss is None and all("nsp_loss" not in values for values in result.corpora.values())
    counts = Counter(np.asarray(holdout.corpus_ids).tolist())
    assert [result.corpora[name]["num_instances"] for name in NAMES] == [counts[index] for index in range(3)]
    masked = sum(values["num_masked_tokens"] for values in result.corpora.values())
    weighted = sum(values["mlm_loss"] * values["num_masked_tokens"] for values in result.corpora.values()) / masked
    assert masked == result.num_masked_tokens and result.mlm_loss == pytest.approx(weighted, rel=1e-9)
    same_batches_ignored = evaluate_pretraining(model, holdout, 5, "cpu", show_progress=False, names=NAMES)
    assert same_batches_ignored.mlm_loss == pytest.approx(result.mlm_loss, rel=1e-5)
    table = format_result_table(result)
    assert "per corpus" in table and all(name in table for name in NAMES) and "NSP" not in table
    assert {"big/mlm_loss", "small/perplexity"} <= result.metrics().keys()
    written = tmp_path / "result.json"
    evaluate_model(EvaluateConfig(model=str(tiny_bert_dir), data=mixed_data, json_output=written, show_progress=False))
    assert set(json.loads(written.read_text())["corpora"]) == set(NAMES)
