"""Training fails boringly: damaged data is refused naming the file, a killed run resumes to the same weights, a
full disk or a denied write leaves earlier outputs untouched, NaN never reaches a checkpoint, fp16 skips are
counted, nothing is unpickled, and impossible flag combinations are one line before any work."""

from __future__ import annotations

import ast
import dataclasses
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from training_helpers import assert_identical_weights, load_weights, make_pregenerated, quick_config, run_cli

import bert_domain_ft
from bert_domain_ft import files as atomic_files
from bert_domain_ft import files as disk_errors
from bert_domain_ft.data.epoch_format import open_epoch, read_manifest
from bert_domain_ft.errors import UserError
from bert_domain_ft.model.optimization import build_optimizer, build_scheduler, parameter_groups
from bert_domain_ft.model.pretraining import PretrainingOutput, load_pretraining_model
from bert_domain_ft.training import precision as step_health
from bert_domain_ft.training import recipe
from bert_domain_ft.training.checkpoints import CheckpointManager, TrainingPosition, checkpoint_directories
from bert_domain_ft.training.distributed import DistributedContext
from bert_domain_ft.training.loop import PretrainingObjective
from bert_domain_ft.training.precision import Precision, setup_precision
from bert_domain_ft.training.recipe import finetune

pytestmark = pytest.mark.reliability

# 446 instances at 32 a step: 14 optimizer steps, a checkpoint every 2, a metrics record every step.
RUN = {"save_steps": 2, "logging_steps": 1}
RUN_FLAGS = ["--epochs", "1", "--train_batch_size", "32", "--save_steps", "2", "--logging_steps", "1"]
QUIET_FLAGS = ["--no_progress", "--no_cuda", "--no_eval"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, tiny_bert_dir: Path) -> Path:
    return make_pregenerated(tiny_corpus, tiny_bert_dir, tmp_path_factory.mktemp("data") / "epochs", 1, 32)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, tiny_bert_dir: Path) -> Path:
    """The uninterrupted run every interrupted one must end up identical to (all its checkpoints kept)."""
    return finetune(quick_config(data_dir, tiny_bert_dir, tmp_path_factory.mktemp("straight") / "out", **RUN))


def finetune_flags(data: Path, model: Path, output: Path, *extra: str) -> list[str]:
    flags = ["finetune", "--pregenerated_data", str(data), "--bert_model", str(model), "--output_dir", str(output)]
    return flags + RUN_FLAGS + QUIET_FLAGS + list(extra)


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()
    }


def checkpoint_steps(output: Path) -> list[int]:
    return [step for step, _ in checkpoint_directories(output)]


# ---------------------------------------------------------------------------------------------------------- integrity


@pytest.mark.slow
def test_truncated_array_is_one_error_line_naming_it_through_the_cli(data_dir: Path, tiny_bert_dir: Path,
                                                                     tmp_path: Path) -> None:  # fmt: skip
    data = Path(shutil.copytree(data_dir, tmp_path / "data"))
    damaged = data / "epoch_000" / "input_ids.npy"
    os.truncate(damaged, damaged.stat().st_size // 2)
    output = tmp_path / "out"
    command = [sys.executable, "-m", "bert_domain_ft", *finetune_flags(data, tiny_bert_dir, output)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {damaged}: unreadable") and "truncated or damaged" in last
    assert not checkpoint_steps(output), "refused before any training"


@pytest.mark.parametrize("keep_bytes", [0, 20, 127, -1], ids=["empty", "cut-magic", "cut-header", "cut-data"])
def test_an_array_cut_anywhere_is_refused_naming_it(data_dir: Path, tmp_path: Path, keep_bytes: int) -> None:
    data = Path(shutil.copytree(data_dir, tmp_path / "data"))
    damaged = data / "epoch_000" / "masked_labels.npy"
    os.truncate(damaged, keep_bytes if keep_bytes >= 0 else damaged.stat().st_size - 1)
    with pytest.raises(UserError, match=f"^{damaged}: unreadable .*pregenerate the data again$"):
        open_epoch(data, read_manifest(data), 0)


def test_flipped_byte_passes_the_fast_check_and_is_refused_by_verify(
    data_dir: Path, tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = Path(shutil.copytree(data_dir, tmp_path / "data"))
    altered = data / "epoch_000" / "is_random_next.npy"
    content = bytearray(altered.read_bytes())
    content[-1] = 0 if content[-1] else 1  # another NSP label: same size and shape, still valid data, other bytes
    altered.write_bytes(bytes(content))
    output = tmp_path / "out"
    assert run_cli(capsys, finetune_flags(data, tiny_bert_dir, output, "--stop_after_steps", "1"))[:2] == (0, "")
    status, error, _ = run_cli(capsys, finetune_flags(data, tiny_bert_dir, output, "--verify", "--resume"))
    assert status == 2
    assert error == (
        f"error: {altered}: checksum differs from the manifest; the file was altered, pregenerate the data again"
    )
    assert checkpoint_steps(output) == [1], "the refused run changed nothing"


# ---------------------------------------------------------------------------------------------- interrupted training

SLOW_CHILD = """
import sys, time
import torch
torch.set_num_threads(1)
from bert_domain_ft.training import loop
step = loop.TrainingLoop._optimizer_step
def slow_step(self, *arguments):
    time.sleep(0.3)  # room for the parent to kill it between two checkpoints
    step(self, *arguments)
loop.TrainingLoop._optimizer_step = slow_step
from bert_domain_ft.cli import main
sys.exit(main(sys.argv[1:]))
"""


def kill_after(output: Path, child: subprocess.Popen[bytes], step: int, timeout: float = 90.0) -> None:
    """SIGKILL ``child`` once its metrics show optimizer step ``step`` (a checkpoint precedes it)."""
    metrics = output / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and child.poll() is None:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if any(json.loads(line).get("step", 0) >= step for line in lines if line.endswith("}")):
            break
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()


def plant_half_written_checkpoints(output: Path, complete: Path) -> None:
    """What a crash mid-write could leave, at steps beyond the last complete checkpoint."""
    partial = output / "checkpoint-12.partial"  # every file there, state file too: still only a temporary name
    shutil.copytree(complete, partial)
    state = json.loads((partial / "training_state.json").read_text())
    state["position"]["global_step"] = 12
    (partial / "training_state.json").write_text(json.dumps(state))
    (partial / "model.safetensors").write_bytes(b"\0" * 100)
    torn = output / "checkpoint-13"  # a final name but no training_state.json (written last)
    torn.mkdir()
    (torn / "model.safetensors").write_bytes((complete / "model.safetensors").read_bytes()[:1000])


@pytest.mark.slow
def test_sigkill_between_checkpoints_then_resume_ends_with_the_weights_of_an_uninterrupted_run(
    data_dir: Path, tiny_bert_dir: Path, straight_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    output = tmp_path / "killed"
    command = [sys.executable, "-c", SLOW_CHILD, *finetune_flags(data_dir, tiny_bert_dir, output)]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_after(output, child, step=5)
    assert child.returncode == -signal.SIGKILL, "the child was killed mid-run, not finished"
    assert not (output / "model.safetensors").exists()
    saved = checkpoint_steps(output)
    assert saved and saved[-1] < 14
    last_complete = saved[-1]
    plant_half_written_checkpoints(output, output / f"checkpoint-{last_complete}")

    with caplog.at_level(logging.INFO, logger="bert_domain_ft"):
        finetune(quick_config(data_dir, tiny_bert_dir, output, resume=True, **RUN))
    assert f"resuming from checkpoint-{last_complete}:" in caplog.text, "the newest *complete* checkpoint"
    assert_identical_weights(load_weights(straight_run), load_weights(output))
    assert_identical_weights(load_weights(straight_run / "checkpoint-12"), load_weights(output / "checkpoint-12"))
    assert not (output / "checkpoint-12.partial").exists(), "the stale temporary was replaced by the real one"
    steps = [record["step"] for record in map(json.loads, (output / "metrics.jsonl").read_text().splitlines())]
    assert steps == list(range(1, 15)), "one record per step, as if never killed"


# ------------------------------------------------------------------------------------ full disk, denied permission


def failing_writes(monkeypatch: pytest.MonkeyPatch, under: str, error_number: int, after_bytes: int = 1000) -> None:
    """Files opened for writing by the checkpoint writer under a path containing ``under`` fail like the kernel:
    a disk that fills after ``after_bytes`` (ENOSPC), or a refused open (EACCES). As root chmod cannot deny."""
    real_open = open

    class FillingFile:
        def __init__(self, handle: Any):
            self.handle, self.written = handle, 0

        def write(self, data: bytes) -> int:
            self.written += len(data)
            if self.written > after_bytes:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.handle.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.handle, name)

        def __enter__(self) -> FillingFile:
            return self

        def __exit__(self, *exception: object) -> None:
            self.handle.close()

    def patched_open(path: Any, mode: str = "r", *arguments: Any, **options: Any) -> Any:
        if under in str(path) and any(flag in mode for flag in "wax"):
            if error_number == errno.EACCES:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return FillingFile(real_open(path, mode, *arguments, **options))
        return real_open(path, mode, *arguments, **options)

    monkeypatch.setattr(disk_errors, "open", patched_open, raising=False)
    monkeypatch.setattr(atomic_files, "open", patched_open, raising=False)


LIVING_FILES = {"metrics.jsonl", "training_args.json"}


@pytest.mark.parametrize(
    ("error_number", "message"), [(errno.ENOSPC, "the disk is full"), (errno.EACCES, "permission denied")]
)
def test_failing_checkpoint_write_is_one_clear_line_and_earlier_outputs_stay_untouched(
    data_dir: Path,
    tiny_bert_dir: Path,
    straight_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    error_number: int,
    message: str,
) -> None:
    output = tmp_path / "out"
    finetune(quick_config(data_dir, tiny_bert_dir, output, stop_after_steps=4, **RUN))
    # The log gains records and the settings record says "resume": everything else must stay byte-identical.
    before = {name: data for name, data in file_bytes(output).items() if name not in LIVING_FILES}

    failing_writes(monkeypatch, "checkpoint-6", error_number)
    with pytest.raises(UserError) as raised:
        finetune(quick_config(data_dir, tiny_bert_dir, output, resume=True, **RUN))
    text = str(raised.value)
    assert "\n" not in text and text.startswith(f"{output / 'checkpoint-6.partial'}: ") and message in text
    assert f"the last good checkpoint is {output / 'checkpoint-4'} (continue from it with --resume)" in text
    after = file_bytes(output)
    assert {name: after[name] for name in before} == before, "every earlier file byte-identical"
    assert checkpoint_steps(output) == [2, 4] and not list(output.glob("*.partial")), "no half checkpoint left"

    monkeypatch.undo()  # space freed, permission fixed: continue
    finetune(quick_config(data_dir, tiny_bert_dir, output, resume=True, **RUN))
    assert_identical_weights(load_weights(straight_run), load_weights(output))


def test_unwritable_output_directory_is_refused_before_training(
    data_dir: Path, tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "denied"
    output.mkdir()
    failing_writes(monkeypatch, str(output), errno.EACCES)
    with pytest.raises(UserError, match=r"training_args.json: cannot write here \(permission denied\); choose a"):
        finetune(quick_config(data_dir, tiny_bert_dir, output, **RUN))
    assert file_bytes(output) == {}


def test_library_disk_errors_are_read_back_as_os_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors import SafetensorError

    rust = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    with pytest.raises(UserError, match="x.safetensors: the disk is full"):
        with (
            atomic_files.os_errors_as_user_errors(tmp_path / "x.safetensors"),
            disk_errors.storage_errors_as_os_errors(),
        ):
            raise rust
    failing_writes(monkeypatch, "state.pt", errno.ENOSPC, after_bytes=100)
    with pytest.raises(OSError) as raised, disk_errors.storage_errors_as_os_errors():
        disk_errors.save_tensors({"weights": torch.zeros(1000)}, tmp_path / "state.pt")  # torch wraps the OSError
    assert raised.value.errno == errno.ENOSPC
    with pytest.raises(RuntimeError, match="unrelated"), disk_errors.storage_errors_as_os_errors():
        raise RuntimeError("unrelated")


# -------------------------------------------------------------------------------------------- fp16 overflow and NaN


def cpu_scaler_precision(static_scale: float | None = None) -> Precision:
    """fp16's loss-scaling machinery on the CPU (fp32 arithmetic): overflow is made, not met."""
    scaler = torch.amp.GradScaler("cpu", init_scale=static_scale or 2.0**16)
    return Precision("cpu", None, scaler, static_scale)


@pytest.mark.parametrize("static_scale", [None, 1024.0], ids=["dynamic", "static"])
@pytest.mark.parametrize("fused_adamw", [False, True], ids=["sgd", "fused-adamw"])
def test_scaler_step_reports_an_overflow_skip_and_leaves_the_weights(
    static_scale: float | None, fused_adamw: bool
) -> None:
    precision = cpu_scaler_precision(static_scale)
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = (
        build_optimizer([{"params": [weight]}], 0.1, 1e-8, torch.device("cpu"))  # the trainer's (fused on CPU)
        if fused_adamw
        else torch.optim.SGD([weight], lr=0.1)
    )
    for gradient, expected_taken in ((1.0, True), (float("inf"), False), (float("nan"), False), (1.0, True)):
        before = weight.detach().clone()
        precision.backward((weight * gradient).sum())
        precision.unscale(optimizer)
        assert precision.step(optimizer) is expected_taken
        assert torch.equal(weight.detach(), before) is not expected_taken
        optimizer.zero_grad()
    assert precision.loss_scale == (static_scale or 2.0**14), "dynamic: halved per skip; static: put back"


def inject_into_objective(monkeypatch: pytest.MonkeyPatch, factor_at: Callable[[int], float | None]) -> None:
    """Multiply the MLM loss of micro-batch k (0-based, counted across the run) by ``factor_at(k)`` when not None."""
    forward = PretrainingObjective.forward
    calls = {"count": 0}

    def patched(self: PretrainingObjective, batch: dict[str, torch.Tensor]) -> PretrainingOutput:
        output = forward(self, batch)
        factor = factor_at(calls["count"])
        calls["count"] += 1
        return output if factor is None else dataclasses.replace(output, mlm_loss=output.mlm_loss * factor)

    monkeypatch.setattr(PretrainingObjective, "forward", patched)


def test_fp16_overflow_skips_are_counted_in_metrics_and_logged(
    data_dir: Path, tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    monkeypatch.setattr(recipe, "setup_precision", lambda *_: cpu_scaler_precision())
    # A finite loss whose scaled gradients overflow (1e35 × 2^16 > fp32's 3.4e38), as fp16 gradients do.
    inject_into_objective(monkeypatch, lambda call: 1e35 if call in (2, 3) else None)
    output = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="bert_domain_ft"):
        finetune(quick_config(data_dir, tiny_bert_dir, output, **RUN))
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    skipped = {record["step"]: record["skipped_steps"] for record in records if record["kind"] == "train"}
    assert {step: count for step, count in skipped.items() if count} == {3: 1, 4: 1}
    assert "step 3 skipped: fp16 gradients overflowed, loss scale now 32768 (1 skipped so far)" in caplog.text
    assert "step 4 skipped: fp16 gradients overflowed, loss scale now 16384 (2 skipped so far)" in caplog.text
    assert all(torch.isfinite(tensor).all() for tensor in load_weights(output).values())


def test_fp16_overflow_that_never_ends_stops_with_one_line(
    data_dir: Path, tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recipe, "setup_precision", lambda *_: cpu_scaler_precision(static_scale=2.0**16))
    monkeypatch.setattr(step_health, "MAX_CONSECUTIVE_SKIPPED_STEPS", 3)
    inject_into_objective(monkeypatch, lambda call: 1e35 if call >= 4 else None)
    output = tmp_path / "out"
    with pytest.raises(UserError) as raised:
        finetune(quick_config(data_dir, tiny_bert_dir, output, **RUN))
    assert str(raised.value) == (
        f"fp16 gradients overflowed in 3 steps in a row (up to step 7), so the weights stopped changing; the last "
        f"good checkpoint is {output / 'checkpoint-6'}; try --bf16 instead of --fp16, a lower --learning_rate, or a "
        "smaller static --loss_scale"
    )


def test_nan_loss_stops_before_the_weights_change_and_keeps_the_last_good_checkpoint(
    data_dir: Path, tiny_bert_dir: Path, straight_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    inject_into_objective(monkeypatch, lambda call: float("nan") if call >= 4 else None)  # from step 5 on
    output = tmp_path / "out"
    status, error, _ = run_cli(capsys, finetune_flags(data_dir, tiny_bert_dir, output))
    assert status == 2
    assert error == (
        f"error: loss became NaN at step 5, so training stopped before that step changed the weights; the last "
        f"good checkpoint is {output / 'checkpoint-4'}; try a lower --learning_rate or a longer --warmup_proportion"
    )
    assert checkpoint_steps(output) == [2, 4] and not list(output.glob("*.partial"))
    assert not (output / "model.safetensors").exists()
    kept = load_weights(output / "checkpoint-4")
    assert all(torch.isfinite(tensor).all() for tensor in kept.values())
    assert_identical_weights(load_weights(straight_run / "checkpoint-4"), kept)


def test_weights_holding_nan_are_never_written_as_a_checkpoint(tiny_bert_dir: Path, tmp_path: Path) -> None:
    model = load_pretraining_model(str(tiny_bert_dir)).model
    optimizer = build_optimizer(parameter_groups(model, 1e-3, 0.01), 1e-3, 1e-8, torch.device("cpu"))
    context = DistributedContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    precision = setup_precision(torch.device("cpu"), fp16=False, bf16=False, loss_scale=0)
    manager = CheckpointManager(
        tmp_path, context, model, optimizer, build_scheduler(optimizer, 10, 1), precision.scaler, {}
    )
    manager.save(TrainingPosition(global_step=1))
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.weight[0, 0] = float("nan")
    with pytest.raises(UserError, match=r"NaN or inf at step 2, so no checkpoint was written; the last good .*-1;"):
        manager.save(TrainingPosition(global_step=2))
    assert checkpoint_steps(tmp_path) == [1] and not list(tmp_path.glob("*.partial"))


# ------------------------------------------------------------------------------------------------------ no pickle

PICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
TORCH_STATE_FILES = {"optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pt"}


def test_saved_runs_hold_safetensors_models_and_only_weights_only_loadable_state(straight_run: Path) -> None:
    directories = [straight_run] + [path for _, path in checkpoint_directories(straight_run)]
    assert len(directories) == 8
    for directory in directories:
        assert (directory / "model.safetensors").is_file()
        for path in directory.iterdir():
            assert path.suffix not in {".bin", ".pkl", ".pickle", ".pth", ".ckpt", ".joblib"}, path
            if path.suffix == ".pt":
                assert path.name in TORCH_STATE_FILES, f"{path}: model weights belong in safetensors"
                torch.load(path, weights_only=True)  # the restricted unpickler: tensors and plain values only


def package_calls() -> Iterator[tuple[Path, ast.Call]]:
    for path in sorted(Path(bert_domain_ft.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                yield path, node
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
                assert not {name.split(".")[0] for name in names} & PICKLING_MODULES, f"{path}:{node.lineno}"


def test_the_package_never_unpickles_arbitrary_objects() -> None:
    torch_loads = 0
    for path, call in package_calls():
        function = call.func
        if not isinstance(function, ast.Attribute) or not isinstance(function.value, ast.Name):
            continue
        keywords = {keyword.arg: keyword.value for keyword in call.keywords}
        where = f"{path}:{call.lineno}"
        if function.value.id == "torch" and function.attr == "load":
            torch_loads += 1
            flag = keywords.get("weights_only")
            assert isinstance(flag, ast.Constant) and flag.value is True, f"{where}: torch.load without weights_only"
        if function.value.id in ("np", "numpy") and function.attr == "load":
            flag = keywords.get("allow_pickle")
            assert flag is None or (isinstance(flag, ast.Constant) and flag.value is False), where
    assert torch_loads >= 3, "the checkpoint loader's calls were found"


# ------------------------------------------------------------------------------------------- impossible flag sets


@pytest.fixture(scope="module")
def long_data_dir(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, tiny_tokenizer_dir: Path) -> Path:
    """Data of max_seq_len 256 for a model with 128 positions (made from the tokenizer alone, which allows it)."""
    return make_pregenerated(tiny_corpus, tiny_tokenizer_dir, tmp_path_factory.mktemp("long") / "epochs", 1, 256)


@pytest.fixture(scope="module")
def bpe_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, tiny_bert_dir: Path) -> Path:
    """The tiny BERT with a BPE tokenizer (no '##' pieces, so whole-word masking cannot work)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    directory = tmp_path_factory.mktemp("bpe_bert")
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tokenizer.train([str(tiny_corpus)], trainers.BpeTrainer(vocab_size=120, special_tokens=specials))
    tokenizer.save(str(directory / "tokenizer.json"))
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_bert_dir / name, directory / name)
    return directory


def refused_up_front(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a refusal that needs only the flags comes after loading the model."""
    from transformers import PreTrainedModel

    def too_late(*_: object, **__: object) -> None:
        raise AssertionError("the model was loaded before the flags were refused")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(too_late))


def test_fp16_on_a_cpu_is_refused_before_loading_anything(
    data_dir: Path, tiny_bert_dir: Path, tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    refused_up_front(monkeypatch)
    message = "error: --fp16 needs a CUDA GPU; on the CPU use --bf16 (or drop --fp16)"
    finetune_ = finetune_flags(data_dir, tiny_bert_dir, tmp_path / "a", "--fp16", "--verify")
    assert run_cli(capsys, finetune_)[:2] == (2, message)
    simple = ["simple", "--train_corpus", str(tiny_corpus), "--bert_model", str(tiny_bert_dir), "--output_dir",
              str(tmp_path / "b"), "--fp16", *QUIET_FLAGS[:2]]  # fmt: skip
    assert run_cli(capsys, simple)[:2] == (2, message)


def test_impossible_flag_combinations_are_one_line_with_the_fix(
    data_dir: Path, long_data_dir: Path, bpe_model_dir: Path, tiny_bert_dir: Path, tiny_corpus: Path,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    simple = ["simple", "--train_corpus", str(tiny_corpus), "--output_dir", str(tmp_path / "s"), *QUIET_FLAGS[:2]]
    pregenerate = ["pregenerate", "--train_corpus", str(tiny_corpus), "--output_dir", str(tmp_path / "p")]
    cases = {
        "fp16 with bf16": (
            finetune_flags(data_dir, tiny_bert_dir, tmp_path / "f", "--fp16", "--bf16"),
            "error: --fp16 and --bf16 were both given; choose one",
        ),
        "data longer than the model's positions": (
            finetune_flags(long_data_dir, tiny_bert_dir, tmp_path / "g"),
            f"error: {long_data_dir / 'manifest.json'}: the data has max_seq_len 256 but {tiny_bert_dir} has only "
            "128 positions (max_position_embeddings); pregenerate the data with --max_seq_len 128 or less",
        ),
        "simple pairs longer than the model's positions": (
            [*simple, "--bert_model", str(tiny_bert_dir), "--max_seq_len", "256"],
            f"error: {tiny_bert_dir}: has only 128 positions (max_position_embeddings) but --max_seq_length is 256; "
            "use --max_seq_length 128 or less",
        ),
        "simple whole-word masking without WordPiece": (
            [*simple, "--bert_model", str(bpe_model_dir), "--do_whole_word_mask"],
            f"error: {bpe_model_dir}: --do_whole_word_mask needs a WordPiece tokenizer ('##' pieces); drop the flag",
        ),
        "pregenerate whole-word masking without WordPiece": (
            [*pregenerate, "--tokenizer", str(bpe_model_dir), "--do_whole_word_mask"],
            f"error: {bpe_model_dir}: --do_whole_word_mask needs a WordPiece tokenizer (pieces marked '##'); this "
            "one is not, so whole-word masking would do nothing: drop the flag",
        ),
        "no workers": (
            [*pregenerate, "--bert_model", str(tiny_bert_dir), "--num_workers", "0"],
            "error: --num_workers must be at least 1 (1 generates in this process)",
        ),
    }
    for name, (arguments, expected) in cases.items():
        assert run_cli(capsys, arguments)[:2] == (2, expected), name
    assert not list(tmp_path.rglob("*.safetensors")) and not list(tmp_path.rglob("manifest.json")), "nothing made"


def test_verify_is_the_finetune_flag_and_the_old_spelling_still_works() -> None:
    from bert_domain_ft.cli import build_parser

    common = ["finetune", "--pregenerated_data", "d", "--output_dir", "o", "--bert_model", "m"]
    assert build_parser().parse_args([*common, "--verify"]).verify_checksums is True
    assert build_parser().parse_args([*common, "--verify_checksums"]).verify_checksums is True
    assert build_parser().parse_args(common).verify_checksums is False


def test_an_array_of_pickled_objects_in_an_epoch_is_refused_not_unpickled(data_dir: Path, tmp_path: Path) -> None:
    data = Path(shutil.copytree(data_dir, tmp_path / "data"))
    planted = data / "epoch_000" / "lengths.npy"
    rows = len(np.load(planted, mmap_mode="r"))
    np.save(planted, np.array([{"code": "would run on unpickling"}] * rows, dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match=f"^{planted}: unreadable .*Python objects"):
        open_epoch(data, read_manifest(data), 0)
