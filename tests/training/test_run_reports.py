"""A finetune run's reports: every metrics.jsonl record reaches the trackers of --report_to (read back with each
library's own reader), and the final model directory gets a model card that huggingface_hub loads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_trackers import key_of, tensorboard_scalars, wandb_records
from training_helpers import make_pregenerated, quick_config, read_metrics

from bert_domain_ft.cli import main
from bert_domain_ft.training.recipe import finetune


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, tiny_bert_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("reports")
    data = make_pregenerated(tiny_corpus, tiny_bert_dir, root / "data", epochs=1, holdout_fraction=0.1)
    environment = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": str(root / "wandb_config")}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        options = {"report_to": ("tensorboard", "wandb", "mlflow"), "max_steps": 4, "eval_steps": 2}
        finetune(quick_config(data, tiny_bert_dir, root / "run", train_batch_size=16, **options))
    return root / "run"


def test_every_record_reaches_tensorboard_at_its_step(reported_run: Path) -> None:
    records = read_metrics(reported_run)
    scalars, _ = tensorboard_scalars(reported_run / "tensorboard")
    evaluations = [record for record in records if record["kind"] == "eval"]
    assert len(evaluations) >= 2
    assert scalars["eval/perplexity"] == pytest.approx({r["step"]: r["perplexity"] for r in evaluations})
    train = [record for record in records if record["kind"] == "train"]
    assert scalars["train/mlm_loss"] == pytest.approx({r["step"]: r["mlm_loss"] for r in train})
    assert scalars["train/perplexity"] == pytest.approx({r["step"]: math.exp(r["mlm_loss"]) for r in train})
    assert set(scalars) >= {f"train/{key}" for key in ("lr", "sequences_per_second", "tokens_per_second")}


def test_every_record_reaches_mlflow_and_wandb(reported_run: Path) -> None:
    from mlflow.tracking import MlflowClient

    records = read_metrics(reported_run)
    client = MlflowClient(tracking_uri=(reported_run / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("bert_domain_ft").experiment_id])
    losses = {metric.step: metric.value for metric in client.get_metric_history(run.info.run_id, "train/mlm_loss")}
    assert losses == pytest.approx({r["step"]: r["mlm_loss"] for r in records if r["kind"] == "train"})
    assert run.data.params["max_steps"] == "4" and run.data.params["report_to"] == '["tensorboard", "wandb", "mlflow"]'
    history = [
        {key_of(item): json.loads(item.value_json) for item in r.history.item} for r in wandb_records(reported_run)
    ]
    logged = [row["eval/perplexity"] for row in history if "eval/perplexity" in row]
    assert logged == pytest.approx([r["perplexity"] for r in records if r["kind"] == "eval"])


def test_the_final_model_has_a_card_that_huggingface_hub_loads(reported_run: Path) -> None:
    from huggingface_hub import ModelCard

    card = ModelCard.load(reported_run / "README.md")
    assert card.data.pipeline_tag == "fill-mask" and card.data.library_name == "transformers"
    assert "MLM loss" in card.text and "perplexity" in card.text and "4 optimizer steps of 16 sequences" in card.text


def test_a_tracker_that_is_not_installed_stops_the_command_in_one_line(
    tmp_path: Path, tiny_corpus: Path, tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "wandb", None)  # as if wandb were not installed
    arguments = ["simple", "--train_corpus", str(tiny_corpus), "--bert_model", str(tiny_bert_dir), "--output_dir",
                 str(tmp_path / "run"), "--report_to", "tensorboard,wandb", "--no_cuda", "--no_progress"]  # fmt: skip
    assert main(arguments) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("error: --report_to wandb: the wandb package is not installed; pip install")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
