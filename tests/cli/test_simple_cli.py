"""`bert-domain-ft simple` and the classic `simple-lm-finetuning` script: original flags, config files, errors."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bert_domain_ft.cli import SIMPLE as simple_cli
from bert_domain_ft.cli import main as dispatcher_main
from bert_domain_ft.errors import UserError

ORIGINAL_FLAGS = [
    "--train_corpus", "corpus.txt", "--bert_model", "bert-base-uncased", "--do_lower_case", "--output_dir", "out",
    "--do_train", "--max_seq_length", "64", "--train_batch_size", "16", "--learning_rate", "5e-5",
    "--num_train_epochs", "2.0", "--warmup_proportion", "0.2", "--on_memory", "--fp16", "--loss_scale", "128",
    "--gradient_accumulation_steps", "2", "--seed", "7", "--no_cuda", "--local_rank", "-1",
]  # fmt: skip


def _parse(flags: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    simple_cli.add_arguments(parser)
    return parser.parse_args(flags)


def test_every_original_flag_is_accepted_and_lands_in_the_config() -> None:
    config = simple_cli.config_from(_parse(ORIGINAL_FLAGS))
    training = config.training
    assert config.train_corpus == Path("corpus.txt") and config.on_memory and config.max_seq_len == 64
    assert training.bert_model == "bert-base-uncased" and training.do_lower_case is True
    assert training.output_dir == Path("out") and training.no_cuda and training.fp16 and training.local_rank == -1
    assert (training.epochs, training.train_batch_size, training.gradient_accumulation_steps) == (2, 16, 2)
    assert (training.learning_rate, training.warmup_proportion, training.loss_scale, training.seed) == (
        5e-5,
        0.2,
        128,
        7,
    )
    assert config.group_by_length and not training.do_eval  # grouping is the default


def test_the_pytorch_transformers_1x_flags_keep_their_meaning(caplog: pytest.LogCaptureFixture) -> None:
    flags = ["--train_corpus", "c", "--bert_model", "m", "--output_dir", "o", "--do_train", "--num_train_epochs", "2.0"]
    flags += ["--warmup_steps", "100", "--adam_epsilon", "1e-6", "--fp16", "--fp16_opt_level", "O1"]
    with caplog.at_level("INFO"):
        config = simple_cli.config_from(_parse(flags))
    assert config.training.warmup_steps == 100 and config.training.head_warmup_steps is None
    assert config.training.adam_epsilon == 1e-6 and config.training.epochs == 2 and config.training.fp16
    assert any("--fp16_opt_level O1" in record.getMessage() for record in caplog.records)


def test_new_names_work_too_and_defaults_match_the_original_script() -> None:
    config = simple_cli.config_from(
        _parse(
            ["--train_corpus", "c", "--bert_model", "m", "--output_dir", "o", "--max_seq_len", "96", "--epochs", "4"]
        )
    )
    assert config.max_seq_len == 96 and config.training.epochs == 4 and not config.on_memory
    default = simple_cli.config_from(_parse(["--train_corpus", "c", "--bert_model", "m", "--output_dir", "o"]))
    assert (default.max_seq_len, default.training.train_batch_size, default.training.learning_rate) == (128, 32, 3e-5)
    assert default.training.epochs == 3 and default.masked_lm_prob == 0.15


def test_a_fractional_number_of_epochs_is_refused() -> None:
    with pytest.raises(UserError, match="whole number of epochs"):
        simple_cli.config_from(
            _parse(["--train_corpus", "c", "--bert_model", "m", "--output_dir", "o", "--num_train_epochs", "2.5"])
        )


def test_parsing_the_flags_does_not_import_torch() -> None:
    code = "import sys; import bert_domain_ft.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_classic_script_trains_with_original_flags_and_a_config_file(
    tmp_path: Path, tiny_corpus: Path, tiny_bert_dir: Path
) -> None:
    settings = {"train_corpus": str(tiny_corpus), "bert_model": str(tiny_bert_dir), "max_seq_len": 48}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({**settings, "num_train_epochs": 1.0, "no_progress": True}))
    output = tmp_path / "out"
    flags = ["--config", str(tmp_path / "run.yaml"), "--output_dir", str(output), "--do_train", "--no_cuda"]
    flags += ["--train_batch_size", "64", "--stop_after_steps", "2", "--seed", "5"]
    assert simple_cli.classic_main(flags) == 0
    effective = yaml.safe_load((output / "effective_config.yaml").read_text())
    assert effective["max_seq_len"] == 48 and effective["train_batch_size"] == 64 and effective["seed"] == 5
    assert (output / "metrics.jsonl").is_file() and (output / "checkpoint-2").is_dir()


def test_config_file_keys_use_the_flag_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "run.yaml").write_text("train_corpus: c.txt\nbert_model: m\noutput_dir: o\nmax_seq_len: 80\n")
    with pytest.raises(SystemExit) as stopped:
        dispatcher_main(["simple", "--config", str(tmp_path / "run.yaml"), "--print_config"])
    assert stopped.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["max_seq_len"] == 80 and printed["train_corpus"] == "c.txt" and printed["on_memory"] is False


@pytest.mark.parametrize(
    ("corpus_text", "message"),
    [
        ("Only one document here.\nWith two sentences.\n", "only one document"),
        ("One sentence.\n\nAnother document.\n\nA third.\n", "no document of the corpus has two sentences"),
    ],
)
def test_unusable_corpora_exit_2_with_one_error_line(
    tmp_path: Path, tiny_bert_dir: Path, corpus_text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus_text)
    flags = ["--train_corpus", str(corpus), "--bert_model", str(tiny_bert_dir), "--output_dir", str(tmp_path / "o")]
    assert dispatcher_main(["simple", *flags, "--no_cuda", "--no_progress"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last


def test_save_best_without_a_probe_is_refused_saying_what_to_add() -> None:
    flags = ["--train_corpus", "c.txt", "--bert_model", "m", "--output_dir", "o", "--save_best"]
    with pytest.raises(UserError, match="give --probe_train and --probe_test"):
        simple_cli.config_from(_parse(flags))


def test_simple_probes_the_base_model_and_its_checkpoints_and_keeps_the_best(
    tmp_path: Path, tiny_corpus: Path, tiny_encoder_dir: Path
) -> None:
    from tiny_assets import small_probe_files
    from training_helpers import read_metrics

    train, test = small_probe_files(tmp_path)
    output = tmp_path / "out"
    flags = ["--train_corpus", str(tiny_corpus), "--bert_model", str(tiny_encoder_dir), "--output_dir", str(output)]
    flags += ["--max_seq_len", "48", "--train_batch_size", "16", "--stop_after_steps", "2", "--no_cuda"]
    flags += ["--no_progress", "--save_best", "--probe_train", str(train), "--probe_test", str(test)]
    flags += ["--probe_seeds", "1", "--probe_epochs", "1"]
    assert dispatcher_main(["simple", *flags]) == 0
    probes = [record for record in read_metrics(output) if record.get("kind") == "probe"]
    assert [record["step"] for record in probes] == [0, 2]
    assert probes[0]["model"] == str(tiny_encoder_dir)
    assert (output / "best" / "model.safetensors").is_file()
    assert '"metric": "probe_accuracy"' in (output / "best" / "best.json").read_text()


def test_a_directory_holding_the_users_files_is_refused_before_anything_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    output.mkdir()
    (output / "README.md").write_text("my notes")
    flags = ["--train_corpus", str(tmp_path / "c.txt"), "--bert_model", str(tmp_path / "m"), "--no_cuda"]
    assert dispatcher_main(["simple", *flags, "--output_dir", str(output)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        f"error: {output}: holds README.md, which bert_domain_ft did not write; move them out, choose another "
        "--output_dir, or pass --overwrite_output_dir to delete them"
    )
    assert [path.name for path in output.iterdir()] == ["README.md"]
