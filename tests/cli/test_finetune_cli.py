"""FinetuneConfig validation and the `finetune` / `finetune-on-pregenerated` command lines."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from bert_domain_ft.cli import FINETUNE as finetune_cli
from bert_domain_ft.training.config import FinetuneConfig

ORIGINAL_FLAGS = [
    "--pregenerated_data", "data", "--output_dir", "out", "--bert_model", "bert-base-uncased", "--do_lower_case",
    "--reduce_memory", "--epochs", "4", "--local_rank", "-1", "--no_cuda", "--gradient_accumulation_steps", "2",
    "--train_batch_size", "64", "--fp16", "--loss_scale", "128", "--warmup_proportion", "0.2",
    "--learning_rate", "5e-5", "--seed", "7",
]  # fmt: skip


def _parse(flags: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    finetune_cli.add_arguments(parser)
    return parser.parse_args(flags)


def test_every_original_flag_is_accepted_and_lands_in_the_config() -> None:
    config = finetune_cli.config_from(_parse(ORIGINAL_FLAGS))
    assert config.pregenerated_data == Path("data") and config.bert_model == "bert-base-uncased"
    assert config.do_lower_case is True and config.reduce_memory and config.no_cuda and config.fp16
    assert (config.epochs, config.gradient_accumulation_steps, config.train_batch_size) == (4, 2, 64)
    assert (config.loss_scale, config.warmup_proportion, config.learning_rate, config.seed) == (128, 0.2, 5e-5, 7)
    assert config.micro_batch_size == 32


# The flags of the later generation: pytorch-transformers 1.x's finetune_on_pregenerated.py (and run_lm_finetuning's
# optimizer flags), each with the meaning it had there.
TRANSFORMERS_1X_FLAGS = [
    "--pregenerated_data", "data", "--output_dir", "out", "--bert_model", "bert-base-uncased", "--do_lower_case",
    "--reduce_memory", "--epochs", "2", "--local_rank", "-1", "--no_cuda", "--gradient_accumulation_steps", "2",
    "--train_batch_size", "64", "--fp16", "--fp16_opt_level", "O2", "--warmup_steps", "500", "--adam_epsilon",
    "1e-6", "--learning_rate", "5e-5", "--seed", "7", "--weight_decay", "0.0", "--max_grad_norm", "5.0",
]  # fmt: skip


def test_the_classic_script_takes_the_pytorch_transformers_1x_flags_with_their_meaning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from bert_domain_ft.cli.flags import parse_with_config

    arguments = parse_with_config(finetune_cli.classic_parser(), TRANSFORMERS_1X_FLAGS)
    with caplog.at_level("INFO"):
        config = finetune_cli.config_from(arguments)
    assert config.warmup_steps == 500 and config.head_warmup_steps is None  # the ramp, not the head-only steps
    assert (config.adam_epsilon, config.weight_decay, config.max_grad_norm) == (1e-6, 0.0, 5.0)
    assert (config.epochs, config.train_batch_size, config.gradient_accumulation_steps) == (2, 64, 2)
    assert config.fp16 and config.no_cuda and config.reduce_memory and config.do_lower_case is True
    assert (config.learning_rate, config.seed, config.local_rank) == (5e-5, 7, -1)
    notes = [record.getMessage() for record in caplog.records if "fp16_opt_level" in record.getMessage()]
    assert len(notes) == 1 and "O2" in notes[0] and "torch.amp" in notes[0]


def test_warmup_steps_is_a_learning_rate_ramp_of_that_many_steps() -> None:
    """--warmup_steps 4 of 20 steps: the rate climbs to its peak over the first 4 steps, then decays; without it
    the ramp is --warmup_proportion of the steps (0.1: 2 steps)."""
    import torch

    from bert_domain_ft.training.loop import settings_from
    from bert_domain_ft.training.setup import OptimizationSettings, build_optimization

    def rates(config: FinetuneConfig) -> list[float]:
        settings = settings_from(OptimizationSettings, config)
        optimizer, scheduler = build_optimization(torch.nn.Linear(2, 2), settings, 20, torch.device("cpu"))
        found = []
        for _ in range(6):
            found.append(optimizer.param_groups[0]["lr"] / config.learning_rate)
            optimizer.step()
            scheduler.step()
        return [round(rate, 4) for rate in found]

    config = FinetuneConfig(pregenerated_data=Path("d"), output_dir=Path("o"), bert_model="m", warmup_steps=4)
    assert rates(config) == [0.25, 0.5, 0.75, 1.0, 1.0, 0.9375]
    assert rates(FinetuneConfig(pregenerated_data=Path("d"), output_dir=Path("o"), bert_model="m"))[:3] == [0.5, 1, 1]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"warmup_steps": -1}, "warmup_steps must not be negative"),
        ({"warmup_steps": 10, "max_steps": 10}, "--warmup_steps 10 ramps the learning rate up over the whole run"),
    ],
)
def test_an_impossible_ramp_is_refused(changes: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(pregenerated_data=Path("d"), output_dir=Path("o"), bert_model="m", **changes)  # type: ignore[arg-type]


def test_a_ramp_as_long_as_the_main_steps_is_one_line() -> None:
    from bert_domain_ft.errors import UserError
    from bert_domain_ft.model.optimization import warmup_steps_for

    assert warmup_steps_for(100, 0.1) == 10 and warmup_steps_for(100, 0.1, 30) == 30
    with pytest.raises(
        UserError, match="--warmup_steps 100: the learning-rate ramp must be shorter than the run's 100"
    ):
        warmup_steps_for(100, 0.1, 100)


PREGENERATE_ORIGINAL_FLAGS = [
    "--train_corpus", "c.txt", "--output_dir", "out", "--bert_model", "bert-base-uncased", "--do_lower_case",
    "--do_whole_word_mask", "--reduce_memory", "--num_workers", "4", "--epochs_to_generate", "5", "--max_seq_len",
    "256", "--short_seq_prob", "0.2", "--masked_lm_prob", "0.2", "--max_predictions_per_seq", "30",
]  # fmt: skip


def test_the_classic_pregenerate_script_takes_every_original_flag() -> None:
    from bert_domain_ft.cli import PREGENERATE
    from bert_domain_ft.cli.flags import parse_with_config

    arguments = parse_with_config(PREGENERATE.classic_parser(), PREGENERATE_ORIGINAL_FLAGS)
    assert arguments.train_corpus == ["c.txt"] and arguments.do_lower_case and arguments.do_whole_word_mask
    assert (arguments.num_workers, arguments.epochs_to_generate, arguments.max_seq_len) == (4, 5, 256)
    assert (arguments.short_seq_prob, arguments.masked_lm_prob, arguments.max_predictions_per_seq) == (0.2, 0.2, 30)


def test_a_resumed_run_keeps_its_learning_rate_ramp() -> None:
    from bert_domain_ft.training.recipe import _RESUME_SETTINGS

    assert {"warmup_proportion", "warmup_steps"} <= set(_RESUME_SETTINGS)


def test_defaults_follow_the_issue() -> None:
    config = finetune_cli.config_from(_parse(["--pregenerated_data", "d", "--output_dir", "o", "--bert_model", "m"]))
    assert (config.learning_rate, config.warmup_proportion, config.weight_decay, config.max_grad_norm) == (
        3e-5,
        0.1,
        0.01,
        1.0,
    )
    assert config.do_lower_case is None and config.do_eval and config.show_progress


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"train_batch_size": 30, "gradient_accumulation_steps": 4}, "not divisible by gradient_accumulation_steps"),
        ({"fp16": True, "bf16": True}, "choose one"),
        ({"loss_scale": 128.0}, "only applies with --fp16"),
        ({"warmup_proportion": 1.0}, r"warmup_proportion must be in \[0, 1\)"),
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"save_total_limit": -1}, "must not be negative"),
        ({"resume": True, "overwrite_output_dir": True}, "contradict"),
    ],
)
def test_impossible_settings_are_rejected_with_a_fix(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(pregenerated_data=Path("d"), output_dir=Path("o"), bert_model="m", **changes)  # type: ignore[arg-type]


def test_config_serialises_to_plain_json_values() -> None:
    values = FinetuneConfig(pregenerated_data=Path("d"), output_dir=Path("o"), bert_model="m").to_json()
    assert values["pregenerated_data"] == "d" and values["train_batch_size"] == 32


def test_help_explains_the_batch_size_and_the_classic_script_exists() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from bert_domain_ft.cli import finetune_on_pregenerated; finetune_on_pregenerated(['--help'])",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert text.startswith("usage: finetune-on-pregenerated")
    assert "divided by --gradient_accumulation_steps" in text and "global batch is N times this" in text


def test_parsing_the_flags_does_not_import_torch() -> None:
    code = "import sys; import bert_domain_ft.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_bad_flag_values_exit_2_with_one_error_line(tmp_path: Path) -> None:
    flags = ["--pregenerated_data", str(tmp_path), "--output_dir", str(tmp_path / "o"), "--bert_model", "m"]
    result = subprocess.run(
        [sys.executable, "-m", "bert_domain_ft", "finetune", *flags, "--train_batch_size", "30",
         "--gradient_accumulation_steps", "4"],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: train_batch_size 30 is not divisible")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("flag", "value"),
    [("weight_decay", "nan"), ("max_grad_norm", "nan"), ("learning_rate", "inf"), ("adam_epsilon", "inf"),
     ("head_learning_rate", "inf"), ("loss_scale", "nan"), ("anchor_weight", "nan")],
)  # fmt: skip
def test_a_non_finite_optimizer_value_is_refused_naming_its_flag(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training_helpers import run_cli

    flags = ["--pregenerated_data", str(tmp_path), "--output_dir", str(tmp_path / "o"), "--bert_model", "m"]
    status, error, _ = run_cli(capsys, ["finetune", *flags, "--fp16", f"--{flag}", value])
    default = getattr(FinetuneConfig(pregenerated_data=Path("d"), output_dir=Path("o"), bert_model="m"), flag)
    assert status == 2
    assert error == f"error: --{flag} {value}: not a finite number; give a number such as {default} (the default)"
