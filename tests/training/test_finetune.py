"""The finetune stage end to end on the tiny BERT: outputs, metrics, exact resume, refusals, seams."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from training_helpers import (
    assert_identical_weights,
    load_weights,
    make_pregenerated,
    quick_config,
    read_metrics,
    run_cli,
)

from bert_domain_ft.errors import UserError
from bert_domain_ft.training import recipe
from bert_domain_ft.training.checkpoints import checkpoint_directories
from bert_domain_ft.training.recipe import finetune


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, tiny_bert_dir: Path) -> Path:
    return make_pregenerated(tiny_corpus, tiny_bert_dir, tmp_path_factory.mktemp("data") / "pregenerated")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, tiny_encoder_dir: Path) -> Path:
    """Two epochs from an encoder-only checkpoint (fresh heads), checkpoints every 2 steps, keep 2; NSP asked for
    explicitly ("auto" trains such an encoder on masked LM only, tests/test_objective_defaults.py)."""
    output = tmp_path_factory.mktemp("run") / "out"
    options = {"epochs": 2, "train_batch_size": 64, "save_steps": 2, "save_total_limit": 2, "objective": "nsp"}
    config = quick_config(data_dir, tiny_encoder_dir, output, **options)
    assert finetune(config) == output
    return output


def test_output_dir_holds_model_tokenizer_arguments_and_metrics(finished_run: Path) -> None:
    for name in ("model.safetensors", "config.json", "tokenizer.json", "training_args.json", "metrics.jsonl"):
        assert (finished_run / name).is_file(), name
    arguments = json.loads((finished_run / "training_args.json").read_text())
    assert arguments["epochs"] == 2 and arguments["learning_rate"] == 3e-5
    assert len(checkpoint_directories(finished_run)) == 2  # --save_total_limit 2
    assert not list(finished_run.glob("*.partial"))


def test_every_output_file_honours_the_umask(finished_run: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    modes = {str(path.relative_to(finished_run)): path.stat().st_mode & 0o777 for path in finished_run.rglob("*")}
    wrong = {
        name: oct(mode) for name, mode in modes.items() if (finished_run / name).is_file() and mode != 0o666 & ~mask
    }
    assert "model.safetensors" in modes and not wrong, wrong


def test_output_loads_with_auto_classes_and_sequence_classification(finished_run: Path) -> None:
    from transformers import AutoModelForMaskedLM, AutoModelForPreTraining, BertForSequenceClassification

    pretraining = AutoModelForPreTraining.from_pretrained(finished_run)
    masked_lm = AutoModelForMaskedLM.from_pretrained(finished_run)
    classifier = BertForSequenceClassification.from_pretrained(finished_run, num_labels=3)
    saved = load_weights(finished_run)
    trained = saved["bert.encoder.layer.0.attention.self.query.weight"]
    assert torch.equal(pretraining.bert.encoder.layer[0].attention.self.query.weight, trained)
    assert torch.equal(masked_lm.bert.encoder.layer[0].attention.self.query.weight, trained)
    assert torch.equal(classifier.bert.encoder.layer[0].attention.self.query.weight, trained)


def test_training_changes_the_encoder(finished_run: Path, tiny_encoder_dir: Path) -> None:
    before = load_weights(tiny_encoder_dir)
    after = load_weights(finished_run)
    name = "encoder.layer.1.output.dense.weight"
    assert not torch.equal(before[name], after[f"bert.{name}"])


def test_metrics_log_train_records_with_losses_accuracy_lr_and_throughput(finished_run: Path) -> None:
    records = [record for record in read_metrics(finished_run) if record["kind"] == "train"]
    steps = [record["step"] for record in records]
    assert steps == sorted(set(steps)) and steps[0] == 2
    total = json.loads((checkpoint_directories(finished_run)[-1][1] / "training_state.json").read_text())
    settings = total["settings"]  # the run's steps count its head-only steps; global steps are the main phase's
    assert steps[-1] == settings["total_steps"] - settings["head_only_steps"] == total["position"]["global_step"]
    for record in records:
        for key in ("epoch", "lr", "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy", "sequences_per_second"):
            assert isinstance(record[key], float), key
        assert 0.0 <= record["nsp_accuracy"] <= 1.0 and record["mlm_loss"] > 0 and record["lr"] > 0
        assert "mlm_acc" not in record and "nsp_acc" not in record  # one name, as in the held-out records
    assert records[-1]["epoch"] == 2.0


def test_stop_then_resume_gives_bit_identical_weights_to_a_straight_run(
    tmp_path: Path, data_dir: Path, tiny_bert_dir: Path
) -> None:
    options = {"epochs": 2, "gradient_accumulation_steps": 2, "train_batch_size": 64}  # 5 steps per epoch
    straight = finetune(quick_config(data_dir, tiny_bert_dir, tmp_path / "straight", **options))
    interrupted = tmp_path / "interrupted"
    finetune(quick_config(data_dir, tiny_bert_dir, interrupted, stop_after_steps=3, **options))
    assert not (interrupted / "model.safetensors").exists()  # stopped mid-epoch: only checkpoint-3
    assert [step for step, _ in checkpoint_directories(interrupted)] == [3]
    finetune(quick_config(data_dir, tiny_bert_dir, interrupted, resume=True, **options))
    assert_identical_weights(load_weights(straight), load_weights(interrupted))
    steps = [record["step"] for record in read_metrics(interrupted)]
    assert len(steps) == len(set(steps))  # one record per logged step, as if never stopped


def test_resume_with_different_batch_settings_is_refused(tmp_path: Path, data_dir: Path, tiny_bert_dir: Path) -> None:
    finetune(quick_config(data_dir, tiny_bert_dir, tmp_path / "out", stop_after_steps=1))
    with pytest.raises(UserError, match="settings changed.*micro_batch_size"):
        finetune(quick_config(data_dir, tiny_bert_dir, tmp_path / "out", resume=True, train_batch_size=16))


def test_existing_run_is_refused_without_resume_or_overwrite(
    tmp_path: Path, data_dir: Path, tiny_bert_dir: Path
) -> None:
    finetune(quick_config(data_dir, tiny_bert_dir, tmp_path / "out", stop_after_steps=1))
    with pytest.raises(UserError, match="--resume.*--overwrite_output_dir"):
        finetune(quick_config(data_dir, tiny_bert_dir, tmp_path / "out", stop_after_steps=1))
    finetune(quick_config(data_dir, tiny_bert_dir, tmp_path / "out", stop_after_steps=2, overwrite_output_dir=True))
    assert [step for step, _ in checkpoint_directories(tmp_path / "out")] == [2]


def _altered_copy(data_dir: Path, destination: Path, **changes: object) -> Path:
    shutil.copytree(data_dir, destination)
    manifest = json.loads((destination / "manifest.json").read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        (manifest[section] if field else manifest)[field or section] = value
    (destination / "manifest.json").write_text(json.dumps(manifest))
    return destination


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tokenizer__vocab_fingerprint": "0123456789abcdef"}, "vocabulary of .* fingerprint 0123456789abcdef"),
        ({"tokenizer__do_lower_case": False}, "data is cased .* lower-cases"),
        ({"max_seq_len": 512}, "max_seq_len 512 but .* only 128 positions"),
        ({"masking": "rolling"}, "masking 'rolling' is not one of"),
    ],
)
def test_data_that_does_not_fit_the_model_is_one_clear_error(
    tmp_path: Path, data_dir: Path, tiny_bert_dir: Path, changes: dict[str, object], message: str
) -> None:
    altered = _altered_copy(data_dir, tmp_path / "data", **changes)
    with pytest.raises(UserError, match=message):
        finetune(quick_config(altered, tiny_bert_dir, tmp_path / "out"))
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_encoder_only_checkpoint_gives_one_warning_line(
    tmp_path: Path, data_dir: Path, tiny_encoder_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        finetune(quick_config(data_dir, tiny_encoder_dir, tmp_path / "out", stop_after_steps=1))
    head_warnings = [record for record in caplog.records if "initialised at random" in record.getMessage()]
    assert len(head_warnings) == 1 and "\n" not in head_warnings[0].getMessage()
    assert not [record for record in caplog.records if record.name.startswith("transformers")]


def test_evaluator_runs_first_every_eval_steps_and_last_without_disturbing_training(
    tmp_path: Path, data_dir: Path, tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bool] = []

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        calls.append(model.training)
        torch.rand(1000)  # uses the global RNG: training must not notice
        return {"mlm_loss": 1.5}

    monkeypatch.setattr(recipe.build, "build_evaluation", lambda *arguments: evaluate)
    evaluated = finetune(quick_config(data_dir, tiny_bert_dir, tmp_path / "with_eval", eval_steps=4))
    monkeypatch.setattr(recipe.build, "build_evaluation", lambda *arguments: None)
    plain = finetune(quick_config(data_dir, tiny_bert_dir, tmp_path / "plain"))
    records = read_metrics(evaluated)
    eval_steps = [record["step"] for record in records if record["kind"] == "eval"]
    last_step = max(record["step"] for record in records)
    expected = [0, *range(4, last_step + 1, 4)] + ([last_step] if last_step % 4 else [])
    assert eval_steps == expected and len(calls) == len(expected) and not any(calls)  # always in eval mode
    assert all(record["mlm_loss"] == 1.5 for record in records if record["kind"] == "eval")
    assert_identical_weights(load_weights(evaluated), load_weights(plain))


def test_mlm_only_data_trains_without_nsp_and_saves_no_nsp_head(
    tmp_path: Path, tiny_corpus: Path, tiny_bert_dir: Path
) -> None:
    data = make_pregenerated(tiny_corpus, tiny_bert_dir, tmp_path / "mlm_data", epochs=1, objective="mlm")
    output = finetune(quick_config(data, tiny_bert_dir, tmp_path / "out"))
    records = [record for record in read_metrics(output) if record["kind"] == "train"]
    assert records and all("nsp_loss" not in record for record in records)
    before, after = load_weights(tiny_bert_dir), load_weights(output)
    assert not any(name.startswith("cls.seq_relationship.") for name in after)  # an untrained head is not shipped
    assert json.loads((output / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    assert torch.equal(before["bert.pooler.dense.weight"], after["bert.pooler.dense.weight"])  # the base's, kept
    assert not torch.equal(
        before["cls.predictions.transform.dense.weight"], after["cls.predictions.transform.dense.weight"]
    )


@pytest.fixture(scope="module")
def mlm_only_run(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, sentence_encoder_dir: Path) -> Path:
    """A sentence-transformers encoder (no pretraining heads) adapted on masked LM only (``--objective auto``),
    with a held-out set, ``--save_best`` and checkpoints every 2 of its 4 main steps (6 in all, 2 head-only)."""
    root = tmp_path_factory.mktemp("mlm_only")
    data = make_pregenerated(tiny_corpus, sentence_encoder_dir, root / "data", epochs=1, holdout_fraction=0.1)
    options = {"max_steps": 6, "save_steps": 2, "save_best": True, "head_warmup_steps": 2, "train_batch_size": 16}
    return finetune(quick_config(data, sentence_encoder_dir, root / "run", **options))


def test_an_mlm_only_run_saves_masked_lm_models_without_an_nsp_head(mlm_only_run: Path) -> None:
    from transformers import AutoModelForMaskedLM

    from bert_domain_ft.model.files import has_trained_nsp_head

    for directory in (mlm_only_run, mlm_only_run / "best", mlm_only_run / "checkpoint-4"):
        assert json.loads((directory / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
        assert has_trained_nsp_head(directory) is False  # a later --objective auto does not train NSP on it
        _, info = AutoModelForMaskedLM.from_pretrained(directory, output_loading_info=True)
        assert not info["missing_keys"], directory  # the base's pooler, kept for classifiers, is all it leaves over
        assert info["unexpected_keys"] == {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}, directory


def test_an_mlm_only_run_carries_the_sentence_transformers_files_of_its_base(mlm_only_run: Path) -> None:
    from tiny_assets import SENTENCE_TRANSFORMERS_FILES

    for directory in (mlm_only_run, mlm_only_run / "best", mlm_only_run / "checkpoint-4"):
        for name, text in SENTENCE_TRANSFORMERS_FILES.items():
            assert (directory / name).read_text(encoding="utf-8") == text, directory / name


def test_the_outputs_of_an_mlm_only_run_load_for_evaluate_fill_mask_probe_and_a_next_run(
    mlm_only_run: Path, tmp_path: Path
) -> None:
    from bert_domain_ft.data.epoch_format import read_manifest
    from bert_domain_ft.evaluation.evaluate import load_for_evaluation
    from bert_domain_ft.evaluation.probe import classifier_from_pretrained
    from bert_domain_ft.model.loading import load_masked_lm_model

    data = mlm_only_run.parent / "data"
    trained = load_weights(mlm_only_run)["cls.predictions.transform.dense.weight"]
    for directory in (mlm_only_run, mlm_only_run / "best"):
        for loaded in (load_for_evaluation(str(directory), read_manifest(data)), load_masked_lm_model(str(directory))):
            assert loaded.fresh_heads == ()  # its trained masked-LM head, no random baseline
        classifier = classifier_from_pretrained(str(directory))(2, 0)
        assert classifier.bert.pooler is not None
    assert torch.equal(load_masked_lm_model(str(mlm_only_run)).model.cls.predictions.transform.dense.weight, trained)
    again = finetune(quick_config(data, mlm_only_run, tmp_path / "again", max_steps=2, train_batch_size=16))
    assert json.loads((again / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]


def test_an_mlm_only_run_resumes_from_its_checkpoints_to_the_weights_of_a_straight_run(
    tmp_path: Path, mlm_only_run: Path, sentence_encoder_dir: Path
) -> None:
    data, options = mlm_only_run.parent / "data", {"max_steps": 4, "train_batch_size": 16, "head_warmup_steps": 0}
    straight = finetune(quick_config(data, sentence_encoder_dir, tmp_path / "straight", **options))
    interrupted = tmp_path / "interrupted"
    finetune(quick_config(data, sentence_encoder_dir, interrupted, stop_after_steps=2, **options))
    assert "cls.seq_relationship.weight" not in load_weights(interrupted / "checkpoint-2")
    finetune(quick_config(data, sentence_encoder_dir, interrupted, resume=True, **options))
    assert_identical_weights(load_weights(straight), load_weights(interrupted))


def test_bf16_autocast_trains_on_the_cpu(tmp_path: Path, data_dir: Path, tiny_bert_dir: Path) -> None:
    output = finetune(quick_config(data_dir, tiny_bert_dir, tmp_path / "out", bf16=True, stop_after_steps=2))
    records = [record for record in read_metrics(output) if record["kind"] == "train"]
    assert records and all(0 < record["mlm_loss"] < 20 for record in records)
    weights = load_weights(output / "checkpoint-2")
    assert all(tensor.dtype == torch.float32 for tensor in weights.values())  # master weights stay fp32


def test_fp16_without_cuda_is_a_user_error(tmp_path: Path, data_dir: Path, tiny_bert_dir: Path) -> None:
    with pytest.raises(UserError, match="--fp16 needs a CUDA GPU; on the CPU use --bf16"):
        finetune(quick_config(data_dir, tiny_bert_dir, tmp_path / "out", fp16=True))


def test_dynamically_masked_data_trains_with_batch_time_masks(
    tmp_path: Path, tiny_corpus: Path, tiny_bert_dir: Path
) -> None:
    data = make_pregenerated(tiny_corpus, tiny_bert_dir, tmp_path / "data", epochs=1, dynamic_masking=True)
    output = finetune(quick_config(data, tiny_bert_dir, tmp_path / "out", epochs=2, train_batch_size=64))
    records = [record for record in read_metrics(output) if record["kind"] == "train"]
    assert records[-1]["epoch"] == 2.0 and all(0 < record["mlm_loss"] < 20 for record in records)


USER_FILES = {"README.md": "my notes\n", "tokenizer_config.json": '{"mine": true}\n', "effective_config.yaml": "a: 1\n"}


def finetune_command(data: Path, model: Path, output: Path, *extra: str) -> list[str]:
    """`bert-domain-ft finetune` for two steps on the tiny BERT, ending with the final model and its card."""
    flags = ["--pregenerated_data", str(data), "--bert_model", str(model), "--output_dir", str(output)]
    quick = ["--train_batch_size", "32", "--max_steps", "2", "--save_steps", "1", "--no_progress", "--no_cuda"]
    return ["finetune", *flags, *quick, *extra]


def _directory_of_user_files(output: Path) -> Path:
    output.mkdir()
    for name, text in USER_FILES.items():
        (output / name).write_text(text)
    return output


def test_a_directory_holding_the_users_files_is_refused_naming_them(
    tmp_path: Path, data_dir: Path, tiny_bert_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = _directory_of_user_files(tmp_path / "out")
    status, error, _ = run_cli(capsys, finetune_command(data_dir, tiny_bert_dir, output))
    assert status == 2 and all(name in error for name in USER_FILES) and "--overwrite_output_dir" in error
    assert {name: (output / name).read_text() for name in USER_FILES} == USER_FILES, "the user's files are intact"
    assert sorted(path.name for path in output.iterdir()) == sorted(USER_FILES), "nothing written beside them"


def test_overwrite_output_dir_names_every_entry_it_deletes(
    tmp_path: Path, data_dir: Path, tiny_bert_dir: Path, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    output = _directory_of_user_files(tmp_path / "out")
    with caplog.at_level(logging.WARNING):
        status, _, _ = run_cli(capsys, finetune_command(data_dir, tiny_bert_dir, output, "--overwrite_output_dir"))
    deleting = [record.getMessage() for record in caplog.records if "deleting" in record.getMessage()]
    assert status == 0 and len(deleting) == 1 and all(name in deleting[0] for name in USER_FILES), deleting
    assert (output / "README.md").read_text() != USER_FILES["README.md"]  # the model card now


def test_resume_plot_evaluate_and_the_effective_config_keep_a_run_directory_usable(
    tmp_path: Path, data_dir: Path, tiny_bert_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the tool itself wrote into a directory never blocks a later run there."""
    output = tmp_path / "run"
    assert run_cli(capsys, finetune_command(data_dir, tiny_bert_dir, output, "--stop_after_steps", "1"))[0] == 0
    assert (output / "effective_config.yaml").is_file()
    assert run_cli(capsys, ["plot", str(output)])[0] == 0
    evaluate = ["evaluate", "--model", str(tiny_bert_dir), "--data", str(data_dir), "--epoch", "0", "--no_cuda"]
    assert run_cli(capsys, [*evaluate, "--json", str(output / "before.json"), "--no_progress"])[0] == 0
    assert run_cli(capsys, finetune_command(data_dir, tiny_bert_dir, output, "--resume"))[0] == 0
    assert (output / "model.safetensors").is_file() and (output / "before.json").is_file()
    fresh = tmp_path / "fresh"  # a directory `evaluate` created is the tool's: a run goes into it
    assert run_cli(capsys, [*evaluate, "--json", str(fresh / "before.json"), "--no_progress"])[0] == 0
    assert run_cli(capsys, finetune_command(data_dir, tiny_bert_dir, fresh, "--stop_after_steps", "1"))[0] == 0


def test_a_symlinked_checkpoint_is_unlinked_not_followed_by_overwrite_output_dir(
    tmp_path: Path, data_dir: Path, tiny_bert_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    assert run_cli(capsys, finetune_command(data_dir, tiny_bert_dir, output, "--stop_after_steps", "1"))[0] == 0
    kept = tmp_path / "kept-checkpoint"
    (output / "checkpoint-1").rename(kept)
    (output / "checkpoint-1").symlink_to(kept)
    status, error, _ = run_cli(capsys, finetune_command(data_dir, tiny_bert_dir, output, "--overwrite_output_dir"))
    assert status == 0, error
    assert (kept / "model.safetensors").is_file(), "the link's target is left alone"
    assert not (output / "checkpoint-1").is_symlink()
