"""--max_steps: exactly N optimizer steps, head-only steps included, with the main schedule spanning the rest,
across or within epochs, resumable; the plan line says so before the first step."""

from __future__ import annotations

import json
import logging
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

from bert_domain_ft.cli import build_parser
from bert_domain_ft.cli.commands import simple_config as simple_config_from
from bert_domain_ft.errors import UserError
from bert_domain_ft.training import recipe
from bert_domain_ft.training.budget import describe_plan, evaluation_steps
from bert_domain_ft.training.checkpoints import SCHEDULER_FILE, checkpoint_directories
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


# ------------------------------------------------------------------------ the head-only steps count in the budget


def plan_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.getMessage().startswith("plan: ")]


@pytest.mark.parametrize(("max_steps", "head_only"), [(4, 1), (12, 3)])  # automatic: a quarter of a short budget
def test_max_steps_counts_the_head_only_steps_and_the_schedule_spans_the_rest(
    tmp_path: Path, data_dir: Path, tiny_encoder_dir: Path, caplog: pytest.LogCaptureFixture, max_steps: int,
    head_only: int,
) -> None:  # fmt: skip
    output = tmp_path / "out"
    options = {"logging_steps": 1, "do_eval": False, "train_batch_size": 16, "max_steps": max_steps}
    with caplog.at_level(logging.INFO):
        finetune(quick_config(data_dir, tiny_encoder_dir, output, **options))
    records = read_metrics(output)
    assert [r["warmup_step"] for r in records if r["kind"] == "head_warmup"] == list(range(1, head_only + 1))
    main_steps = max_steps - head_only
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, main_steps + 1))
    (last_step, last), *_ = reversed(checkpoint_directories(output))
    assert last_step == main_steps  # the checkpoint's global step counts the main phase
    schedule = torch.load(last / SCHEDULER_FILE, weights_only=True)
    assert schedule["last_epoch"] == main_steps and set(schedule["_last_lr"]) == {0.0}  # decayed to 0 exactly
    (line,) = plan_lines(caplog)
    assert line.startswith(f"plan: {max_steps} steps (--max_steps): {head_only} head-only, {main_steps} main; ")
    updates = [r.getMessage() for r in caplog.records if r.getMessage().startswith("plan update: about ")]
    assert len(updates) == (1 if main_steps > 6 else 0)  # the time, once the 5 main steps after the first are timed


def test_a_head_only_count_not_below_the_budget_is_refused_in_one_line(
    tmp_path: Path, data_dir: Path, tiny_encoder_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["finetune", "--pregenerated_data", str(data_dir), "--bert_model", str(tiny_encoder_dir), "--output_dir",
             str(tmp_path / "out"), "--max_steps", "4", "--head_warmup_steps", "4", "--no_progress", "--no_cuda"]  # fmt: skip
    status, error, _ = run_cli(capsys, flags)
    assert status == 2
    assert error.startswith("error: --head_warmup_steps 4: the head-only steps are part of the run's 4 optimizer ")
    assert "--max_steps" in error and not (tmp_path / "out" / "metrics.jsonl").exists()


def test_an_epoch_run_counts_the_head_only_steps_inside_its_epochs_reading_each_batch_once(
    tmp_path: Path, data_dir: Path, tiny_encoder_dir: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    read: list[tuple[int, tuple[int, ...]]] = []  # (epoch, instances) of every micro-batch fetched
    original = recipe.build.PregeneratedSource.open_epoch

    def recording(source, epoch):  # type: ignore[no-untyped-def]
        fetch = original(source, epoch)
        return lambda instances: read.append((epoch, tuple(instances.tolist()))) or fetch(instances)

    monkeypatch.setattr(recipe.build.PregeneratedSource, "open_epoch", recording)
    per_epoch = steps_per_epoch(data_dir, 16)
    output = tmp_path / "out"
    options = {"logging_steps": 1, "do_eval": False, "train_batch_size": 16, "head_warmup_steps": 3}
    with caplog.at_level(logging.INFO):
        finetune(quick_config(data_dir, tiny_encoder_dir, output, **options))
    train = [r for r in read_metrics(output) if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, per_epoch - 3 + 1)) and train[-1]["epoch"] == 1.0
    assert len(read) == per_epoch and len(set(read)) == per_epoch  # the head-only steps' batches, then the rest
    (line,) = plan_lines(caplog)
    assert line.startswith(f"plan: {per_epoch} steps (1 epoch; the head-only steps are inside it): 3 head-only, ")


def test_the_plan_names_the_evaluations_and_the_update_the_measured_time() -> None:
    assert evaluation_steps(main_steps=9, eval_steps=4) == [0, 4, 8, 9]
    assert evaluation_steps(main_steps=8, eval_steps=4) == [0, 4, 8]
    assert evaluation_steps(main_steps=1000, eval_steps=10)[:3] == [0, 10, 20]
    line = describe_plan(12, 3, "--max_steps", evaluation_steps(9, 4))
    assert line == (
        "plan: 12 steps (--max_steps): 3 head-only, 9 main; held-out evaluations before the head-only steps and at "
        "main steps 0, 4, 8, 9; the time follows once the first steps are measured"
    )
    assert "main steps 0, 10, 20, …, 990, 1000;" in describe_plan(1250, 250, "--max_steps", evaluation_steps(1000, 10))
    assert "no held-out evaluations" in describe_plan(12, 0, "--max_steps", None)


def test_a_run_killed_in_its_head_only_steps_resumes_to_the_weights_of_an_uninterrupted_run(
    tmp_path: Path, data_dir: Path, tiny_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = {"logging_steps": 1, "do_eval": False, "train_batch_size": 16, "max_steps": 12}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    finetune(quick_config(data_dir, tiny_encoder_dir, straight, **options))
    original = recipe.TrainingLoop._report_warmup

    def die_at_the_second(loop, phase, step, *rest):  # type: ignore[no-untyped-def]
        original(loop, phase, step, *rest)
        if step == 2:
            raise KeyboardInterrupt  # killed: no checkpoint is written during the head-only steps

    with monkeypatch.context() as patch:
        patch.setattr(recipe.TrainingLoop, "_report_warmup", die_at_the_second)
        with pytest.raises(KeyboardInterrupt):
            finetune(quick_config(data_dir, tiny_encoder_dir, killed, **options))
    finetune(quick_config(data_dir, tiny_encoder_dir, killed, resume=True, **options))
    assert_identical_weights(load_weights(straight), load_weights(killed))
    assert [r["warmup_step"] for r in read_metrics(killed) if r["kind"] == "head_warmup"] == [1, 2, 3]


def test_a_run_stopped_in_its_main_phase_resumes_to_the_weights_of_an_uninterrupted_run(
    tmp_path: Path, data_dir: Path, tiny_encoder_dir: Path
) -> None:
    options = {"logging_steps": 1, "do_eval": False, "train_batch_size": 16, "max_steps": 12}  # 3 head-only, 9 main
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    finetune(quick_config(data_dir, tiny_encoder_dir, straight, **options))
    finetune(quick_config(data_dir, tiny_encoder_dir, stopped, stop_after_steps=4, **options))
    finetune(quick_config(data_dir, tiny_encoder_dir, stopped, resume=True, **options))
    assert_identical_weights(load_weights(straight), load_weights(stopped))
