"""The simple stage end to end on the tiny BERT: loss goes down, the model loads, exact resume, fresh masks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny_assets
import torch
from training_helpers import assert_identical_weights, load_weights, read_metrics, run_cli

from bert_domain_ft.data.document_store import build_document_store, open_document_store
from bert_domain_ft.data.loader import plan_epoch
from bert_domain_ft.data.simple_pairs import PairIndex
from bert_domain_ft.errors import UserError
from bert_domain_ft.model.tokenizer import describe_tokenizer, load_tokenizer
from bert_domain_ft.training import simple as simple_stage
from bert_domain_ft.training.config import SimpleConfig
from bert_domain_ft.training.simple import STORE_DIRECTORY, SentencePairSource, pair_settings, simple_finetune


def quick_simple_config(corpus: Path, model: Path, output_dir: Path, **overrides: Any) -> SimpleConfig:
    options: dict[str, Any] = {
        "epochs": 1,
        "train_batch_size": 32,
        "max_seq_len": 64,
        "logging_steps": 2,
        "show_progress": False,
        "no_cuda": True,
    }
    options.update(overrides)
    return SimpleConfig.create(train_corpus=corpus, output_dir=output_dir, bert_model=str(model), **options)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, tiny_bert_dir: Path) -> Path:
    """Three epochs at a high learning rate on the tiny corpus (tokens on disk, batches grouped by length)."""
    output = tmp_path_factory.mktemp("simple") / "out"
    config = quick_simple_config(tiny_corpus, tiny_bert_dir, output, epochs=3, learning_rate=2e-3, group_by_length=True)
    assert simple_finetune(config) == output
    return output


def test_a_short_run_lowers_the_training_loss(trained: Path) -> None:
    records = [record for record in read_metrics(trained) if record["kind"] == "train"]
    first, last = records[0], records[-1]
    assert last["mlm_loss"] < first["mlm_loss"] - 0.5
    assert "nsp_loss" in last and 0.3 < last["nsp_accuracy"] <= 1.0


def test_the_saved_model_loads_with_from_pretrained(trained: Path) -> None:
    from transformers import AutoModelForPreTraining, AutoTokenizer, BertForSequenceClassification

    model = AutoModelForPreTraining.from_pretrained(trained)
    classifier = BertForSequenceClassification.from_pretrained(trained, num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(trained)
    saved = load_weights(trained)["bert.encoder.layer.0.attention.self.query.weight"]
    assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight, saved)
    assert torch.equal(classifier.bert.encoder.layer[0].attention.self.query.weight, saved)
    assert tokenizer("kernel module")["input_ids"][0] == tokenizer.cls_token_id


def test_run_records_its_settings_and_removes_the_on_disk_corpus(trained: Path) -> None:
    arguments = json.loads((trained / "training_args.json").read_text())
    assert arguments["stage"] == "simple" and arguments["group_by_length"] and not arguments["on_memory"]
    assert arguments["training"]["epochs"] == 3
    assert not (trained / STORE_DIRECTORY).exists()


@pytest.fixture(scope="module")
def tokenizer_and_facts(tiny_tokenizer_dir: Path) -> tuple[Any, Any]:
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir))
    return tokenizer, describe_tokenizer(tokenizer, str(tiny_tokenizer_dir))


def make_source(
    tiny_corpus: Path,
    tokenizer_and_facts: tuple[Any, Any],
    directory: Path | None,
    global_batch_size: int = 16,
    **options: Any,
) -> SentencePairSource:
    tokenizer, facts = tokenizer_and_facts
    store = build_document_store(tiny_corpus, tokenizer, facts, directory=directory, show_progress=False)
    if directory is not None:
        store = open_document_store(directory)  # as the stage does: token runs are then read with pread
    config = quick_simple_config(tiny_corpus, Path("model"), Path("out"))
    return SentencePairSource(store, *pair_settings(config, tokenizer, facts), global_batch_size, **options)


def test_source_draws_fresh_masks_every_epoch_and_repeats_a_batch_exactly(
    tiny_corpus: Path, tokenizer_and_facts: tuple[Any, Any]
) -> None:
    source = make_source(tiny_corpus, tokenizer_and_facts, None)
    instances = np.arange(40)
    first, second, again = source.open_epoch(0)(instances), source.open_epoch(1)(instances), None
    again = source.open_epoch(0)(instances)
    for name in first:
        assert torch.equal(first[name], again[name]), name
    changed = (first["masked_lm_positions"] != second["masked_lm_positions"]).any(dim=1)
    assert changed.float().mean() > 0.9
    assert source.epoch_size(0) == source.epoch_size(5)


def test_source_on_disk_keeps_only_the_index_in_ram_and_matches_in_memory(
    tmp_path: Path, tiny_corpus: Path, tokenizer_and_facts: tuple[Any, Any]
) -> None:
    on_disk = make_source(tiny_corpus, tokenizer_and_facts, tmp_path / "store")
    in_memory = make_source(tiny_corpus, tokenizer_and_facts, None)
    assert isinstance(on_disk.store.tokens, np.memmap) and on_disk.store.tokens_file is not None
    for array in (on_disk.index.sentence_offsets, on_disk.index.document_offsets, on_disk.index.first_sentences):
        assert not isinstance(array, np.memmap) and len(array) <= on_disk.store.num_sentences + 1
    instances = np.arange(0, on_disk.epoch_size(0), 7)
    disk_batch, ram_batch = on_disk.open_epoch(2)(instances), in_memory.open_epoch(2)(instances)
    for name in ram_batch:
        assert torch.equal(disk_batch[name], ram_batch[name]), name


def test_grouped_order_is_offered_only_with_group_by_length(
    tiny_corpus: Path, tokenizer_and_facts: tuple[Any, Any]
) -> None:
    plain = make_source(tiny_corpus, tokenizer_and_facts, None)
    grouped = make_source(tiny_corpus, tokenizer_and_facts, None, group_by_length=True)
    assert plain.epoch_order(0) is None
    order = grouped.epoch_order(0)
    assert order is not None and np.array_equal(np.sort(order), np.arange(grouped.epoch_size(0)))


def test_plans_follow_the_sources_order_across_processes() -> None:
    order = np.random.default_rng(0).permutation(50)
    plans = [plan_epoch(50, 4, seed=1, epoch=0, rank=rank, world_size=2, order=order) for rank in range(2)]
    for batch in range(len(plans[0])):
        together = np.sort(np.concatenate([plans[0][batch], plans[1][batch]]))
        assert np.array_equal(together, np.sort(order[batch * 8 : (batch + 1) * 8]))


def test_training_reads_the_grouped_batches_in_order(
    tmp_path: Path,
    tiny_corpus: Path,
    tiny_bert_dir: Path,
    tokenizer_and_facts: tuple[Any, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fetched: list[np.ndarray] = []
    original = simple_stage.assemble_batch

    def spy(store: Any, index: Any, pairs: Any, instances: np.ndarray, *rest: Any) -> dict[str, np.ndarray]:
        fetched.append(np.array(instances))
        return original(store, index, pairs, instances, *rest)

    monkeypatch.setattr(simple_stage, "assemble_batch", spy)
    options = {"train_batch_size": 16, "gradient_accumulation_steps": 2, "group_by_length": True}
    simple_finetune(quick_simple_config(tiny_corpus, tiny_bert_dir, tmp_path / "out", stop_after_steps=3, **options))
    expected = make_source(tiny_corpus, tokenizer_and_facts, None, global_batch_size=8, group_by_length=True)
    order = expected.epoch_order(0)
    assert order is not None and len(fetched) >= 6
    for batch, instances in enumerate(fetched[:6]):
        assert np.array_equal(instances, order[batch * 8 : (batch + 1) * 8])


@pytest.mark.slow
def test_resume_after_a_stop_gives_the_uninterrupted_weights(
    tmp_path: Path, tiny_corpus: Path, tiny_bert_dir: Path
) -> None:
    options = {"epochs": 2, "train_batch_size": 64, "group_by_length": True}
    straight = quick_simple_config(tiny_corpus, tiny_bert_dir, tmp_path / "straight", **options)
    simple_finetune(straight)
    stopped = quick_simple_config(tiny_corpus, tiny_bert_dir, tmp_path / "resumed", stop_after_steps=7, **options)
    simple_finetune(stopped)
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    resumed = quick_simple_config(tiny_corpus, tiny_bert_dir, tmp_path / "resumed", resume=True, **options)
    simple_finetune(resumed)
    assert_identical_weights(load_weights(tmp_path / "straight"), load_weights(tmp_path / "resumed"))


def test_fresh_heads_are_warmed_up_first_as_in_finetune(
    tmp_path: Path, tiny_corpus: Path, tiny_encoder_dir: Path
) -> None:
    options = {"on_memory": True, "stop_after_steps": 3, "head_warmup_steps": 4}
    simple_finetune(quick_simple_config(tiny_corpus, tiny_encoder_dir, tmp_path / "out", **options))
    kinds = [record["kind"] for record in read_metrics(tmp_path / "out")]
    assert "head_warmup" in kinds and kinds.index("head_warmup") < kinds.index("train")
    assert [record["step"] for record in read_metrics(tmp_path / "out") if record["kind"] == "train"][-1] == 3


def test_a_checkpoint_with_its_heads_skips_the_warm_up(trained: Path) -> None:
    assert all(record["kind"] != "head_warmup" for record in read_metrics(trained))


def test_max_seq_len_beyond_the_models_positions_is_refused(
    tmp_path: Path, tiny_corpus: Path, tiny_bert_dir: Path
) -> None:
    config = quick_simple_config(tiny_corpus, tiny_bert_dir, tmp_path / "out", max_seq_len=512)
    with pytest.raises(UserError, match="max_position_embeddings"):
        simple_finetune(config)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_seq_len": 4}, "max_seq_len must be at least 8"),
        ({"masked_lm_prob": 0.0}, "masked_lm_prob must be between 0 and 1"),
        ({"max_predictions_per_seq": 0}, "max_predictions_per_seq must be at least 1"),
        ({"train_batch_size": 30, "gradient_accumulation_steps": 4}, "not divisible"),
    ],
)
def test_config_rejects_impossible_values(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        quick_simple_config(Path("corpus.txt"), Path("model"), tmp_path / "out", **changes)


@pytest.mark.slow
def test_two_gloo_processes_share_the_on_disk_corpus_and_each_epoch(
    tmp_path: Path, tiny_corpus: Path, tiny_bert_dir: Path
) -> None:
    output = tmp_path / "out"
    flags = ["--train_corpus", str(tiny_corpus), "--bert_model", str(tiny_bert_dir), "--output_dir", str(output)]
    flags += ["--no_cuda", "--no_progress", "--max_seq_length", "48", "--train_batch_size", "32", "--group_by_length"]
    flags += ["--num_train_epochs", "1"]
    environment = dict(os.environ, OMP_NUM_THREADS="1")  # two processes on two cores must not oversubscribe
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command = [*launcher, "-m", "bert_domain_ft", "simple", *flags]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (output / "model.safetensors").is_file() and not (output / STORE_DIRECTORY).exists()
    arguments = json.loads((output / "training_args.json").read_text())
    steps = [record["step"] for record in read_metrics(output) if record["kind"] == "train"]
    assert len(steps) == len(set(steps))  # one writer: rank 0
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    store = build_document_store(tiny_corpus, tokenizer, describe_tokenizer(tokenizer, "m"), show_progress=False)
    pairs = PairIndex.from_store(store).num_instances
    assert steps[-1] == -(-pairs // 64)  # 2 processes × 32 pairs per step: the epoch is shared, each pair once
    assert arguments["stage"] == "simple" and arguments["group_by_length"]


def test_resume_on_an_edited_corpus_or_task_file_or_another_task_share_is_refused_naming_it(
    tmp_path: Path, tiny_corpus: Path, tiny_bert_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus, output = Path(shutil.copy(tiny_corpus, tmp_path / "corpus.txt")), tmp_path / "out"
    task = tiny_assets.write_task_file(tmp_path / "task.csv", num_rows=20, seed=1)
    flags = ["simple", "--train_corpus", str(corpus), "--bert_model", str(tiny_bert_dir), "--output_dir", str(output)]
    flags += ["--epochs", "1", "--train_batch_size", "32", "--max_seq_len", "32", "--save_steps", "2"]
    flags += ["--task_data", str(task), "--no_progress", "--no_cuda"]
    assert run_cli(capsys, [*flags, "--stop_after_steps", "2"])[0] == 0
    checkpoint = (output / "checkpoint-2" / "model.safetensors").read_bytes()
    status, error, _ = run_cli(capsys, [*flags, "--resume", "--task_share", "0.3"])
    assert status == 2 and "task_share 0.5 → 0.3" in error and "the checkpoint is intact" in error
    original = corpus.read_text(encoding="utf-8")
    corpus.write_text(original + "\nA document added since.\nIt changes every later epoch.\n", encoding="utf-8")
    status, error, _ = run_cli(capsys, [*flags, "--resume"])
    assert status == 2 and f"train_corpus {corpus}: its content changed (fingerprint " in error
    corpus.write_text(original, encoding="utf-8")
    tiny_assets.write_task_file(task, num_rows=20, seed=2)
    status, error, _ = run_cli(capsys, [*flags, "--resume"])
    assert status == 2 and f"task_data {task}: its content changed (fingerprint " in error
    assert (output / "checkpoint-2" / "model.safetensors").read_bytes() == checkpoint
    tiny_assets.write_task_file(task, num_rows=20, seed=1)  # both files as they were: the run continues
    assert run_cli(capsys, [*flags, "--resume", "--stop_after_steps", "4"])[:2] == (0, "")
