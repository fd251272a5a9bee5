"""--save_best keeps the best held-out model as best/; --probe_train/--probe_test probe every checkpoint."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
from pathlib import Path

import pytest
from tiny_assets import small_probe_files
from training_helpers import (
    assert_identical_weights,
    load_weights,
    make_pregenerated,
    quick_config,
    read_metrics,
)

from bert_domain_ft.cli import FINETUNE as finetune_cli
from bert_domain_ft.errors import UserError
from bert_domain_ft.evaluation.plots import read_run_metrics
from bert_domain_ft.training.checkpoints import checkpoint_directories
from bert_domain_ft.training.metrics import MetricsLog
from bert_domain_ft.training.recipe import finetune
from bert_domain_ft.training.selection import BEST_DIRECTORY, BEST_INFO_FILE, BestModelKeeper


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, tiny_bert_dir: Path) -> Path:
    directory = tmp_path_factory.mktemp("data") / "pregenerated"
    return make_pregenerated(tiny_corpus, tiny_bert_dir, directory, epochs=1, holdout_fraction=0.1)


def test_save_best_keeps_the_model_with_the_lowest_held_out_loss(
    data_dir: Path, tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "run"
    options = {"save_best": True, "eval_steps": 2, "eval_batch_size": 16, "head_warmup_steps": 2, "learning_rate": 1e-3}
    finetune(quick_config(data_dir, tiny_encoder_dir, output, **options))
    records = read_metrics(output)
    evaluations = [r for r in records if r.get("kind") == "eval"]
    best = min(evaluations, key=lambda r: r["mlm_loss"])
    info = json.loads((output / BEST_DIRECTORY / BEST_INFO_FILE).read_text())
    assert info == {"step": best["step"], "metric": "mlm_loss", "value": best["mlm_loss"]}
    assert [r["step"] for r in records if r.get("kind") == "best"][-1] == best["step"]
    assert not list(output.glob("*.partial"))
    if best["step"] == evaluations[-1]["step"]:  # the final model was the best: best/ holds the same weights
        assert_identical_weights(load_weights(output / BEST_DIRECTORY), load_weights(output))
    from transformers import AutoModelForPreTraining, AutoTokenizer

    AutoModelForPreTraining.from_pretrained(str(output / BEST_DIRECTORY))
    AutoTokenizer.from_pretrained(str(output / BEST_DIRECTORY))


def test_a_resumed_keeper_only_replaces_best_with_a_better_model(tmp_path: Path) -> None:
    metrics = MetricsLog(tmp_path / "metrics.jsonl")
    written: list[Path] = []
    keeper = BestModelKeeper(tmp_path, metrics, "mlm_loss", higher_is_better=False)
    assert keeper.consider(10, 2.5, written.append)
    again = BestModelKeeper(tmp_path, metrics, "mlm_loss", higher_is_better=False, resumed=True)
    assert again.best_value == 2.5 and again.best_step == 10
    assert not again.consider(20, 2.6, written.append)
    assert again.consider(30, 2.4, written.append)
    assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == 30
    assert BestModelKeeper(tmp_path, metrics, "probe_accuracy", higher_is_better=True, resumed=True).best_value is None


def test_a_run_that_is_not_resumed_never_continues_an_earlier_best(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = MetricsLog(tmp_path / "metrics.jsonl")
    BestModelKeeper(tmp_path, metrics, "mlm_loss", higher_is_better=False).consider(10, 2.5, lambda directory: None)
    with caplog.at_level(logging.INFO):
        fresh = BestModelKeeper(tmp_path, metrics, "mlm_loss", higher_is_better=False)
    assert fresh.best_value is None and not (tmp_path / BEST_DIRECTORY).exists()
    assert any("earlier run" in record.getMessage() and "best" in record.getMessage() for record in caplog.records)


def test_overwrite_output_dir_drops_the_earlier_runs_best_model(
    data_dir: Path, tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    output, info_path = tmp_path / "run", tmp_path / "run" / BEST_DIRECTORY / BEST_INFO_FILE
    options = {"save_best": True, "eval_steps": 2, "eval_batch_size": 16, "max_steps": 4}
    finetune(quick_config(data_dir, tiny_encoder_dir, output, **options))
    earlier = {**json.loads(info_path.read_text()), "value": 0.0}  # an earlier run that scored better than any
    info_path.write_text(json.dumps(earlier))
    finetune(quick_config(data_dir, tiny_encoder_dir, output, overwrite_output_dir=True, **options))
    evaluations = [record for record in read_metrics(output) if record.get("kind") == "eval"]
    assert json.loads(info_path.read_text())["value"] == min(record["mlm_loss"] for record in evaluations)


def test_a_directory_holding_only_another_runs_best_model_is_refused(
    data_dir: Path, tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    options = {"save_best": True, "eval_steps": 2, "eval_batch_size": 16, "max_steps": 2}
    finetune(quick_config(data_dir, tiny_encoder_dir, tmp_path / "other", **options))
    (tmp_path / "run").mkdir()
    (tmp_path / "other" / BEST_DIRECTORY).rename(tmp_path / "run" / BEST_DIRECTORY)
    with pytest.raises(UserError, match=f"holds {BEST_DIRECTORY}, which bert_domain_ft did not write"):
        finetune(quick_config(data_dir, tiny_encoder_dir, tmp_path / "run", **options))


def test_the_probe_runs_on_the_base_model_and_every_checkpoint_and_picks_the_best(
    data_dir: Path, tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    train, test = small_probe_files(tmp_path)
    output = tmp_path / "run"
    options = {"probe_train": train, "probe_test": test, "probe_seeds": 2, "probe_epochs": 2}
    finetune(quick_config(data_dir, tiny_encoder_dir, output, save_steps=3, save_best=True, do_eval=False, **options))
    probes = [r for r in read_metrics(output) if r.get("kind") == "probe"]
    checkpoints = [step for step, _ in checkpoint_directories(output)]
    assert [r["step"] for r in probes] == [0, *checkpoints]
    assert probes[0]["model"] == str(tiny_encoder_dir)
    assert all(r["seeds"] == [42, 43] and 0 <= r["accuracy_mean"] <= 1 for r in probes)
    assert all(r["paired_vs_start"]["seeds"] == 2 for r in probes[1:]) and "paired_vs_start" not in probes[0]
    # The starting model is a candidate; a checkpoint replaces it only when it beats it beyond the seeds' noise.
    beating = [r for r in probes[1:] if r["paired_vs_start"]["verdict"] == "better"]
    best = max(beating, key=lambda r: r["accuracy_mean"]) if beating else probes[0]  # the first of equals wins
    info = json.loads((output / "best" / "best.json").read_text())
    assert info == {"step": best["step"], "metric": "probe_accuracy", "value": best["accuracy_mean"]}
    assert not (output / "best" / "optimizer.pt").exists() and (output / "best" / "model.safetensors").is_file()
    assert [r["step"] for r in read_run_metrics(output).probes] == [0, *checkpoints]
    assert (output / "training_curves.png").stat().st_size > 0


def test_a_probe_needs_both_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs both probe_train and probe_test"):
        quick_config(tmp_path, tmp_path, tmp_path / "run", probe_train=tmp_path / "train.csv")


def test_finetune_flags_reach_the_config(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    finetune_cli.add_arguments(parser)
    required = ["--pregenerated_data", "d", "--output_dir", "o", "--bert_model", "m"]
    default = finetune_cli.config_from(parser.parse_args(required))
    assert default.head_warmup_steps is None and default.layerwise_lr_decay == 1.0 and not default.save_best
    flags = ["--head_warmup_steps", "0", "--head_learning_rate", "5e-4", "--layerwise_lr_decay", "0.9"]
    flags += ["--save_best", "--probe_train", "a.csv", "--probe_test", "b.csv", "--probe_seeds", "2"]
    config = finetune_cli.config_from(parser.parse_args(required + flags))
    assert (config.head_warmup_steps, config.head_learning_rate, config.layerwise_lr_decay) == (0, 5e-4, 0.9)
    assert config.save_best and config.probe_train == Path("a.csv") and config.probe_seeds == 2
    with pytest.raises(SystemExit):
        parser.parse_args(required + ["--head_warmup_steps", "some"])


def test_a_full_disk_while_saving_a_better_model_keeps_the_previous_best(tmp_path: Path) -> None:
    from safetensors import SafetensorError

    keeper = BestModelKeeper(tmp_path, MetricsLog(tmp_path / "metrics.jsonl"), "mlm_loss", higher_is_better=False)
    keeper.consider(step=10, value=3.0, write=lambda directory: (directory / "model.safetensors").write_bytes(b"v1"))

    def full_disk(directory: Path) -> None:
        (directory / "model.safetensors").write_bytes(b"half")
        raise SafetensorError(f"Error while serializing: {os.strerror(errno.ENOSPC)} (os error {errno.ENOSPC})")

    with pytest.raises(UserError) as raised:
        keeper.consider(step=20, value=2.0, write=full_disk)
    message = str(raised.value)
    assert "\n" not in message and "disk is full" in message and "previous best model" in message
    assert (tmp_path / BEST_DIRECTORY / "model.safetensors").read_bytes() == b"v1"
    assert not (tmp_path / f"{BEST_DIRECTORY}.partial").exists()
    assert keeper.best_step == 10


def test_save_best_with_no_eval_says_that_no_eval_turns_off_what_it_needs(capsys: pytest.CaptureFixture) -> None:
    """It was run, then blamed on a missing held-out set ("pregenerate with --holdout_fraction")."""
    from training_helpers import run_cli

    arguments = ["finetune", "--pregenerated_data", "d", "--output_dir", "o", "--bert_model", "m", "--save_best"]
    status, error, _ = run_cli(capsys, [*arguments, "--no_eval"])
    assert status == 2 and "--save_best keeps the model with the best held-out loss, which --no_eval turns off" in error
