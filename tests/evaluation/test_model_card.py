"""The model card: Hub metadata that huggingface_hub's own ModelCard parser accepts, and the run's facts."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bert_domain_ft.evaluation.model_card import hub_model_id, model_card_text, write_model_card
from bert_domain_ft.evaluation.probe_report import ProbeResult

COMMAND = "bert-domain-ft finetune --pregenerated_data data --bert_model bert-base-uncased --output_dir run --bf16"


def evaluation(step: int, loss: float, accuracy: float) -> dict:
    return {"kind": "eval", "step": step, "mlm_loss": loss, "perplexity": math.exp(loss), "mlm_accuracy": accuracy}


def probe(step: int, accuracies: tuple[float, ...]) -> dict:
    result = ProbeResult("m", (0, 1, 2), accuracies, accuracies)
    return {"kind": "probe", "step": step, **result.to_json()}


def write_run(directory: Path, with_probe: bool = True, best: bool = False) -> Path:
    data = directory / "data"
    data.mkdir(parents=True)
    manifest = {
        "corpus": {"documents": 120, "sentences": 3456, "tokens": 78901},
        "epochs": [{"num_instances": 500}] * 2,
    }
    (data / "manifest.json").write_text(json.dumps(manifest))
    run = directory / "run"
    run.mkdir()
    arguments = {"pregenerated_data": str(data), "bert_model": "bert-base-uncased", "bf16": True, "fp16": False,
                 "train_batch_size": 32, "learning_rate": 3e-5, "seed": 42, "anchor_weight": 0.0}  # fmt: skip
    (run / "training_args.json").write_text(json.dumps(arguments))
    records = [evaluation(0, 3.0, 0.25), {"kind": "train", "step": 40, "mlm_loss": 2.2}, evaluation(40, 2.0, 0.4)]
    if with_probe:
        records += [probe(0, (0.50, 0.52, 0.54)), probe(40, (0.60, 0.63, 0.66))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    if best:
        (run / "best").mkdir()
        (run / "best" / "best.json").write_text(json.dumps({"step": 40, "metric": "probe_accuracy", "value": 0.63}))
    return run


def test_the_card_loads_with_huggingface_hub_and_carries_the_hub_metadata(tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    run = write_run(tmp_path, best=True)
    path = write_model_card(run, COMMAND)
    card = ModelCard.load(path)  # raises on a metadata block it cannot read
    assert card.data.base_model == "bert-base-uncased"
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "fill-mask"
    assert card.data.license == "other" and "bert_domain_ft" in card.data.tags
    best_card = ModelCard.load(run / "best" / "README.md")
    assert "best model: step 40 by probe_accuracy" in best_card.text


def test_the_card_states_the_run_facts_and_the_command(tmp_path: Path) -> None:
    text = model_card_text(write_run(tmp_path), COMMAND)
    assert "120 documents, 3,456 sentences, 78,901 tokens" in text and "2 epochs, 1,000 instances" in text
    assert "40 optimizer steps of 32 sequences" in text and "bf16 mixed precision" in text
    assert "MLM loss" in text and "3.0000" in text and "2.0000" in text and "-1.0000" in text  # before, after, change
    assert f"{math.exp(3.0):,.2f}" in text and f"{math.exp(2.0):,.2f}" in text  # perplexity before and after
    assert "+11.00 pts [" in text and "better" in text  # the paired difference to step 0: +10, +11, +12
    assert COMMAND in text


def test_a_run_without_held_out_set_or_probe_says_so(tmp_path: Path) -> None:
    run = write_run(tmp_path, with_probe=False)
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 8, "mlm_loss": 2.0}) + "\n")
    text = model_card_text(run, COMMAND)
    assert "No held-out set was evaluated" in text and "Downstream probe" not in text
    assert "8 optimizer steps" in text


def test_hub_ids_pass_and_local_directories_do_not(tmp_path: Path, tiny_bert_dir: Path) -> None:
    assert hub_model_id("bert-base-uncased") == "bert-base-uncased"
    assert hub_model_id("google-bert/bert-base-cased") == "google-bert/bert-base-cased"
    assert hub_model_id(str(tiny_bert_dir)) is None  # a local directory is not a base_model the Hub knows
    assert hub_model_id(None) is None


def test_nan_and_infinity_in_metrics_leave_their_rows_out_of_the_card(tmp_path: Path) -> None:
    run = write_run(tmp_path, with_probe=False)
    lines = ['{"kind": "eval", "step": 0, "mlm_loss": 3.0, "perplexity": 20.1, "mlm_accuracy": 0.25}',
             '{"kind": "train", "step": NaN, "mlm_loss": NaN}',
             '{"kind": "eval", "step": 40, "mlm_loss": 2.0, "perplexity": Infinity, "mlm_accuracy": 0.4}']  # fmt: skip
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    text = model_card_text(run, COMMAND)
    assert "step 0 → 40" in text and "MLM loss" in text and "perplexity" not in text.split("step 0 → 40")[1][:400]
    assert "**Steps**: 40 optimizer steps" in text
