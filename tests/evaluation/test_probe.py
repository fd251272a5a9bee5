"""The downstream probe: reproducible numbers, honest statistics, end to end on tiny BERTs, clear errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_assets import labelled_rows, write_csv
from training_helpers import run_cli

from bert_domain_ft.cli import main as cli_main
from bert_domain_ft.errors import UserError
from bert_domain_ft.evaluation.config import ProbeConfig
from bert_domain_ft.evaluation.probe import ProbeResult, accuracy_score, macro_f1_score, run_probe
from bert_domain_ft.evaluation.probe_report import format_probe_table

FAST = ["--seeds", "2", "--epochs", "6", "--batch_size", "8", "--learning_rate", "2e-3", "--max_seq_len", "16"]


@pytest.fixture(scope="module")
def probe_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("probe_data")
    return write_csv(directory / "train.csv", labelled_rows(10, seed=1)), write_csv(
        directory / "test.csv", labelled_rows(5, seed=2)
    )


def fast_config(models: list[str], probe_files: tuple[Path, Path], **overrides: object) -> ProbeConfig:
    values: dict[str, object] = dict(
        models=models,
        train=probe_files[0],
        test=probe_files[1],
        seeds=2,
        epochs=6,
        batch_size=8,
        learning_rate=2e-3,
        max_seq_len=16,
        show_progress=False,
    )
    values.update(overrides)
    return ProbeConfig(**values)  # type: ignore[arg-type]


def test_accuracy_and_macro_f1_match_hand_computed_values():
    gold = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    assert accuracy_score(gold, predicted) == pytest.approx(4 / 6)
    # F1 per class: 0 → 2·2/(4+0+1) = 0.8; 1 → 2·1/(2+1+1) = 0.5; 2 → 2·1/(2+1+0) = 2/3.
    assert macro_f1_score(gold, predicted, 3) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    # A class that is never predicted counts as F1 0, pulling the macro average down.
    assert macro_f1_score(np.array([0, 1]), np.array([0, 0]), 2) == pytest.approx((2 / 3 + 0.0) / 2)


def test_the_spread_is_the_sample_standard_deviation_over_seeds():
    result = ProbeResult("m", seeds=(0, 1, 2), accuracies=(0.5, 0.6, 0.7), macro_f1s=(0.4, 0.4, 0.4))
    assert result.accuracy_mean == pytest.approx(0.6)
    assert result.accuracy_std == pytest.approx(0.1)  # sqrt(((0.1)² + 0 + (0.1)²) / (3 − 1))
    assert result.macro_f1_std == 0.0
    assert ProbeResult("m", (0,), (0.5,), (0.5,)).accuracy_std == 0.0
    assert list(result.to_json())[:6] == [
        "model",
        "accuracy_mean",
        "accuracy_std",
        "macro_f1_mean",
        "macro_f1_std",
        "seeds",
    ]


def test_the_table_puts_models_side_by_side_with_the_change_against_the_first():
    base = ProbeResult("base_dir", (0, 1), (0.5, 0.52), (0.4, 0.42), name="base")
    adapted = ProbeResult("run_dir", (0, 1), (0.55, 0.57), (0.45, 0.47), name="adapted")
    lines = format_probe_table([base, adapted]).splitlines()
    assert lines[0].split() == ["model", "accuracy", "(2", "seeds)", "macro-F1", "vs", "base"]
    assert lines[2].split() == ["base", "51.00%", "±", "1.41", "41.00%", "±", "1.41", "+0.00", "pts"]
    assert lines[3].split() == ["adapted", "56.00%", "±", "1.41", "46.00%", "±", "1.41", "+5.00", "pts"]


def test_config_rejects_impossible_settings(probe_files):
    with pytest.raises(ValueError, match="at least one model"):
        fast_config([], probe_files)
    with pytest.raises(ValueError, match="lists a model twice"):
        fast_config(["a", "a"], probe_files)
    with pytest.raises(ValueError, match="--seeds must be at least 1"):
        fast_config(["a"], probe_files, seeds=0)


def test_the_probe_gives_identical_numbers_twice_with_the_same_seeds(tiny_bert_dir: Path, probe_files, tmp_path):
    config = fast_config([str(tiny_bert_dir)], probe_files, json_output=tmp_path / "probe.json")
    first = run_probe(config)
    second = run_probe(config)
    assert first == second
    assert first[0].seeds == (0, 1) and len(first[0].accuracies) == 2
    # Different seeds train different classifiers (another head initialisation, dropout and data order).
    assert first[0].accuracies[0] != first[0].accuracies[1] or first[0].macro_f1s[0] != first[0].macro_f1s[1]
    written = json.loads((tmp_path / "probe.json").read_text(encoding="utf-8"))
    assert written == [first[0].to_json()]


def test_the_probe_leaves_the_callers_random_state_alone(tiny_bert_dir: Path, probe_files):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run_probe(fast_config([str(tiny_bert_dir)], probe_files, seeds=1, epochs=1))
    assert torch.equal(torch.rand(3), expected)


def test_probe_command_compares_models_end_to_end(tiny_bert_dir, tiny_encoder_dir, probe_files, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    train, test = probe_files
    json_path, plot_path = tmp_path / "results.json", tmp_path / "chart.png"
    models = [str(tiny_encoder_dir), str(tiny_bert_dir)]
    arguments = ["probe", "--models", *models, "--train", str(train), "--test", str(test), *FAST]
    status = cli_main([*arguments, "--json", str(json_path), "--plot", str(plot_path), "--no_progress"])
    assert status == 0
    printed = capsys.readouterr().out
    assert f"vs {tiny_encoder_dir.name}" in printed and printed.count("%") >= 4
    assert str(tiny_encoder_dir) not in printed  # short names, not absolute paths
    results = json.loads(json_path.read_text(encoding="utf-8"))
    assert [result["model"] for result in results] == models
    for result in results:
        assert 0.0 <= result["accuracy_mean"] <= 1.0 and result["accuracy_std"] >= 0.0
        assert 0.0 <= result["macro_f1_mean"] <= 1.0 and result["seeds"] == [0, 1]
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_names_given_label_the_models(tiny_bert_dir: Path, probe_files):
    (result,) = run_probe(fast_config([str(tiny_bert_dir)], probe_files, seeds=1, names=["mine"]))
    assert result.label == "mine" and result.model == str(tiny_bert_dir)


def test_a_probe_learns_a_task_its_model_can_tell_apart(tiny_bert_dir: Path, probe_files):
    (result,) = run_probe(fast_config([str(tiny_bert_dir)], probe_files, seeds=1))
    assert result.accuracy_mean > 0.6  # three balanced classes: chance is 1/3


def test_bad_probe_inputs_exit_2_with_their_message(tiny_bert_dir: Path, probe_files, tmp_path, capsys):
    train, _ = probe_files
    test = write_csv(tmp_path / "other.csv", [("kernel memory page", "systems"), ("dose of the note", "medicine")])
    arguments = ["probe", "--models", str(tiny_bert_dir), "--train", str(train), "--test", str(test), "--no_plot"]
    assert cli_main(arguments) == 2
    error = capsys.readouterr().err
    assert "error: " in error and "label set mismatch" in error and "'medicine'" in error and "Traceback" not in error
    assert cli_main([*arguments[:-1], "--label_column", "class", "--no_plot"]) == 2
    assert "no column 'class'" in capsys.readouterr().err


def test_a_directory_that_is_not_a_model_is_a_user_error(probe_files, tmp_path):
    with pytest.raises(UserError, match="cannot load a tokenizer"):
        run_probe(fast_config([str(tmp_path)], probe_files))


def test_a_missing_matplotlib_is_reported_before_any_training(tiny_bert_dir, probe_files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    config = fast_config([str(tiny_bert_dir)], probe_files, plot_output=tmp_path / "chart.png")
    with pytest.raises(UserError, match=r"pip install bert_domain_ft\[plot\].*--no_plot"):
        run_probe(config)


def test_each_epoch_uses_every_sentence_once_in_length_sorted_batches():
    from bert_domain_ft.evaluation.probe import BUCKET_BATCHES, epoch_batches

    lengths = np.random.default_rng(5).integers(3, 60, size=101)
    batches = epoch_batches(lengths, 4, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(101))
    assert len(batches) == 26 and max(len(batch) for batch in batches) == 4
    assert all(np.all(np.diff(lengths[batch]) >= 0) for batch in batches)  # sorted within each pool
    assert BUCKET_BATCHES > 1
    again = epoch_batches(lengths, 4, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))


def test_max_seq_len_beyond_the_models_positions_is_one_line_before_any_training(
    tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = labelled_rows(4, seed=1)
    train = write_csv(tmp_path / "train.csv", [(" ".join([rows[0][0]] * 40), rows[0][1]), *rows[1:]])  # ~200 tokens
    test = write_csv(tmp_path / "test.csv", labelled_rows(2, seed=2))
    arguments = ["probe", "--models", str(tiny_bert_dir), "--train", str(train), "--test", str(test)]
    status, error, _ = run_cli(capsys, [*arguments, *FAST[:-1], "1000", "--no_plot", "--no_progress", "--no_cuda"])
    assert status == 2
    assert (
        error == f"error: --max_seq_len 1000: {tiny_bert_dir} takes at most 128 tokens; give --max_seq_len 128 or less"
    )


def test_a_non_finite_learning_rate_is_refused_naming_its_flag(tiny_bert_dir: Path, probe_files, capsys) -> None:
    train, test = probe_files
    arguments = ["probe", "--models", str(tiny_bert_dir), "--train", str(train), "--test", str(test), "--no_plot"]
    status, error, _ = run_cli(capsys, [*arguments, "--learning_rate", "inf"])
    assert status == 2
    assert error == "error: --learning_rate inf: not a finite number; give a number such as 0.0001 (the default)"
