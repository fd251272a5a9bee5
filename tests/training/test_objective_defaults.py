"""objective "auto": NSP only for a BERT whose checkpoint has a trained NSP head; masked LM for encoders saved alone.

The evidence (benchmarks/adaptation.py on the demo's task): training a fresh NSP head rewrote the pooler (its
weights moved by 164% of their norm) and the probe fell 6.1 points; with the base pooler put back it was level with
the base. These tests pin the default that follows from it and the warnings around it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from training_helpers import make_pregenerated, quick_config, read_metrics, run_cli

from bert_domain_ft.data.pregenerate import PregenerateConfig, pregenerate
from bert_domain_ft.model.files import checkpoint_tensor_names, has_trained_nsp_head
from bert_domain_ft.training.config import SimpleConfig
from bert_domain_ft.training.recipe import finetune
from bert_domain_ft.training.simple import simple_finetune


def test_a_trained_nsp_head_is_told_from_the_safetensors_header_alone(
    tiny_bert_dir: Path, tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    assert has_trained_nsp_head(tiny_bert_dir) is True
    assert has_trained_nsp_head(tiny_encoder_dir) is False
    assert has_trained_nsp_head("bert-base-uncased") is None  # a hub id: cannot be told here
    pickled_only = tmp_path / "bin"
    pickled_only.mkdir()
    (pickled_only / "pytorch_model.bin").write_bytes(b"\x80")
    assert has_trained_nsp_head(pickled_only) is None
    names = checkpoint_tensor_names(tiny_bert_dir)
    assert names is not None and "cls.seq_relationship.weight" in names


@pytest.mark.parametrize(("model", "objective"), [("tiny_bert_dir", "nsp"), ("tiny_encoder_dir", "mlm")])
def test_pregenerate_auto_makes_nsp_pairs_only_for_a_checkpoint_with_a_trained_nsp_head(
    request: pytest.FixtureRequest, tiny_corpus: Path, tmp_path: Path, model: str, objective: str
) -> None:
    directory = request.getfixturevalue(model)
    config = PregenerateConfig(
        train_corpus=tiny_corpus,
        output_dir=tmp_path / "out",
        bert_model=str(directory),
        show_progress=False,
        holdout_fraction=0.0,
    )
    manifest = pregenerate(config)
    assert manifest["objective"] == objective


@pytest.fixture(scope="module")
def nsp_data(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, tiny_bert_dir: Path) -> Path:
    return make_pregenerated(tiny_corpus, tiny_bert_dir, tmp_path_factory.mktemp("data") / "nsp", objective="nsp")


def test_finetune_auto_trains_masked_lm_only_for_an_encoder_without_nsp_head_and_says_why(
    nsp_data: Path, tiny_encoder_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    output = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        finetune(quick_config(nsp_data, tiny_encoder_dir, output, head_warmup_steps=2, stop_after_steps=2))
    assert any("objective: masked LM only" in record.getMessage() for record in caplog.records)
    train = [record for record in read_metrics(output) if record["kind"] == "train"]
    assert train and all("nsp_loss" not in record for record in train)


def test_finetune_objective_nsp_still_trains_a_fresh_nsp_head_with_a_warning(
    nsp_data: Path, tiny_encoder_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    output = tmp_path / "out"
    config = quick_config(nsp_data, tiny_encoder_dir, output, objective="nsp", head_warmup_steps=2, stop_after_steps=2)
    with caplog.at_level(logging.WARNING):
        finetune(config)
    assert any("rewrites the pooler" in record.getMessage() for record in caplog.records)
    train = [record for record in read_metrics(output) if record["kind"] == "train"]
    assert train and all("nsp_loss" in record for record in train)


def test_finetune_auto_keeps_nsp_for_a_bert_with_its_heads(nsp_data: Path, tiny_bert_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    finetune(quick_config(nsp_data, tiny_bert_dir, output, stop_after_steps=2))
    train = [record for record in read_metrics(output) if record["kind"] == "train"]
    assert train and all("nsp_loss" in record for record in train)
    arguments = json.loads((output / "training_args.json").read_text())
    assert arguments["objective"] == "auto"
    shutil.rmtree(output)


def objective_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.getMessage().startswith("objective: ")]


def simple_config(corpus: Path, model: Path, output: Path, **options: object) -> SimpleConfig:
    options = {"epochs": 1, "train_batch_size": 32, "max_seq_len": 64, "show_progress": False, "no_cuda": True,
               "on_memory": True, "stop_after_steps": 2, "logging_steps": 1, **options}  # fmt: skip
    return SimpleConfig.create(train_corpus=corpus, output_dir=output, bert_model=str(model), **options)


def test_simple_decides_as_finetune_does_masked_lm_only_for_an_encoder_without_heads(
    tiny_corpus: Path, nsp_data: Path, tiny_encoder_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        simple_finetune(simple_config(tiny_corpus, tiny_encoder_dir, tmp_path / "simple", head_warmup_steps=1))
    (simple_line,) = objective_lines(caplog)  # one line says what was chosen and why
    assert simple_line.startswith("objective: masked LM only") and "rewrites the pooler" in simple_line
    train = [record for record in read_metrics(tmp_path / "simple") if record["kind"] == "train"]
    assert train and all("nsp_loss" not in record for record in train)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        finetune(
            quick_config(nsp_data, tiny_encoder_dir, tmp_path / "finetune", head_warmup_steps=1, stop_after_steps=1)
        )
    assert objective_lines(caplog) == [simple_line]  # the same function decides both, with the same words


def test_simple_auto_trains_nsp_for_a_bert_with_its_heads(
    tiny_corpus: Path, tiny_bert_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        simple_finetune(simple_config(tiny_corpus, tiny_bert_dir, tmp_path / "out"))
    (line,) = objective_lines(caplog)
    assert line.startswith("objective: masked LM + next-sentence prediction (--objective auto")
    train = [record for record in read_metrics(tmp_path / "out") if record["kind"] == "train"]
    assert train and all("nsp_loss" in record for record in train)


def test_simple_objective_nsp_forces_it_on_an_encoder_without_heads(
    tiny_corpus: Path, tiny_encoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    flags = ["simple", "--train_corpus", str(tiny_corpus), "--bert_model", str(tiny_encoder_dir), "--output_dir",
             str(output), "--objective", "nsp", "--max_seq_length", "64", "--train_batch_size", "32", "--on_memory",
             "--head_warmup_steps", "1", "--stop_after_steps", "2", "--logging_steps", "1", "--no_progress",
             "--no_cuda"]  # fmt: skip
    status, error, _ = run_cli(capsys, flags)
    assert status == 0, error
    train = [record for record in read_metrics(output) if record["kind"] == "train"]
    assert train and all("nsp_loss" in record for record in train)


def test_simple_trains_masked_lm_only_on_a_model_without_an_nsp_head_of_any_kind(
    tiny_corpus: Path, roberta_encoder_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):  # was refused: "the data was pregenerated for NSP"
        simple_finetune(simple_config(tiny_corpus, roberta_encoder_dir, tmp_path / "out", head_warmup_steps=1))
    (line,) = objective_lines(caplog)
    assert line == "objective: masked LM only (--objective auto: a roberta model has no next-sentence-prediction head)"
    assert [record["step"] for record in read_metrics(tmp_path / "out") if record["kind"] == "train"] == [1, 2]
