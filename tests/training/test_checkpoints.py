"""Checkpoints: complete-or-absent directories, retention, exact restore of state and randomness."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from bert_domain_ft.errors import UserError
from bert_domain_ft.model.optimization import build_optimizer, build_scheduler, parameter_groups
from bert_domain_ft.model.pretraining import load_pretraining_model
from bert_domain_ft.training.checkpoints import (
    CheckpointManager,
    TrainingPosition,
    capture_rng_state,
    checkpoint_directories,
    latest_checkpoint,
    prune_checkpoints,
    restore_rng_state,
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
