"""--general_holdout: general text evaluated beside the domain's held-out set, in metrics, table and plot."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_helpers import make_pregenerated, quick_config, read_metrics

from bert_domain_ft.cli import build_parser
from bert_domain_ft.cli.commands import finetune_config as config_from
from bert_domain_ft.cli.flags import parse_with_config
from bert_domain_ft.data.epoch_format import read_manifest
from bert_domain_ft.errors import UserError
from bert_domain_ft.evaluation import plots as plotting
from bert_domain_ft.evaluation.evaluate import GENERAL_HOLDOUT_DIRECTORY, open_general_holdout
from bert_domain_ft.evaluation.heldout import format_before_after_table, print_run_before_after
from bert_domain_ft.training.config import FinetuneConfig
from bert_domain_ft.training.recipe import finetune

GENERAL_CORPUS = Path(__file__).parents[2] / "data" / "sample_corpus.txt"  # the demo's general text, 56 documents
GENERAL_KEYS = ("general_mlm_loss", "general_perplexity", "general_mlm_accuracy")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, tiny_bert_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("data")
    return make_pregenerated(tiny_corpus, tiny_bert_dir, root / "pregenerated", epochs=1, holdout_fraction=0.1)


def _evaluations(run: Path) -> list[dict]:
    return [record for record in read_metrics(run) if record["kind"] == "eval"]


def test_a_corpus_file_is_pregenerated_once_like_the_data_and_evaluated_at_every_evaluation(
    tmp_path: Path, data_dir: Path, tiny_bert_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = finetune(quick_config(data_dir, tiny_bert_dir, tmp_path / "run", general_holdout=GENERAL_CORPUS))
    general = read_manifest(run / GENERAL_HOLDOUT_DIRECTORY)
    domain = read_manifest(data_dir)
    assert (general["objective"], general["max_seq_len"]) == (domain["objective"], domain["max_seq_len"])
    assert general["tokenizer"]["vocab_fingerprint"] == domain["tokenizer"]["vocab_fingerprint"]
    assert general["corpus"]["documents"] == 56 and general["holdout"] is None  # one epoch of every document
    evaluations = _evaluations(run)
    assert [record["step"] for record in evaluations] == [0, evaluations[-1]["step"]] and evaluations[-1]["step"] > 0
    for record in evaluations:  # beside the domain's own figures, which are unchanged by the general set
        assert all(isinstance(record[key], float) for key in ("mlm_loss", *GENERAL_KEYS))
        assert record["general_num_instances"] == general["epochs"][0]["num_instances"]
        assert record["general_mlm_loss"] != record["mlm_loss"]
    capsys.readouterr()
    assert print_run_before_after(run)
    printed = capsys.readouterr().out
    assert "general MLM loss (nats/token)" in printed and "general perplexity" in printed
    assert "MLM loss (nats/token)" in printed.replace("general MLM loss", "")


def test_resume_reuses_the_general_set_and_ends_with_the_figures_of_a_straight_run(
    tmp_path: Path, data_dir: Path, tiny_bert_dir: Path
) -> None:
    options = {"general_holdout": GENERAL_CORPUS, "train_batch_size": 64}
    straight = finetune(quick_config(data_dir, tiny_bert_dir, tmp_path / "straight", **options))
    interrupted = tmp_path / "interrupted"
    finetune(quick_config(data_dir, tiny_bert_dir, interrupted, stop_after_steps=2, **options))
    arrays = interrupted / GENERAL_HOLDOUT_DIRECTORY / "epoch_000" / "input_ids.npy"
    written = arrays.stat().st_mtime_ns
    finetune(quick_config(data_dir, tiny_bert_dir, interrupted, resume=True, **options))
    assert arrays.stat().st_mtime_ns == written  # not made again
    for first, second in zip(_evaluations(straight), _evaluations(interrupted)):
        assert first["step"] == second["step"]
        assert first["general_mlm_loss"] == pytest.approx(second["general_mlm_loss"], rel=1e-6)


def test_a_pregenerated_directory_gives_its_holdout_else_its_first_epoch(
    tmp_path: Path, data_dir: Path, tiny_corpus: Path, tiny_bert_dir: Path
) -> None:
    without_holdout = make_pregenerated(tiny_corpus, tiny_bert_dir, tmp_path / "plain", epochs=1, seed=3)
    domain = read_manifest(data_dir)
    fingerprint = domain["tokenizer"]["vocab_fingerprint"]
    assert open_general_holdout(data_dir, fingerprint).num_instances == domain["holdout"]["num_instances"]
    first_epoch = read_manifest(without_holdout)["epochs"][0]["num_instances"]
    assert open_general_holdout(without_holdout, fingerprint).num_instances == first_epoch
    with pytest.raises(UserError, match="vocabulary"):
        open_general_holdout(without_holdout, "another vocabulary")
    # Training data without a held-out set of its own: the general set alone is evaluated.
    run = finetune(quick_config(without_holdout, tiny_bert_dir, tmp_path / "run", general_holdout=data_dir))
    evaluations = _evaluations(run)
    assert len(evaluations) == 2 and "mlm_loss" not in evaluations[0]
    assert evaluations[0]["general_num_instances"] == domain["holdout"]["num_instances"]
    assert not (run / GENERAL_HOLDOUT_DIRECTORY).exists()  # a directory is read where it is


def test_a_missing_general_holdout_is_one_line_naming_it(tmp_path: Path, data_dir: Path, tiny_bert_dir: Path) -> None:
    with pytest.raises(UserError, match="missing.txt: no such file or directory"):
        finetune(quick_config(data_dir, tiny_bert_dir, tmp_path / "run", general_holdout=tmp_path / "missing.txt"))


def test_before_after_table_shows_general_rows_only_when_there_are_general_figures() -> None:
    before = {"mlm_loss": 3.0, "perplexity": 20.09, "mlm_accuracy": 0.2}
    after = {"mlm_loss": 2.0, "perplexity": 7.39, "mlm_accuracy": 0.4}
    assert "general" not in format_before_after_table(before, after)
    general_before = {**before, "general_mlm_loss": 2.5, "general_perplexity": 12.18, "general_mlm_accuracy": 0.3}
    general_after = {**after, "general_mlm_loss": 2.75, "general_perplexity": 15.64, "general_mlm_accuracy": 0.25}
    lines = format_before_after_table(general_before, general_after).splitlines()
    general_loss = next(line for line in lines if line.startswith("general MLM loss"))
    assert general_loss.split()[-1] == "+0.2500"  # forgetting: the general loss rose
    assert next(line for line in lines if line.startswith("general MLM accuracy")).endswith("-5.00 pts")
    assert lines.index(general_loss) > next(i for i, line in enumerate(lines) if line.startswith("MLM loss"))


def test_plot_draws_the_general_curves_beside_the_domains(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    drawn: list[tuple[str, list[float]]] = []
    plot_eval = plotting._plot_eval

    def recording(axes, steps, values, label, color):  # type: ignore[no-untyped-def]
        drawn.append((label, list(values)))
        plot_eval(axes, steps, values, label, color)

    monkeypatch.setattr(plotting, "_plot_eval", recording)
    evaluations = [
        {"kind": "eval", "step": 0, "mlm_loss": 3.0, "mlm_accuracy": 0.2, "general_mlm_loss": 2.5,
         "general_mlm_accuracy": 0.3},
        {"kind": "eval", "step": 10, "mlm_loss": 2.0, "mlm_accuracy": 0.4, "general_mlm_loss": 2.7,
         "general_mlm_accuracy": 0.25},
    ]  # fmt: skip
    train = [{"kind": "train", "step": 10, "mlm_loss": 2.1, "lr": 1e-5}]
    assert plotting.draw_run(plotting.RunMetrics(train=train, evaluations=evaluations), "run").startswith(b"\x89PNG")
    assert ("general held-out", [2.5, 2.7]) in drawn
    assert ("general held-out MLM", [30.0, 25.0]) in drawn and ("held-out", [3.0, 2.0]) in drawn


def test_general_holdout_comes_from_the_flag_or_a_config_file_and_needs_evaluation(tmp_path: Path) -> None:
    flags = ["finetune", "--pregenerated_data", "d", "--output_dir", "o", "--bert_model", "m"]
    assert config_from(build_parser().parse_args([*flags, "--general_holdout", "g.txt"])).general_holdout == Path(
        "g.txt"
    )
    config = tmp_path / "run.json"
    config.write_text('{"pregenerated_data": "d", "output_dir": "o", "bert_model": "m", "general_holdout": "w.txt"}')
    arguments = parse_with_config(build_parser(), ["finetune", "--config", str(config)])
    assert config_from(arguments).general_holdout == Path("w.txt")
    with pytest.raises(ValueError, match="drop --no_eval"):
        FinetuneConfig(Path("d"), Path("o"), bert_model="m", general_holdout=Path("g.txt"), do_eval=False)
