"""Checkpoints: complete-or-absent directories, retention, exact restore of state and randomness."""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_assets import write_corpus
from training_helpers import make_pregenerated, read_metrics, run_cli

from bert_domain_ft.cli import main
from bert_domain_ft.errors import UserError
from bert_domain_ft.model.optimization import build_optimizer, build_scheduler, parameter_groups
from bert_domain_ft.model.pretraining import load_pretraining_model
from bert_domain_ft.training.checkpoints import (
    CheckpointManager,
    TrainingPosition,
    capture_rng_state,
    checkpoint_directories,
    data_identity,
    latest_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    setting_change,
)
from bert_domain_ft.training.distributed import DistributedContext
from bert_domain_ft.training.precision import setup_precision

CPU_CONTEXT = DistributedContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
SETTINGS = {"world_size": 1, "micro_batch_size": 8, "total_steps": 10}


def _manager(model_dir: Path, output_dir: Path, **options: object) -> CheckpointManager:
    model = load_pretraining_model(str(model_dir)).model
    optimizer = build_optimizer(parameter_groups(model, 1e-3, 0.01), 1e-3, 1e-8, torch.device("cpu"))
    scheduler = build_scheduler(optimizer, total_steps=10, warmup_steps=2)
    precision = setup_precision(torch.device("cpu"), fp16=False, bf16=False, loss_scale=0)
    settings = dict(SETTINGS, **options.pop("settings", {}))  # type: ignore[call-overload]
    return CheckpointManager(
        output_dir, CPU_CONTEXT, model, optimizer, scheduler, precision.scaler, settings, **options
    )


def _train_one_step(manager: CheckpointManager) -> None:
    model = manager.model
    loss = sum(parameter.float().pow(2).mean() for parameter in model.parameters())
    loss.backward()
    manager.optimizer.step()
    manager.scheduler.step()
    manager.optimizer.zero_grad()


def test_checkpoint_restores_model_optimizer_scheduler_and_position(tmp_path: Path, tiny_bert_dir: Path) -> None:
    saved = _manager(tiny_bert_dir, tmp_path)
    _train_one_step(saved)
    path = saved.save(TrainingPosition(global_step=1, epoch=0, batch_in_epoch=3))
    assert path == tmp_path / "checkpoint-1" and (path / "model.safetensors").is_file()

    restored = _manager(tiny_bert_dir, tmp_path)
    position = restored.load(path)
    assert position == TrainingPosition(global_step=1, epoch=0, batch_in_epoch=3)
    for (name, a), (_, b) in zip(saved.model.state_dict().items(), restored.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert restored.scheduler.state_dict()["last_epoch"] == 1
    assert restored.optimizer.param_groups[0]["lr"] == saved.optimizer.param_groups[0]["lr"]
    first = next(iter(saved.optimizer.state.values()))
    second = next(iter(restored.optimizer.state.values()))
    assert torch.equal(first["exp_avg"], second["exp_avg"])
    _train_one_step(saved)
    _train_one_step(restored)
    assert all(torch.equal(a, b) for a, b in zip(saved.model.parameters(), restored.model.parameters()))


def test_rng_states_of_python_numpy_and_torch_come_back() -> None:
    state = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert expected[:2] == again[:2] and torch.equal(expected[2], again[2])


def test_partial_directories_are_never_taken_for_checkpoints(tmp_path: Path) -> None:
    for step in (3, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "training_state.json").write_text("{}")
    (tmp_path / "checkpoint-20.partial").mkdir()
    (tmp_path / "checkpoint-30").mkdir()  # no training_state.json: incomplete
    assert [step for step, _ in checkpoint_directories(tmp_path)] == [3, 10]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert latest_checkpoint(tmp_path / "missing") is None


def test_save_total_limit_keeps_the_newest(tmp_path: Path, tiny_bert_dir: Path) -> None:
    manager = _manager(tiny_bert_dir, tmp_path, save_total_limit=2)
    for step in (2, 4, 6):
        manager.save(TrainingPosition(global_step=step))
    assert [step for step, _ in checkpoint_directories(tmp_path)] == [4, 6]
    assert prune_checkpoints(tmp_path, keep=0) == []


def test_resume_with_other_settings_names_what_changed(tmp_path: Path, tiny_bert_dir: Path) -> None:
    path = _manager(tiny_bert_dir, tmp_path).save(TrainingPosition(global_step=1))
    changed = _manager(tiny_bert_dir, tmp_path, settings={"world_size": 2})
    with pytest.raises(UserError, match="world_size 1 → 2"):
        changed.load(path)


def test_resume_with_another_learning_rate_is_refused_not_silently_ignored(tmp_path: Path, tiny_bert_dir: Path) -> None:
    path = _manager(tiny_bert_dir, tmp_path, settings={"learning_rate": 3e-5}).save(TrainingPosition(global_step=1))
    changed = _manager(tiny_bert_dir, tmp_path, settings={"learning_rate": 1e-4})
    with pytest.raises(UserError, match="learning_rate 3e-05 → 0.0001"):
        changed.load(path)
    older = _manager(tiny_bert_dir, tmp_path / "older")  # a checkpoint written before the key was recorded
    older.run_settings = dict(SETTINGS)
    older_path = older.save(TrainingPosition(global_step=1))
    assert (
        _manager(tiny_bert_dir, tmp_path / "older", settings={"learning_rate": 1e-4}).load(older_path).global_step == 1
    )


def test_a_save_removes_partial_checkpoints_left_by_an_interrupted_run(tmp_path: Path, tiny_bert_dir: Path) -> None:
    stale = tmp_path / "checkpoint-7.partial"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    unrelated = tmp_path / "notes.partial"
    unrelated.mkdir()
    _manager(tiny_bert_dir, tmp_path).save(TrainingPosition(global_step=8))
    assert not stale.exists() and unrelated.exists()
    assert [step for step, _ in checkpoint_directories(tmp_path)] == [8]


def test_optimizer_state_is_read_with_weights_only(tmp_path: Path, tiny_bert_dir: Path) -> None:
    path = _manager(tiny_bert_dir, tmp_path).save(TrainingPosition(global_step=1))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pt"):
        torch.load(path / name, weights_only=True)  # raises if anything but tensors and plain values were pickled


def test_a_data_set_compares_by_content_so_moved_data_is_the_same_and_regenerated_data_is_named() -> None:
    data, regenerated = data_identity("/d/epochs", "blake2b-128:1111aaaa22"), data_identity("/d/epochs", "x:3333bbbb4")
    assert setting_change("pregenerated_data", data, data_identity("/moved/epochs", "blake2b-128:1111aaaa22")) is None
    assert setting_change("pregenerated_data", data, regenerated) == (
        "pregenerated_data /d/epochs: its content changed (fingerprint 1111aaaa → 3333bbbb)"
    )
    assert (
        setting_change("holdout_data", data, data_identity("/e", "x:5"))
        == "holdout_data /d/epochs → /e (other content)"
    )
    assert setting_change("general_holdout", None, data) == "general_holdout none → /d/epochs"
    assert setting_change("max_grad_norm", 1.0, 0.5) == "max_grad_norm 1.0 → 0.5"


def test_a_checkpoint_of_an_earlier_version_resumes_naming_the_settings_it_did_not_record(
    tmp_path: Path, tiny_bert_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    older = _manager(tiny_bert_dir, tmp_path)
    path = older.save(TrainingPosition(global_step=1))
    newer = _manager(tiny_bert_dir, tmp_path, settings={"max_grad_norm": 1.0, "pregenerated_data": None})
    with caplog.at_level(logging.WARNING):
        assert newer.load(path).global_step == 1
    assert "checkpoint-1 was written by an earlier version, which did not record max_grad_norm, pregenerated_data" in (
        caplog.text
    )


# ------------------------------------------------------------- --resume continues the same data and settings, or refuses

QUIET_FLAGS = ["--no_progress", "--no_cuda"]
# 446 instances at 32 a step: 14 optimizer steps, a checkpoint every 2, evaluated before the first step.
RESUME_FLAGS = ["--epochs", "1", "--train_batch_size", "32", "--save_steps", "2", *QUIET_FLAGS]


def finetune_flags(data: Path, model: Path, output: Path, *extra: str) -> list[str]:
    flags = ["finetune", "--pregenerated_data", str(data), "--bert_model", str(model), "--output_dir", str(output)]
    return flags + RESUME_FLAGS + list(extra)


def pregenerate_flags(corpus: Path, model: Path, output: Path, *extra: str) -> list[str]:
    flags = ["pregenerate", "--train_corpus", str(corpus), "--bert_model", str(model), "--output_dir", str(output)]
    return flags + ["--epochs_to_generate", "1", "--max_seq_len", "32", "--holdout_fraction", "0.1", "--no_progress"]


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()
    }


@pytest.fixture(scope="module")
def resume_data(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, tiny_bert_dir: Path) -> Path:
    """One epoch of 32-token instances, a tenth of the documents held out."""
    directory = tmp_path_factory.mktemp("data") / "epochs"
    return make_pregenerated(tiny_corpus, tiny_bert_dir, directory, 1, 32, holdout_fraction=0.1)


@pytest.fixture(scope="module")
def general_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("general") / "general.txt", num_documents=12, seed=5)


@pytest.fixture(scope="module")
def stopped_run(
    tmp_path_factory: pytest.TempPathFactory, resume_data: Path, tiny_bert_dir: Path, general_text: Path
) -> Path:
    """A run evaluated on the held-out and the general held-out set, stopped with checkpoint-2: tests resume copies."""
    output = tmp_path_factory.mktemp("stopped") / "out"
    flags = finetune_flags(resume_data, tiny_bert_dir, output, "--general_holdout", str(general_text))
    assert main([*flags, "--stop_after_steps", "2"]) == 0
    return output


def resumed_copy(stopped_run: Path, tmp_path: Path) -> Path:
    output = tmp_path / "out"
    shutil.copytree(stopped_run, output)
    return output


@pytest.mark.parametrize(
    ("flags", "change"),
    [
        (["--max_grad_norm", "0.5"], "max_grad_norm 1.0 → 0.5"),
        (["--adam_epsilon", "1e-6"], "adam_epsilon 1e-08 → 1e-06"),
        (["--objective", "mlm"], "objective nsp → mlm"),  # not "damaged": the checkpoints are intact
        (["--stock_kernels"], "cpu_kernels True → False"),
    ],
)
def test_resume_with_a_changed_setting_is_refused_naming_it_and_the_checkpoints_are_kept(
    stopped_run: Path, resume_data: Path, tiny_bert_dir: Path, general_text: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], flags: list[str], change: str,
) -> None:  # fmt: skip
    output = resumed_copy(stopped_run, tmp_path)
    before = file_bytes(output)
    general = ["--general_holdout", str(general_text)]
    status, error, _ = run_cli(capsys, finetune_flags(resume_data, tiny_bert_dir, output, "--resume", *general, *flags))
    assert status == 2
    assert error == (
        f"error: {output / 'checkpoint-2'}: the checkpoint is intact, but the run's data or settings changed since "
        f"it was written ({change}); rerun --resume with that run's flags and data, or start over with "
        "--overwrite_output_dir (or another --output_dir)"
    )
    assert file_bytes(output) == before


def test_resume_on_data_regenerated_in_place_is_refused_and_on_the_same_bytes_continues(
    tiny_corpus: Path, tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, output = tmp_path / "epochs", tmp_path / "out"
    assert run_cli(capsys, pregenerate_flags(tiny_corpus, tiny_bert_dir, data))[0] == 0
    assert run_cli(capsys, finetune_flags(data, tiny_bert_dir, output, "--stop_after_steps", "2"))[0] == 0
    checkpoint = file_bytes(output / "checkpoint-2")
    assert run_cli(capsys, [*pregenerate_flags(tiny_corpus, tiny_bert_dir, data), "--overwrite", "--seed", "7"])[0] == 0

    status, error, _ = run_cli(capsys, finetune_flags(data, tiny_bert_dir, output, "--resume"))
    assert status == 2
    assert f"(pregenerated_data {data}: its content changed (fingerprint " in error
    assert f"; holdout_data {data}: its content changed (fingerprint " in error  # the before/after table's set
    assert file_bytes(output / "checkpoint-2") == checkpoint
    # Regenerated as first made (same corpus and seed): the same bytes, so the same data.
    assert run_cli(capsys, [*pregenerate_flags(tiny_corpus, tiny_bert_dir, data), "--overwrite"])[0] == 0
    assert run_cli(capsys, finetune_flags(data, tiny_bert_dir, output, "--resume", "--stop_after_steps", "4"))[:2] == (
        0,
        "",
    )
    assert [step for step, _ in checkpoint_directories(output)] == [2, 4]


def test_resume_on_another_data_directory_is_refused_unless_it_holds_the_same_data(
    stopped_run: Path, resume_data: Path, tiny_corpus: Path, tiny_bert_dir: Path, general_text: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    output = resumed_copy(stopped_run, tmp_path)
    other = make_pregenerated(tiny_corpus, tiny_bert_dir, tmp_path / "other", 1, 32, holdout_fraction=0.1, seed=7)
    general = ["--general_holdout", str(general_text)]
    status, error, _ = run_cli(capsys, finetune_flags(other, tiny_bert_dir, output, "--resume", *general))
    assert status == 2 and f"(pregenerated_data {resume_data} → {other} (other content); holdout_data " in error
    status, error, _ = run_cli(
        capsys, finetune_flags(resume_data, tiny_bert_dir, output, "--resume", *general, "--holdout_data", str(other))
    )
    assert status == 2 and f"(holdout_data {resume_data} → {other} (other content))" in error
    moved = shutil.copytree(resume_data, tmp_path / "moved")  # the same data elsewhere is the same data
    flags = finetune_flags(moved, tiny_bert_dir, output, "--resume", *general, "--stop_after_steps", "4")
    assert run_cli(capsys, flags)[:2] == (0, "")


def test_resume_with_another_general_holdout_text_is_refused(
    stopped_run: Path, resume_data: Path, tiny_bert_dir: Path, general_text: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    output = resumed_copy(stopped_run, tmp_path)
    edited = tmp_path / "general.txt"
    edited.write_text(general_text.read_text(encoding="utf-8") + "\nA new document.\nIt is short.\n", "utf-8")
    flags = finetune_flags(resume_data, tiny_bert_dir, output, "--resume", "--general_holdout", str(edited))
    status, error, _ = run_cli(capsys, flags)
    assert status == 2 and f"(general_holdout {general_text} → {edited} (other content))" in error
    flags = finetune_flags(resume_data, tiny_bert_dir, output, "--resume", "--no_eval")  # no held-out set at all
    status, error, _ = run_cli(capsys, flags)
    assert status == 2 and f"(holdout_data {resume_data} → none; general_holdout {general_text} → none)" in error


def test_resume_that_finds_no_checkpoint_drops_the_records_of_the_run_killed_before_its_first(
    stopped_run: Path, resume_data: Path, tiny_bert_dir: Path, general_text: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    output = resumed_copy(stopped_run, tmp_path)
    shutil.rmtree(output / "checkpoint-2")  # as if killed while writing it
    dead_run = read_metrics(output)
    assert [record["step"] for record in dead_run if record["kind"] == "eval"] == [0]
    flags = finetune_flags(resume_data, tiny_bert_dir, output, "--resume", "--general_holdout", str(general_text))
    assert run_cli(capsys, [*flags, "--stop_after_steps", "2"])[:2] == (0, "")
    records = read_metrics(output)
    assert [record["step"] for record in records if record["kind"] == "eval"] == [0], "one step-0 evaluation"
    assert [(record["kind"], record["step"]) for record in records] == [
        (record["kind"], record["step"]) for record in dead_run
    ]
