"""Held-out evaluation: exact, deterministic metrics; held-out documents kept out of training; the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bert_domain_ft.cli import main as cli_main
from bert_domain_ft.data.document_store import build_document_store
from bert_domain_ft.data.epoch_format import EpochArrays, open_epoch, open_holdout, read_manifest
from bert_domain_ft.data.pregenerate import PregenerateConfig, pregenerate
from bert_domain_ft.errors import UserError
from bert_domain_ft.evaluation.config import EvaluateConfig
from bert_domain_ft.evaluation.evaluate import evaluate_model
from bert_domain_ft.evaluation.heldout import (
    EvaluationResult,
    build_evaluator,
    evaluate_pretraining,
    first_instances,
    format_before_after_table,
    format_result_table,
    holdout_evaluator,
    print_run_before_after,
)
from bert_domain_ft.evaluation.plots import read_run_metrics
from bert_domain_ft.model.pretraining import load_pretraining_model
from bert_domain_ft.model.tokenizer import describe_tokenizer, load_tokenizer

HOLDOUT_FRACTION = 0.2


@pytest.fixture(scope="module")
def pregenerated(tiny_corpus: Path, tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("pregenerated")
    pregenerate(
        PregenerateConfig(
            train_corpus=tiny_corpus,
            output_dir=output,
            bert_model=str(tiny_bert_dir),
            epochs_to_generate=2,
            max_seq_len=64,
            holdout_fraction=HOLDOUT_FRACTION,
            seed=7,
            show_progress=False,
        )
    )
    return output


@pytest.fixture(scope="module")
def holdout(pregenerated: Path) -> EpochArrays:
    epoch = open_holdout(pregenerated)
    assert epoch is not None
    return epoch


@pytest.fixture()
def model(tiny_bert_dir: Path) -> torch.nn.Module:
    return load_pretraining_model(str(tiny_bert_dir)).model


def _evaluate(model: torch.nn.Module, epoch: EpochArrays, batch_size: int = 16) -> EvaluationResult:
    return evaluate_pretraining(model, epoch, batch_size, "cpu", show_progress=False)


# ------------------------------------------------------------------------------------------ held-out documents


def _unmasked_tokens(epoch: EpochArrays, row: int) -> np.ndarray:
    tokens = np.asarray(epoch.input_ids[row, : epoch.lengths[row]], dtype=np.int64)
    count = int(epoch.num_masked[row])
    tokens[epoch.masked_positions[row, :count]] = epoch.masked_labels[row, :count]
    return tokens


def _segments(epoch: EpochArrays) -> list[np.ndarray]:
    """Segments A and B of every instance, without [CLS]/[SEP], with the original (unmasked) tokens."""
    found = []
    for row in range(epoch.num_instances):
        tokens, split = _unmasked_tokens(epoch, row), int(epoch.segment_a_lengths[row])
        found += [tokens[1 : split - 1], tokens[split:-1]]
    return found


def _contains(haystack: bytes, needle: np.ndarray) -> bool:
    """Whether the uint16 token run ``needle`` occurs in ``haystack`` (uint16 bytes) at a token boundary."""
    pattern = needle.astype(np.uint16).tobytes()
    start = haystack.find(pattern)
    while start >= 0 and start % 2:
        start = haystack.find(pattern, start + 1)
    return start >= 0


def _documents_blob(store, documents: list[int]) -> bytes:
    separator = np.array([np.iinfo(np.uint16).max], dtype=np.uint16)  # never a token: runs cannot span documents
    parts = [part for d in documents for part in (store.document_tokens(d).astype(np.uint16), separator)]
    return np.concatenate(parts).tobytes()


def test_held_out_documents_never_appear_in_training_epochs(pregenerated: Path, tiny_corpus: Path, tiny_bert_dir: Path):
    manifest = read_manifest(pregenerated)
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    store = build_document_store(tiny_corpus, tokenizer, describe_tokenizer(tokenizer, str(tiny_bert_dir)), None, False)
    held_out = sorted(manifest["holdout"]["documents"])
    training = sorted(set(range(store.num_documents)) - set(held_out))
    assert len(held_out) == round(HOLDOUT_FRACTION * store.num_documents)
    held_out_blob, training_blob = _documents_blob(store, held_out), _documents_blob(store, training)
    # Runs of 6+ tokens of this random text are unique to their document; shorter ones could match by chance.
    distinctive = 6
    for index in range(len(manifest["epochs"])):
        segments = [s for s in _segments(open_epoch(pregenerated, manifest, index)) if len(s) >= distinctive]
        assert len(segments) > 100
        assert all(_contains(training_blob, segment) for segment in segments)  # the reconstruction is right
        assert not any(_contains(held_out_blob, segment) for segment in segments)
    holdout_segments = [s for s in _segments(open_holdout(pregenerated)) if len(s) >= distinctive]
    assert holdout_segments and all(_contains(held_out_blob, segment) for segment in holdout_segments)


# ------------------------------------------------------------------------------------------ the metrics


def test_evaluate_gives_identical_numbers_twice(model: torch.nn.Module, holdout: EpochArrays):
    assert _evaluate(model, holdout) == _evaluate(model, holdout)


def test_evaluation_puts_the_model_back_in_its_mode_and_leaves_weights_alone(
    model: torch.nn.Module, holdout: EpochArrays
):
    before = {name: value.clone() for name, value in model.state_dict().items()}
    model.train()
    _evaluate(model, holdout)
    assert model.training
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


def test_mlm_loss_equals_the_full_logit_loss_over_all_masked_tokens(model: torch.nn.Module, holdout: EpochArrays):
    result = _evaluate(model, holdout, batch_size=5)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for row in range(holdout.num_instances):
            length = int(holdout.lengths[row])
            input_ids = torch.as_tensor(holdout.input_ids[row : row + 1, :length].astype(np.int64))
            token_types = (torch.arange(length) >= int(holdout.segment_a_lengths[row])).long()[None]
            logits = model(input_ids=input_ids, token_type_ids=token_types).prediction_logits[0]
            slots = int(holdout.num_masked[row])
            positions = torch.as_tensor(holdout.masked_positions[row, :slots].astype(np.int64))
            labels = torch.as_tensor(holdout.masked_labels[row, :slots].astype(np.int64))
            total += torch.nn.functional.cross_entropy(logits[positions], labels, reduction="sum").item()
            count += slots
    assert result.num_masked_tokens == count == int(np.sum(holdout.num_masked))
    assert result.mlm_loss == pytest.approx(total / count, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)


def test_metrics_do_not_depend_on_the_batch_size(model: torch.nn.Module, holdout: EpochArrays):
    one, many = _evaluate(model, holdout, batch_size=1), _evaluate(model, holdout, batch_size=64)
    assert (one.num_instances, one.num_masked_tokens) == (many.num_instances, many.num_masked_tokens)
    assert one.mlm_accuracy == many.mlm_accuracy and one.nsp_accuracy == many.nsp_accuracy
    assert one.mlm_loss == pytest.approx(many.mlm_loss, rel=1e-5)
    assert one.nsp_loss == pytest.approx(many.nsp_loss, rel=1e-5)


def test_accuracies_are_fractions_and_nsp_is_none_without_nsp_labels(model: torch.nn.Module, holdout: EpochArrays):
    result = _evaluate(model, holdout)
    assert 0.0 <= result.mlm_accuracy <= 1.0 and 0.0 <= result.nsp_accuracy <= 1.0
    mlm_only = _evaluate(model, dataclasses.replace(holdout, is_random_next=None))
    assert mlm_only.nsp_accuracy is None and mlm_only.nsp_loss is None
    assert mlm_only.mlm_loss == pytest.approx(result.mlm_loss)
    assert "nsp_accuracy" not in mlm_only.metrics()


def test_unmasked_data_is_refused_with_a_user_error(model: torch.nn.Module, holdout: EpochArrays):
    dynamic = dataclasses.replace(holdout, masked_positions=None, masked_labels=None, num_masked=None)
    with pytest.raises(UserError, match="no fixed masks"):
        _evaluate(model, dynamic)


def test_bf16_autocast_gives_nearly_the_same_loss(model: torch.nn.Module, holdout: EpochArrays):
    exact = _evaluate(model, holdout)
    bf16 = evaluate_pretraining(model, holdout, 16, "cpu", torch.bfloat16, show_progress=False)
    assert bf16.mlm_loss == pytest.approx(exact.mlm_loss, rel=0.02)


def test_evaluator_for_the_training_loop_returns_the_metrics(model: torch.nn.Module, pregenerated: Path):
    evaluate = holdout_evaluator(pregenerated, batch_size=8, device="cpu", max_instances=10)
    assert evaluate is not None
    metrics = evaluate(model)
    assert metrics["num_instances"] == 10
    assert set(metrics) >= {"mlm_loss", "perplexity", "mlm_accuracy", "nsp_loss", "nsp_accuracy"}
    assert metrics == build_evaluator(first_instances(open_holdout(pregenerated), 10), 8, "cpu")(model)


def test_no_evaluator_without_a_held_out_set(tmp_path: Path):
    assert holdout_evaluator(tmp_path, batch_size=8, device="cpu") is None


# ------------------------------------------------------------------------------------------ tables


def test_before_after_table_shows_both_values_and_the_change():
    before = {"mlm_loss": 5.0, "perplexity": math.exp(5.0), "mlm_accuracy": 0.1, "nsp_accuracy": 0.5}
    after = {"mlm_loss": 3.0, "perplexity": math.exp(3.0), "mlm_accuracy": 0.3, "nsp_accuracy": 0.75}
    table = format_before_after_table(before, after)
    lines = table.splitlines()
    assert lines[0].split()[1:] == ["before", "after", "change"]
    loss_line = next(line for line in lines if line.startswith("MLM loss"))
    assert "5.0000" in loss_line and "3.0000" in loss_line and "-2.0000" in loss_line
    assert "+25.00 pts" in next(line for line in lines if line.startswith("NSP accuracy"))
    assert "-86.5%" in next(line for line in lines if line.startswith("perplexity"))
    assert not any(line.startswith("NSP loss") for line in lines)  # absent on both sides: no row


def test_result_table_lists_every_metric_and_the_counts(model: torch.nn.Module, holdout: EpochArrays):
    result = _evaluate(model, holdout)
    table = format_result_table(result)
    for label in ("MLM loss", "perplexity", "MLM accuracy", "NSP loss", "NSP accuracy"):
        assert label in table
    assert f"{result.num_instances:,} instances" in table
    assert f"{100 * result.mlm_accuracy:.2f}%" in table


# ------------------------------------------------------------------------------------------ stage and CLI


def test_cli_prints_the_table_and_writes_json(pregenerated: Path, tiny_bert_dir: Path, tmp_path: Path, capsys):
    output = tmp_path / "results.json"
    status = cli_main(
        ["evaluate", "--model", str(tiny_bert_dir), "--data", str(pregenerated), "--json", str(output), "--no_progress"]
    )
    assert status == 0
    printed = capsys.readouterr().out
    written = json.loads(output.read_text())
    assert (
        written["set"] == "holdout"
        and written["num_instances"] == read_manifest(pregenerated)["holdout"]["num_instances"]
    )
    assert f"{written['mlm_loss']:.4f}" in printed and "perplexity" in printed


def test_corpus_evaluation_of_an_encoder_without_heads_is_repeatable(tiny_corpus: Path, tiny_encoder_dir: Path):
    config = EvaluateConfig(model=str(tiny_encoder_dir), corpus=tiny_corpus, max_seq_len=64, show_progress=False)
    first, second = evaluate_model(config), evaluate_model(config)
    assert first == second  # fixed pregeneration seed, and the fresh heads start from a fixed seed
    assert first.num_instances > 50


def test_data_from_another_vocabulary_is_refused(pregenerated: Path, tiny_bert_dir: Path, tmp_path: Path):
    copy = tmp_path / "other"
    shutil.copytree(pregenerated, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["tokenizer"]["vocab_fingerprint"] = "0" * 16
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="pregenerate again with --bert_model"):
        evaluate_model(EvaluateConfig(model=str(tiny_bert_dir), data=copy, show_progress=False))


def test_data_without_held_out_set_is_a_user_error_naming_the_fix(tiny_bert_dir: Path, tiny_corpus: Path, tmp_path):
    output = tmp_path / "no_holdout"
    pregenerate(
        PregenerateConfig(
            train_corpus=tiny_corpus,
            output_dir=output,
            bert_model=str(tiny_bert_dir),
            epochs_to_generate=1,
            max_seq_len=64,
            show_progress=False,
            holdout_fraction=0.0,
        )
    )
    with pytest.raises(UserError, match="--holdout_fraction"):
        evaluate_model(EvaluateConfig(model=str(tiny_bert_dir), data=output, show_progress=False))
    assert evaluate_model(EvaluateConfig(model=str(tiny_bert_dir), data=output, epoch=0, show_progress=False))


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({}, "exactly one of --holdout_data"),
        ({"data": "d", "corpus": "c"}, "exactly one of --holdout_data"),
        ({"corpus": "c", "epoch": 0}, "--epoch needs --holdout_data"),
        ({"data": "d", "batch_size": 0}, "--batch_size"),
    ],
)
def test_config_rejects_contradictory_settings(arguments: dict, message: str):
    with pytest.raises(ValueError, match=message):
        EvaluateConfig(model="m", **arguments)


# ------------------------------------------------------------------------------------------ after training


@pytest.fixture(scope="module")
def finetuned_run(pregenerated: Path, tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bert_domain_ft.training import FinetuneConfig, finetune

    return finetune(
        FinetuneConfig(
            pregenerated_data=pregenerated,
            output_dir=tmp_path_factory.mktemp("finetuned") / "run",
            bert_model=str(tiny_bert_dir),
            epochs=3,
            train_batch_size=16,
            learning_rate=2e-3,
            eval_steps=10,
            show_progress=False,
        )
    )


def test_a_short_finetune_lowers_held_out_mlm_loss(finetuned_run: Path, pregenerated: Path, tiny_bert_dir: Path):
    before = evaluate_model(EvaluateConfig(model=str(tiny_bert_dir), data=pregenerated, show_progress=False))
    after = evaluate_model(EvaluateConfig(model=str(finetuned_run), data=pregenerated, show_progress=False))
    assert after.num_masked_tokens == before.num_masked_tokens  # the same held-out tokens on both sides
    assert after.mlm_loss < before.mlm_loss - 0.3  # 5.18 → 4.49 nats when written
    assert after.perplexity < before.perplexity


def test_finetune_evaluates_before_every_eval_steps_and_at_the_end(finetuned_run: Path, pregenerated: Path, capsys):
    evaluations = read_run_metrics(finetuned_run).evaluations
    last_step = read_run_metrics(finetuned_run).train[-1]["step"]
    steps = [record["step"] for record in evaluations]
    assert steps == sorted({0, *range(10, last_step + 1, 10), last_step})
    assert all(
        record["num_instances"] == read_manifest(pregenerated)["holdout"]["num_instances"] for record in evaluations
    )
    assert evaluations[-1]["mlm_loss"] < evaluations[0]["mlm_loss"]
    assert print_run_before_after(finetuned_run)
    table = capsys.readouterr().out
    assert f"step 0 → step {last_step}" in table and "before" in table and "after" in table


# ------------------------------------------------------------------------------------------ --holdout_data


@pytest.fixture(scope="module")
def without_holdout(tiny_corpus: Path, tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training_helpers import make_pregenerated

    return make_pregenerated(tiny_corpus, tiny_bert_dir, tmp_path_factory.mktemp("no_holdout"), epochs=1)


@pytest.fixture(scope="module")
def other_vocabulary(tiny_corpus: Path, roberta_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training_helpers import make_pregenerated

    output = tmp_path_factory.mktemp("other_vocabulary")
    return make_pregenerated(tiny_corpus, roberta_encoder_dir, output, epochs=1, holdout_fraction=HOLDOUT_FRACTION)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("missing", "no manifest; run `bert-domain-ft pregenerate` first, or check the --holdout_data path"),
        ("without", "--holdout_data: holds no held-out set; pregenerate it with --holdout_fraction"),
        ("other", "--holdout_data was pregenerated with the vocabulary of"),
    ],
)
def test_a_holdout_data_that_cannot_be_evaluated_is_refused_not_silently_skipped(
    without_holdout: Path, other_vocabulary: Path, tiny_bert_dir: Path, tmp_path: Path, capsys, given, message
) -> None:
    from training_helpers import run_cli

    holdout = {"missing": tmp_path / "missing", "without": without_holdout, "other": other_vocabulary}[given]
    arguments = ["finetune", "--pregenerated_data", str(without_holdout), "--bert_model", str(tiny_bert_dir),
                 "--output_dir", str(tmp_path / "run"), "--holdout_data", str(holdout), "--max_steps", "1",
                 "--train_batch_size", "8", "--no_cuda", "--no_progress"]  # fmt: skip
    status, error, _ = run_cli(capsys, arguments)
    assert status == 2 and message in error
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_holdout_data_with_no_eval_is_refused() -> None:
    from bert_domain_ft.training.config import FinetuneConfig

    with pytest.raises(ValueError, match="--holdout_data is evaluated, which --no_eval turns off"):
        FinetuneConfig(Path("d"), Path("o"), bert_model="m", holdout_data=Path("h"), do_eval=False)
