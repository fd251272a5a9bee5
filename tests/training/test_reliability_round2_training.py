"""Reliability, round two (training and evaluation side): one writer per output directory, data and output kept
apart, tokenizer and model sizes agreeing, damaged model files and checkpoints named, epoch values checked
before the first step, and probe/evaluate messages that name the real problem and the real flag."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_assets import write_task_file
from training_helpers import (
    assert_identical_weights,
    load_weights,
    make_pregenerated,
    quick_config,
    run_cli,
    write_smaller_tokenizer,
)

from bert_domain_ft.corpus import task_files as probe_data
from bert_domain_ft.corpus.task_files import read_labelled_file
from bert_domain_ft.errors import UserError
from bert_domain_ft.training.checkpoints import checkpoint_directories
from bert_domain_ft.training.recipe import finetune

pytestmark = pytest.mark.reliability

QUIET_FLAGS = ["--no_progress", "--no_cuda"]
# 446 instances at 32 a step: 14 optimizer steps; a checkpoint every 2.
RUN_FLAGS = ["--epochs", "1", "--train_batch_size", "32", "--save_steps", "2", "--no_eval", *QUIET_FLAGS]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, tiny_bert_dir: Path) -> Path:
    return make_pregenerated(tiny_corpus, tiny_bert_dir, tmp_path_factory.mktemp("data") / "epochs", 1, 32)


def finetune_flags(data: Path, model: Path, output: Path, *extra: str) -> list[str]:
    flags = ["finetune", "--pregenerated_data", str(data), "--bert_model", str(model), "--output_dir", str(output)]
    return flags + RUN_FLAGS + list(extra)


def simple_flags(corpus: Path, model: Path, output: Path, *extra: str) -> list[str]:
    flags = ["simple", "--train_corpus", str(corpus), "--bert_model", str(model), "--output_dir", str(output)]
    return flags + ["--epochs", "1", "--train_batch_size", "32", *QUIET_FLAGS, *extra]


def evaluate_flags(data: Path, model: Path, *extra: str) -> list[str]:
    return ["evaluate", "--model", str(model), "--data", str(data), "--epoch", "0", *QUIET_FLAGS, *extra]


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()
    }


def checkpoint_steps(output: Path) -> list[int]:
    return [step for step, _ in checkpoint_directories(output)]


# ------------------------------------------------------------------------------------ 2: one writer per output dir

HOLD_LOCK = """
import sys, time
from pathlib import Path
from bert_domain_ft.files import hold_output_lock
with hold_output_lock(Path(sys.argv[1]), "finetune"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize("how", ["--resume", "--overwrite_output_dir", "simple"])
def test_a_second_run_on_a_directory_another_run_is_writing_is_refused_and_deletes_nothing(
    data_dir: Path, tiny_bert_dir: Path, tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    how: str,
) -> None:  # fmt: skip
    output = tmp_path / "out"
    assert run_cli(capsys, finetune_flags(data_dir, tiny_bert_dir, output, "--stop_after_steps", "2"))[0] == 0
    before = file_bytes(output)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(output)], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        if how == "simple":
            arguments = simple_flags(tiny_corpus, tiny_bert_dir, output, "--overwrite_output_dir")
        else:
            arguments = finetune_flags(data_dir, tiny_bert_dir, output, how)
        status, error, _ = run_cli(capsys, arguments)
    finally:
        holder.kill()
        holder.wait()
    assert status == 2
    assert error.startswith(f"error: {output}: another run is writing here (pid {holder.pid} ")
    assert file_bytes(output) == before, "nothing of the first run's output was touched"


# ------------------------------------------------------------------------------ 5: data and output directory apart


def test_an_output_directory_equal_to_or_inside_the_data_is_refused_and_the_data_untouched(
    data_dir: Path, tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = Path(shutil.copytree(data_dir, tmp_path / "data"))
    before = file_bytes(data)
    for output, where in ((data, "is the"), (data / "epoch_000" / "run", "is inside the")):
        status, error, _ = run_cli(capsys, finetune_flags(data, tiny_bert_dir, output))
        assert status == 2
        assert error.startswith(f"error: {output}: {where} pregenerated data directory {data};")
        assert error.endswith("choose an --output_dir outside it")
    assert file_bytes(data) == before


def test_overwrite_output_dir_refuses_to_delete_the_data_it_holds(
    data_dir: Path, tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    data = Path(shutil.copytree(data_dir, output / "checkpoint-data"))  # overwrite deletes every checkpoint-*
    before = file_bytes(data)
    status, error, _ = run_cli(capsys, finetune_flags(data, tiny_bert_dir, output, "--overwrite_output_dir"))
    assert status == 2
    assert error.startswith(f"error: {data}: --overwrite_output_dir would delete it, and the pregenerated data")
    assert file_bytes(data) == before


# ------------------------------------------------------------------------------ 6: tokenizer and model sizes agree


def tokenizer_size_refusal(tokenizer: Path, model: Path) -> str:
    return (
        f"--tokenizer {tokenizer}: its vocabulary has 150 tokens but {model}'s embedding matrix has 174 rows; use the "
        "model's own tokenizer (leave out --tokenizer), extend the model's vocabulary deliberately (resize its "
        "embeddings and save it), or train a new model with --from_scratch"
    )


def test_finetune_with_a_tokenizer_of_another_vocabulary_size_than_the_model_is_refused(
    data_dir: Path, tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokenizer = write_smaller_tokenizer(tmp_path / "tok", 150)
    output = tmp_path / "out"
    status, error, _ = run_cli(capsys, finetune_flags(data_dir, tiny_bert_dir, output, "--tokenizer", str(tokenizer)))
    assert status == 2
    assert error == f"error: {tokenizer_size_refusal(tokenizer, tiny_bert_dir)}"
    assert not checkpoint_steps(output)


def test_simple_with_a_tokenizer_of_another_vocabulary_size_than_the_model_is_refused(
    tiny_bert_dir: Path, tiny_corpus: Path, tmp_path: Path
) -> None:
    from bert_domain_ft.training.config import SimpleConfig
    from bert_domain_ft.training.simple import simple_finetune

    tokenizer = write_smaller_tokenizer(tmp_path / "tok", 150)
    config = SimpleConfig.create(
        train_corpus=tiny_corpus, output_dir=tmp_path / "out", bert_model=str(tiny_bert_dir),
        tokenizer=str(tokenizer), show_progress=False, no_cuda=True,
    )  # fmt: skip
    with pytest.raises(UserError) as refused:
        simple_finetune(config)
    assert str(refused.value) == tokenizer_size_refusal(tokenizer, tiny_bert_dir)
    assert not checkpoint_steps(tmp_path / "out")


# ------------------------------------------------------------------------ 7, 8: damaged config.json and weights

COMMANDS = ["finetune", "simple", "evaluate", "probe"]


def probe_flags(model: Path, output: Path) -> list[str]:
    """``probe`` of ``model`` on two tiny labelled files written beside ``output``."""
    rows = "text,label\nthe cat sat on the mat,a\nthe dog ran in the park,b\n"
    for name in ("train.csv", "test.csv"):
        (output.parent / name).write_text(rows, encoding="utf-8")
    files = ["--train", str(output.parent / "train.csv"), "--test", str(output.parent / "test.csv")]
    return ["probe", "--models", str(model), *files, "--seeds", "1", "--no_plot", *QUIET_FLAGS]


def command_flags(command: str, data: Path, corpus: Path, model: Path, output: Path) -> list[str]:
    if command == "finetune":
        return finetune_flags(data, model, output)
    if command == "simple":
        return simple_flags(corpus, model, output)
    if command == "probe":
        return probe_flags(model, output)
    return evaluate_flags(data, model)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_config_json_that_is_not_json_is_one_line_with_line_and_column(
    data_dir: Path, tiny_bert_dir: Path, tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:  # fmt: skip
    model = Path(shutil.copytree(tiny_bert_dir, tmp_path / "model"))
    (model / "config.json").write_text('{\n  "model_type": "bert",\n  "vocab_size": 174,,\n}\n', encoding="utf-8")
    status, error, _ = run_cli(capsys, command_flags(command, data_dir, tiny_corpus, model, tmp_path / "out"))
    assert status == 2
    assert error == (
        f"error: {model / 'config.json'}:3:21: not valid JSON (Expecting property name enclosed in double quotes); "
        "fix the file or replace it with the model's original config.json"
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_a_truncated_model_safetensors_is_one_line_saying_it_is_damaged(
    data_dir: Path, tiny_bert_dir: Path, tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:  # fmt: skip
    model = Path(shutil.copytree(tiny_bert_dir, tmp_path / "model"))
    weights = model / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    status, error, _ = run_cli(capsys, command_flags(command, data_dir, tiny_corpus, model, tmp_path / "out"))
    assert status == 2
    assert error.startswith(f"error: {weights}: damaged or truncated (")
    assert error.endswith("re-download the model or save it again (save_pretrained)")


def model_only_flags(command: str, model: str, corpus: Path, output: Path) -> list[str]:
    """The flags of the commands outside ``COMMANDS`` that load a model: fill-mask, vocab extend, select."""
    if command == "fill-mask":
        return ["fill-mask", "--models", model, "a [MASK] b", "--no_cuda"]
    if command == "vocab extend":
        return ["vocab", "extend", str(corpus), "--bert_model", model, "--add", "2", "--output", str(output)]
    task = write_task_file(output.parent / "task.csv", num_rows=4)
    return ["select", "--task_data", str(task), "--corpus", str(corpus), "--output", str(output / "selected.txt"),
            "--tokens", "500", "--method", "embedding", "--bert_model", model, "--no_progress"]  # fmt: skip


@pytest.mark.parametrize("command", [*COMMANDS, "fill-mask", "vocab extend", "select"])
def test_a_pytorch_model_bin_holding_pickled_objects_is_refused_without_suggesting_unsafe_loading(
    data_dir: Path, tiny_bert_dir: Path, tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:  # fmt: skip
    from safetensors.torch import load_file

    model = Path(shutil.copytree(tiny_bert_dir, tmp_path / "model"))
    weights = {**load_file(model / "model.safetensors"), "training_args": argparse.Namespace(lr=1e-4)}
    torch.save(weights, model / "pytorch_model.bin")  # what older Trainer scripts saved: tensors and an object
    (model / "model.safetensors").unlink()
    output = tmp_path / "out"
    flags = model_only_flags(command, str(model), tiny_corpus, output) if command not in COMMANDS else None
    status, error, stderr = run_cli(capsys, flags or command_flags(command, data_dir, tiny_corpus, model, output))
    assert status == 2 and "weights_only" not in stderr and "Traceback" not in stderr
    assert error.startswith(f"error: {model / 'pytorch_model.bin'}: holds pickled Python objects, not only tensors")
    assert "argparse.Namespace" in error and "safetensors" in error


@pytest.mark.parametrize("command", [*COMMANDS, "fill-mask", "select"])  # vocab extend: "not a local model directory"
@pytest.mark.parametrize("given", ["./models/bert", "models/bert", "ABSOLUTE/models/bert"])
def test_a_missing_model_directory_is_called_missing_not_a_bad_hub_id(
    data_dir: Path, tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, given: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()  # "models/bert" is a path when models/ is a local directory, else a Hub id
    model = given.replace("ABSOLUTE", str(tmp_path))
    output = tmp_path / "out"
    flags = model_only_flags(command, model, tiny_corpus, output) if command not in COMMANDS else None
    status, error, _ = run_cli(capsys, flags or command_flags(command, data_dir, tiny_corpus, model, output))  # type: ignore[arg-type]
    assert status == 2 and "repo" not in error.lower() and "huggingface.co" not in error
    assert error == f"error: {model}: no such directory; give the path of a saved model directory"


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_pytorch_model_bin_of_tensors_only_passes_the_check(tiny_bert_dir: Path, tmp_path: Path, zip_format: bool):
    from safetensors.torch import load_file

    from bert_domain_ft.model.loading import check_model_files, load_masked_lm_model

    model = Path(shutil.copytree(tiny_bert_dir, tmp_path / "model"))
    weights = load_file(model / "model.safetensors")
    torch.save(weights, model / "pytorch_model.bin", _use_new_zipfile_serialization=zip_format)
    (model / "model.safetensors").unlink()
    check_model_files(model)
    loaded = load_masked_lm_model(str(model)).model.state_dict()
    assert torch.equal(
        loaded["bert.embeddings.word_embeddings.weight"], weights["bert.embeddings.word_embeddings.weight"]
    )


# ---------------------------------------------------------------------------------- 9: resume past a damaged one


class NotAllowed:
    """An object ``torch.load(weights_only=True)`` refuses to unpickle."""


def damage(checkpoint: Path, how: str) -> Path:
    if how == "rng_state.pt-pickled":
        torch.save({"rng": NotAllowed()}, checkpoint / "rng_state.pt")
        return checkpoint / "rng_state.pt"
    path = checkpoint / how
    os.truncate(path, path.stat().st_size // 2)
    return path


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, tiny_bert_dir: Path) -> Path:
    output = tmp_path_factory.mktemp("straight") / "out"
    return finetune(quick_config(data_dir, tiny_bert_dir, output, save_steps=2, do_eval=False))


@pytest.mark.parametrize("how", ["optimizer.pt", "model.safetensors", "rng_state.pt-pickled"])
@pytest.mark.parametrize("with_record", [True, False], ids=["recorded", "older-checkpoint"])
def test_resume_skips_a_damaged_newest_checkpoint_and_ends_as_an_uninterrupted_run(
    data_dir: Path, tiny_bert_dir: Path, straight_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture, how: str, with_record: bool,
) -> None:  # fmt: skip
    output = tmp_path / "out"
    assert run_cli(capsys, finetune_flags(data_dir, tiny_bert_dir, output, "--stop_after_steps", "4"))[0] == 0
    assert checkpoint_steps(output) == [2, 4]
    for checkpoint in output.glob("checkpoint-*"):
        assert (checkpoint / "checkpoint_complete.json").is_file()
        if not with_record:  # as written before completion records existed: loading it is the test
            (checkpoint / "checkpoint_complete.json").unlink()
    damaged = damage(output / "checkpoint-4", how)
    caplog.clear()
    with caplog.at_level("INFO"):
        assert run_cli(capsys, finetune_flags(data_dir, tiny_bert_dir, output, "--resume"))[:2] == (0, "")
    warnings = [record.getMessage() for record in caplog.records if "--resume: skipping" in record.getMessage()]
    assert len(warnings) == 1 and f"{output / 'checkpoint-4'}" in warnings[0] and damaged.name in warnings[0]
    assert "resuming from checkpoint-2" in caplog.text
    assert_identical_weights(load_weights(output), load_weights(straight_run))


def test_resume_with_no_intact_checkpoint_is_one_line(
    data_dir: Path, tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    assert run_cli(capsys, finetune_flags(data_dir, tiny_bert_dir, output, "--stop_after_steps", "4"))[0] == 0
    damage(output / "checkpoint-2", "optimizer.pt")
    damage(output / "checkpoint-4", "rng_state.pt-pickled")
    status, error, _ = run_cli(capsys, finetune_flags(data_dir, tiny_bert_dir, output, "--resume"))
    assert status == 2
    assert error == (
        f"error: {output}: no intact checkpoint to resume from (checkpoint-4, checkpoint-2 damaged, see the "
        "warnings above); start again with --overwrite_output_dir"
    )


# ------------------------------------------------------------------------ 10, 11: epoch values and manifest fields


def set_value(path: Path, row: int, value: int) -> None:
    array = np.load(path, mmap_mode="r+")
    array[row] = value
    array.flush()


@pytest.mark.parametrize(
    ("name", "value", "meaning"),
    [
        ("masked_positions", 60000, "not a position of a 32-token sequence"),
        ("input_ids", 174, "not a token id of the 174-token vocabulary"),
        ("masked_labels", 9999, "not a token id of the 174-token vocabulary"),
        ("num_masked", 21, "more than the 20 masked slots of a row"),
        ("lengths", 33, "longer than max_seq_len 32"),
        ("is_random_next", 3, "not a next-sentence label (0, 1, or 2 for none)"),
    ],
)
def test_an_out_of_range_value_is_refused_before_training_naming_file_row_and_value(
    data_dir: Path, tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    name: str, value: int, meaning: str,
) -> None:  # fmt: skip
    data = Path(shutil.copytree(data_dir, tmp_path / "data"))
    path = data / "epoch_000" / f"{name}.npy"
    set_value(path, 17, value)  # same size, same shape, no --verify: only the values tell
    output = tmp_path / "out"
    status, error, _ = run_cli(capsys, finetune_flags(data, tiny_bert_dir, output))
    assert status == 2
    assert (
        error == f"error: {path}: row 17 holds {value}, {meaning}; the data is damaged or altered, pregenerate it again"
    )
    assert not checkpoint_steps(output), "refused before the first step"
    status, error, _ = run_cli(capsys, evaluate_flags(data, tiny_bert_dir))
    assert status == 2 and error.startswith(f"error: {path}: row 17 holds {value}")


def test_a_manifest_max_seq_len_that_differs_from_the_arrays_is_refused(
    data_dir: Path, tiny_tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = Path(shutil.copytree(data_dir, tmp_path / "data"))
    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    (data / "manifest.json").write_text(json.dumps({**manifest, "max_seq_len": 16}), encoding="utf-8")
    arguments = [
        "finetune", "--pregenerated_data", str(data), "--output_dir", str(tmp_path / "out"), "--from_scratch",
        "--model_type", "bert", "--tokenizer", str(tiny_tokenizer_dir), "--config_overrides",
        "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64", *RUN_FLAGS,
    ]  # fmt: skip
    status, error, _ = run_cli(capsys, arguments)
    assert status == 2
    assert error == (
        f"error: {data / 'manifest.json'}: max_seq_len is 16 but {data / 'epoch_000' / 'input_ids.npy'} has shape "
        "[446, 32]; the manifest does not match its data, pregenerate the data again"
    )


def test_the_value_scan_of_a_large_epoch_is_cheap_and_remembered(tmp_path: Path) -> None:
    from bert_domain_ft.data.epoch_format import check_epoch_against_manifest

    rows, length, width = 200_000, 128, 20  # 51 MB of input_ids, like a 70 MB corpus at max_seq_len 128
    rng = np.random.default_rng(0)
    arrays = {
        "input_ids": rng.integers(0, 30522, (rows, length), dtype=np.uint16),
        "masked_positions": rng.integers(0, length, (rows, width), dtype=np.uint16),
        "masked_labels": rng.integers(0, 30522, (rows, width), dtype=np.uint16),
        "lengths": np.full(rows, length, dtype=np.uint16),
    }
    epoch = tmp_path / "epoch_000"
    epoch.mkdir()
    for name, array in arrays.items():
        np.save(epoch / f"{name}.npy", array)
    opened = {name: np.load(epoch / f"{name}.npy", mmap_mode="r") for name in arrays}
    manifest = {"max_seq_len": length, "max_predictions_per_seq": width,
                "tokenizer": {"vocab_size": 30522, "token_dtype": "uint16"}}  # fmt: skip
    started = time.perf_counter()
    check_epoch_against_manifest(epoch, opened, manifest)
    first = time.perf_counter() - started
    started = time.perf_counter()
    check_epoch_against_manifest(epoch, opened, manifest)
    again = time.perf_counter() - started
    assert first < 5.0 and again < 0.01, (first, again)


# --------------------------------------------------------------------------------- 15: probe and evaluate messages


def test_a_probe_cell_of_a_megabyte_is_read_and_a_larger_than_allowed_one_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "train.csv"
    long_text = "word " * 200_000  # 1 MB in one correctly quoted cell
    path.write_text(f'text,label\n"short one",a\n"{long_text}",b\n', encoding="utf-8")
    assert read_labelled_file(path).labels == ("a", "b")
    monkeypatch.setattr(probe_data, "MAX_CELL_CHARACTERS", 500_000)
    with pytest.raises(UserError) as refused:
        read_labelled_file(path)
    assert str(refused.value) == (
        f"{path}:3: a cell holds more than 500,000 characters; a probe row takes one sentence or a short text, "
        "shorten it"
    )


def test_evaluate_with_a_tokenizer_of_another_size_names_both_sizes_not_the_model(
    data_dir: Path, tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokenizer = write_smaller_tokenizer(tmp_path / "tok", 150)
    status, error, _ = run_cli(capsys, evaluate_flags(data_dir, tiny_bert_dir, "--tokenizer", str(tokenizer)))
    assert status == 2
    assert error == (
        f"error: --tokenizer {tokenizer}: its vocabulary (150 tokens) does not match the model's ({tiny_bert_dir}: "
        "174 embeddings); give the tokenizer the model was trained with, or leave out --tokenizer to use the model's "
        "own"
    )


def test_evaluate_data_that_is_a_file_names_the_data_flag(
    tiny_bert_dir: Path, tiny_corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, error, _ = run_cli(capsys, evaluate_flags(tiny_corpus, tiny_bert_dir))
    assert status == 2
    assert error == (
        f"error: {tiny_corpus}: is a file, not a directory; --holdout_data takes the output directory of "
        "`bert-domain-ft pregenerate`"
    )
    assert "--pregenerated_data" not in error
