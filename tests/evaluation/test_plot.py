"""The plot command: a PNG of a run's training curves, from metrics.jsonl as the training loop writes it."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from bert_domain_ft.cli import main as cli_main
from bert_domain_ft.errors import UserError
from bert_domain_ft.evaluation.plots import PLOT_FILE, moving_average, plot_run, read_run_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def write_metrics(run_dir: Path, steps: int = 60, eval_every: int = 20) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"kind": "eval", "step": 0, "mlm_loss": 6.0, "mlm_accuracy": 0.05, "nsp_accuracy": 0.5})]
    for step in range(1, steps + 1):
        train = {"kind": "train", "step": step, "epoch": 0, "lr": 1e-4 * (1 - step / steps)}
        train.update({"mlm_loss": 6.0 - step / 30, "nsp_loss": 0.7 - step / 1000, "nsp_acc": 0.5 + step / 200})
        lines.append(json.dumps(train))
        if step % eval_every == 0:
            lines.append(json.dumps({"kind": "eval", "step": step, "mlm_loss": 6.0 - step / 35, "nsp_accuracy": 0.6}))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir


def test_plot_writes_a_png_of_the_configured_size(tmp_path: Path):
    path = plot_run(write_metrics(tmp_path / "run"))
    assert path == tmp_path / "run" / PLOT_FILE
    assert png_size(path) == (1320, 880)  # 12 × 8 inches at 110 dpi
    assert path.stat().st_size > 20_000  # four panels of curves, not a blank canvas


def test_cli_plot_writes_to_the_given_output(tmp_path: Path, capsys):
    output = tmp_path / "curves.png"
    assert cli_main(["plot", str(write_metrics(tmp_path / "run")), "--output", str(output)]) == 0
    assert str(output) in capsys.readouterr().out
    assert png_size(output)[0] > 0


def test_records_are_split_by_kind_and_a_resumed_run_keeps_the_latest_per_step(tmp_path: Path):
    run = write_metrics(tmp_path / "run", steps=30)
    with open(run / "metrics.jsonl", "a") as handle:  # resumed from step 25: steps 26..30 logged again
        for step in range(26, 31):
            handle.write(json.dumps({"kind": "train", "step": step, "lr": 0.0, "mlm_loss": 1.0}) + "\n")
    metrics = read_run_metrics(run)
    assert [record["step"] for record in metrics.train] == list(range(1, 31))
    assert [record["mlm_loss"] for record in metrics.train[-5:]] == [1.0] * 5
    assert [record["step"] for record in metrics.evaluations] == [0, 20]


def test_a_cut_last_line_is_skipped_but_a_damaged_middle_line_is_an_error(tmp_path: Path):
    run = write_metrics(tmp_path / "run", steps=10)
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "train", "step": 11, "mlm_lo')
    assert len(read_run_metrics(run).train) == 10
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[3] = "garbage"
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"metrics.jsonl:4: "):
        read_run_metrics(run)


def test_missing_or_empty_metrics_are_user_errors(tmp_path: Path):
    with pytest.raises(UserError, match="metrics.jsonl: not found"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("\n")
    with pytest.raises(UserError, match="no training or evaluation records"):
        plot_run(tmp_path)


def test_missing_matplotlib_says_how_to_install_it(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail like an absent package
    with pytest.raises(UserError, match=r"pip install bert_domain_ft\[plot\]"):
        plot_run(write_metrics(tmp_path / "run"))


def test_moving_average_is_a_trailing_mean():
    import numpy as np

    assert moving_average(np.array([1.0, 3.0, 5.0, 7.0]), 2).tolist() == [1.0, 2.0, 4.0, 6.0]


def test_plot_of_a_real_finetune_run(tiny_corpus: Path, tiny_bert_dir: Path, tmp_path: Path):
    from bert_domain_ft.data.pregenerate import PregenerateConfig, pregenerate
    from bert_domain_ft.training import FinetuneConfig, finetune

    data = tmp_path / "pregenerated"
    pregenerate(
        PregenerateConfig(
            train_corpus=tiny_corpus, output_dir=data, bert_model=str(tiny_bert_dir), epochs_to_generate=1,
            max_seq_len=64, holdout_fraction=0.1, show_progress=False,
        )
    )  # fmt: skip
    run = finetune(
        FinetuneConfig(
            pregenerated_data=data, output_dir=tmp_path / "run", bert_model=str(tiny_bert_dir), epochs=2,
            train_batch_size=16, learning_rate=1e-3, logging_steps=1, show_progress=False,
        )
    )  # fmt: skip
    metrics = read_run_metrics(run)
    assert [record["step"] for record in metrics.train] == list(range(1, len(metrics.train) + 1))
    assert len(metrics.train) > 20
    path = plot_run(run)
    assert png_size(path) == (1320, 880) and path.stat().st_size > 20_000


@pytest.mark.parametrize(("with_nsp", "title"), [(True, "Next-sentence prediction loss"), (False, "Drift from")])
def test_the_second_panel_shows_nsp_or_for_a_masked_lm_run_the_drift_from_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_nsp: bool, title: str
):
    import bert_domain_ft.evaluation.plots as plotting

    run = tmp_path / "run"
    run.mkdir()
    records = []
    for step in range(1, 31):
        train = {
            "kind": "train",
            "step": step,
            "epoch": 0,
            "lr": 1e-4,
            "mlm_loss": 6.0 - step / 30,
            "drift": 0.1 * step,
        }
        if with_nsp:
            train["nsp_loss"] = 0.7
        records.append(json.dumps(train))
    (run / "metrics.jsonl").write_text("\n".join(records) + "\n")
    titles: list[str] = []
    original = plotting._finish
    monkeypatch.setattr(plotting, "_finish", lambda axes, t, y: (titles.append(t), original(axes, t, y)))
    plot_run(run)
    assert titles[1].startswith(title)


NON_FINITE_LINES = [
    '{"kind": "eval", "step": 0, "mlm_loss": 3.0, "perplexity": 20.1, "mlm_accuracy": 0.2}',
    '{"kind": "train", "step": 2, "lr": 1e-05, "mlm_loss": NaN}',  # what json.dumps writes for float("nan")
    '{"kind": "train", "step": 4, "lr": 2e-05, "mlm_loss": 2.0, "grad_norm": Infinity}',
    '{"kind": "eval", "step": NaN, "mlm_loss": 1.0}',
    '{"kind": "eval", "step": 4, "mlm_loss": 2.5, "perplexity": 1e400, "mlm_accuracy": -Infinity}',
]


def test_nan_and_infinity_in_metrics_are_read_as_missing_values_with_one_warning(tmp_path: Path, capsys, caplog):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n".join(NON_FINITE_LINES) + "\n")
    metrics = read_run_metrics(run)
    assert [record["step"] for record in metrics.evaluations] == [0, 4]  # the record without a step is left out
    assert metrics.evaluations[1]["perplexity"] is None and metrics.train[0]["mlm_loss"] is None
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warnings == [f"{run / 'metrics.jsonl'}:2: NaN or infinite numbers (not JSON) read as missing values, "
                        "here and on 3 more lines"]  # fmt: skip
    assert cli_main(["plot", str(run), "--output", str(tmp_path / "curves.png")]) == 0
    assert png_size(tmp_path / "curves.png")[0] > 0 and "Traceback" not in capsys.readouterr().err
