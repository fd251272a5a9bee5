"""The model card: Hub metadata that huggingface_hub's own ModelCard parser accepts, and the run's facts."""

from __future__ import annotations

import json
import math
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

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


def card_of(run: Path, command: str | None = COMMAND) -> Any:
    from huggingface_hub import ModelCard

    return ModelCard.load(write_model_card(run, command))  # raises on a metadata block it cannot read


def set_arguments(run: Path, **changes: Any) -> None:
    path = run / "training_args.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_a_local_base_is_named_in_the_text_only_never_by_its_stale_name_or_path(tmp_path: Path) -> None:
    run = write_run(tmp_path)
    local = tmp_path / "minilm"  # a downloaded all-MiniLM-L6-v2: its config.json names its grandparent
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"_name_or_path": "nreimers/MiniLM-L6-H384-uncased"}))
    set_arguments(run, bert_model=str(local))
    card = card_of(run)
    assert card.data.base_model is None and "base_model" not in card.content.split("---")[1]
    assert f"the local model `{local}`" in card.text and "nreimers" not in card.content
    assert "--base_model_id" in card.text  # how to name it


def test_base_model_id_names_the_hub_id_of_a_local_base_in_the_metadata(tmp_path: Path) -> None:
    run = write_run(tmp_path)
    set_arguments(run, bert_model=str(tmp_path / "data"), base_model_id="sentence-transformers/all-MiniLM-L6-v2")
    card = card_of(run)
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert f"the local model `{tmp_path / 'data'}`, a copy of `sentence-transformers/all-MiniLM-L6-v2`" in card.text


def test_the_card_states_the_objective_the_head_warmup_and_the_data_mix(tmp_path: Path) -> None:
    run = write_run(tmp_path, with_probe=False)
    warmup = [{"kind": "head_warmup", "step": 0, "warmup_step": step, "mlm_loss": 5.0} for step in (1, 2, 3)]
    train = [{"kind": "train", "step": 8, "mlm_loss": 2.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in warmup + train))
    (run / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    manifest_path = tmp_path / "data" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["corpora"] = [
        {"name": "corpus", "sampling_probability": 0.7},
        {"name": "task", "sampling_probability": 0.3},
    ]
    manifest["task_data"] = {"source": "task.csv", "task_share": 0.3}
    manifest_path.write_text(json.dumps(manifest))
    text = model_card_text(run, COMMAND)
    assert "**Objective**: masked LM only, no next-sentence prediction; saved as `BertForMaskedLM`" in text
    assert "**Head warm-up**: 3 steps" in text
    assert "**Data mix**: 2 corpora by sampling probability (corpus 70%, task 30%); the task's texts `task.csv`" in text
    with_nsp = train[0] | {"nsp_loss": 0.6}
    (run / "metrics.jsonl").write_text(json.dumps(with_nsp) + "\n")
    assert "**Objective**: masked LM + next-sentence prediction (NSP)" in model_card_text(run, COMMAND)


def test_a_simple_run_states_its_task_share(tmp_path: Path) -> None:
    run = write_run(tmp_path, with_probe=False)
    arguments = json.loads((run / "training_args.json").read_text())
    simple = {"stage": "simple", "train_corpus": "corpus.txt", "task_data": "task.csv", "task_share": 0.25}
    (run / "training_args.json").write_text(json.dumps({**simple, "training": arguments}))
    text = model_card_text(run, "bert-domain-ft simple --train_corpus corpus.txt")
    assert "the corpus and the task's texts `task.csv`: 25% of each epoch's pairs start in them" in text
    assert "# simple: this run\nbert-domain-ft simple --train_corpus corpus.txt" in text


def test_the_chain_goes_back_through_select_and_prepare_from_their_records(tmp_path: Path) -> None:
    run = write_run(tmp_path, with_probe=False)
    prepared, selected = tmp_path / "prepared.txt", tmp_path / "selected.txt"
    Path(f"{prepared}.punkt.json").write_text("{}")  # prepare's sentence splitter, beside its output
    selection = {"method": "bm25", "task_data": "task.csv", "corpus": str(prepared), "tokens": 5000,
                 "fraction": None, "bert_model": None, "k1": 1.2, "b": 0.75, "keep_stopwords": False, "seed": 3}  # fmt: skip
    Path(f"{selected}.json").write_text(json.dumps(selection))  # select's record, beside its output
    manifest_path = tmp_path / "data" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    pregenerate = f"bert-domain-ft pregenerate --train_corpus {selected} --output_dir data"
    manifest |= {"command": pregenerate, "generation": {"train_corpus": {"corpus": str(selected), "task": "t.csv"}}}
    manifest_path.write_text(json.dumps(manifest))
    text = model_card_text(run, COMMAND)
    select = (
        f"bert-domain-ft select --task_data task.csv --corpus {prepared} --output {selected} --tokens 5000 --seed 3"
    )
    steps = [f"# prepare: `{prepared}` was written by `bert-domain-ft prepare`", select, pregenerate, COMMAND]
    positions = [text.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), positions
    assert "t.csv" not in text.split("## Reproduce")[1]  # the task's texts are the user's file, made by no step


def test_steps_that_left_no_record_are_said_to_have_left_none(tmp_path: Path) -> None:
    run = write_run(tmp_path, with_probe=False)  # a manifest of an older version: no command, no corpus paths
    text = model_card_text(run, None)
    assert "does not record its command" in text and "this run, started from Python" in text
    manifest_path = tmp_path / "data" / "manifest.json"
    manifest_path.write_text(json.dumps({"generation": {"train_corpus": {"corpus": str(tmp_path / "mine.txt")}}}))
    assert f"`{tmp_path / 'mine.txt'}`: no record of how it was made" in model_card_text(run, None)


def test_the_chain_of_commands_of_a_pregenerate_and_finetune_run_is_in_its_card(
    tmp_path: Path, tiny_corpus: Path, tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from training_helpers import run_cli

    corpus = tmp_path / "corpus.txt"
    shutil.copy(tiny_corpus, corpus)
    Path(f"{corpus}.punkt.json").write_text("{}")
    data, run = tmp_path / "data", tmp_path / "run"
    pregenerate = ["pregenerate", "--train_corpus", str(corpus), "--bert_model", str(tiny_bert_dir), "--output_dir",
                   str(data), "--epochs_to_generate", "1", "--max_seq_len", "32", "--no_progress"]  # fmt: skip
    finetune = ["finetune", "--pregenerated_data", str(data), "--bert_model", str(tiny_bert_dir), "--output_dir",
                str(run), "--max_steps", "2", "--train_batch_size", "8", "--no_progress", "--no_cuda"]  # fmt: skip
    for arguments in (pregenerate, finetune):
        monkeypatch.setattr(sys, "argv", ["bert-domain-ft", *arguments])  # as the console script starts
        assert run_cli(capsys, arguments)[0] == 0
    reproduce = (run / "README.md").read_text().split("## Reproduce")[1]
    steps = ["# prepare: ", shlex.join(["bert-domain-ft", *pregenerate]), shlex.join(["bert-domain-ft", *finetune])]
    positions = [reproduce.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), reproduce
