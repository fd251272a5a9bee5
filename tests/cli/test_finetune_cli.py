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
