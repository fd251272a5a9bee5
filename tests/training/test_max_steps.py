"""--max_steps: exactly N optimizer steps with the schedule spanning them, across or within epochs, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from training_helpers import assert_identical_weights, load_weights, make_pregenerated, quick_config, read_metrics

from bert_domain_ft.cli import build_parser
from bert_domain_ft.cli.commands import simple_config as simple_config_from
from bert_domain_ft.errors import UserError
from bert_domain_ft.training.recipe import finetune

OPTIONS = {"head_warmup_steps": 0, "logging_steps": 1, "do_eval": False}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, tiny_bert_dir: Path) -> Path:
    return make_pregenerated(tiny_corpus, tiny_bert_dir, tmp_path_factory.mktemp("data") / "pregenerated")


def steps_per_epoch(data_dir: Path, batch_size: int) -> int:
    manifest = json.loads((data_dir / "manifest.json").read_text())
    return -(-manifest["epochs"][0]["num_instances"] // batch_size)


@pytest.mark.parametrize("epochs_worth", [0.5, 2.5])
def test_max_steps_trains_exactly_that_many_steps_with_the_schedule_ending_at_zero(
    tmp_path: Path, data_dir: Path, tiny_bert_dir: Path, epochs_worth: float
) -> None:
    batch = 16
    per_epoch = steps_per_epoch(data_dir, batch)
    max_steps = max(2, round(epochs_worth * per_epoch))
    output = tmp_path / "out"
    finetune(quick_config(data_dir, tiny_bert_dir, output, train_batch_size=batch, max_steps=max_steps, **OPTIONS))
    train = [record for record in read_metrics(output) if record["kind"] == "train"]
    assert [record["step"] for record in train] == list(range(1, max_steps + 1))
    assert int(train[-1]["epoch"]) == int(epochs_worth) and train[-1]["epoch"] % 1 > 0  # inside the third or first
    assert train[-1]["lr"] < train[len(train) // 2]["lr"]  # linear decay over the max_steps, not over `epochs`
    assert (output / "model.safetensors").exists()  # the end, so the final model is written


def test_max_steps_resumes_to_the_weights_of_an_uninterrupted_run(
    tmp_path: Path, data_dir: Path, tiny_bert_dir: Path
) -> None:
    max_steps = steps_per_epoch(data_dir, 16) + 3  # the end lies inside the second epoch
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    finetune(quick_config(data_dir, tiny_bert_dir, straight, train_batch_size=16, max_steps=max_steps, **OPTIONS))
    options = {"train_batch_size": 16, "max_steps": max_steps, **OPTIONS}
    finetune(quick_config(data_dir, tiny_bert_dir, interrupted, stop_after_steps=max_steps - 2, **options))
    assert not (interrupted / "model.safetensors").exists()  # stopped early: no final model yet
    finetune(quick_config(data_dir, tiny_bert_dir, interrupted, resume=True, **options))
    assert_identical_weights(load_weights(straight), load_weights(interrupted))


def test_resume_with_another_max_steps_is_refused(tmp_path: Path, data_dir: Path, tiny_bert_dir: Path) -> None:
    output = tmp_path / "out"
    finetune(quick_config(data_dir, tiny_bert_dir, output, max_steps=6, stop_after_steps=2, **OPTIONS))
    with pytest.raises(UserError, match="total_steps"):
        finetune(quick_config(data_dir, tiny_bert_dir, output, max_steps=8, resume=True, **OPTIONS))


def test_max_steps_flag_reaches_finetune_and_simple_and_must_not_be_negative(tmp_path: Path) -> None:
    parser = build_parser()
    common = ["--bert_model", "m", "--output_dir", str(tmp_path / "o"), "--max_steps", "7"]
    finetune_arguments = parser.parse_args(["finetune", "--pregenerated_data", "d", *common])
    assert finetune_arguments.max_steps == 7
    simple = simple_config_from(parser.parse_args(["simple", "--train_corpus", "c.txt", *common]))
    assert simple.training.max_steps == 7
    with pytest.raises(ValueError, match="max_steps must not be negative"):
        quick_config(tmp_path, tmp_path, tmp_path / "o", max_steps=-1)


@pytest.mark.parametrize("epochs_worth", [0.5, 2.5])
def test_under_max_steps_data_reuse_is_told_in_steps_not_in_the_ignored_epochs(
    tmp_path: Path, data_dir: Path, tiny_bert_dir: Path, caplog: pytest.LogCaptureFixture, epochs_worth: float
) -> None:
    """--epochs (3 by default) is ignored under --max_steps: "3 training epochs were asked for" was wrong."""
    from bert_domain_ft.data.epoch_format import read_manifest
    from bert_domain_ft.training.setup import pregenerated_source

    max_steps = round(epochs_worth * steps_per_epoch(data_dir, 16))
    config = quick_config(data_dir, tiny_bert_dir, tmp_path, train_batch_size=16, max_steps=max_steps, epochs=3)
    with caplog.at_level("WARNING"):
        pregenerated_source(data_dir, read_manifest(data_dir), config, None, world_size=1)
    warnings = [record.getMessage() for record in caplog.records if "epoch(s) of data" in record.getMessage()]
    if epochs_worth < 2:  # the two pregenerated epochs cover it: nothing is reused
        assert warnings == []
    else:
        assert len(warnings) == 1 and f"but --max_steps {max_steps} reads 3 epochs' worth" in warnings[0]
