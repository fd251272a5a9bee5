"""Honest probe statistics: the t quantile against tables, paired differences with known intervals, the same
seeds giving every model the same classifier start, and the paired section of the table and JSON."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
from test_probe import fast_config, probe_files  # noqa: F401  (probe_files is a fixture)

from bert_domain_ft.cli import PROBE as probe_cli
from bert_domain_ft.evaluation.config import ProbeConfig
from bert_domain_ft.evaluation.probe import ProbeResult, classifier_from_pretrained, run_probe
from bert_domain_ft.evaluation.probe_report import (
    BETTER,
    NO_DIFFERENCE,
    ONE_SEED,
    WORSE,
    format_probe_table,
    paired_difference,
    probe_json,
    regularized_incomplete_beta,
    short_model_names,
    t_cdf,
    t_quantile,
)

# t_{0.975, df} from printed tables (three decimals).
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262, 29: 2.045, 30: 2.042, 120: 1.980}


@pytest.mark.parametrize("degrees_of_freedom", sorted(T_TABLE))
def test_the_t_quantile_matches_printed_tables(degrees_of_freedom: int) -> None:
    assert t_quantile(0.975, degrees_of_freedom) == pytest.approx(T_TABLE[degrees_of_freedom], abs=5e-4)


def test_the_t_quantile_is_symmetric_and_tends_to_the_normal() -> None:
    assert t_quantile(0.025, 4) == pytest.approx(-t_quantile(0.975, 4), rel=1e-12)
    assert t_quantile(0.995, 10) == pytest.approx(3.169, abs=5e-4)
    assert t_quantile(0.975, 1_000_000) == pytest.approx(1.95996, abs=1e-4)
    assert t_cdf(0.0, 3) == 0.5 and t_cdf(t_quantile(0.9, 7), 7) == pytest.approx(0.9, abs=1e-12)
    # df 1 is the Cauchy distribution: P(T ≤ t) = 1/2 + atan(t)/π.
    assert t_cdf(2.0, 1) == pytest.approx(0.5 + torch.atan(torch.tensor(2.0, dtype=torch.float64)).item() / torch.pi)
    with pytest.raises(ValueError):
        t_quantile(1.0, 4)


def test_the_incomplete_beta_matches_closed_forms() -> None:
    for x in (0.01, 0.3, 0.5, 0.77, 0.99):
        assert regularized_incomplete_beta(x, 1, 1) == pytest.approx(x, rel=1e-12)
        assert regularized_incomplete_beta(x, 3, 1) == pytest.approx(x**3, rel=1e-12)
        assert regularized_incomplete_beta(x, 1, 4) == pytest.approx(1 - (1 - x) ** 4, rel=1e-12)
    assert regularized_incomplete_beta(0.3, 2, 3) == pytest.approx(0.3483, rel=1e-12)  # 6x²−8x³+3x⁴
    assert regularized_incomplete_beta(0.0, 2, 3) == 0.0 and regularized_incomplete_beta(1.0, 2, 3) == 1.0


def test_a_paired_difference_has_the_hand_computed_mean_and_interval() -> None:
    base = [0.80, 0.82, 0.79, 0.81, 0.80]
    model = [b + d for b, d in zip(base, [0.03, 0.02, 0.03, 0.02, 0.04])]
    difference = paired_difference(model, base)
    # d = (.03, .02, .03, .02, .04): mean .028, stdev √(280e-6 / 4) = .0083666, half width 2.776445 · stdev / √5.
    half_width = 2.776445 * (70e-6) ** 0.5 / 5**0.5
    assert difference.mean == pytest.approx(0.028)
    assert difference.low == pytest.approx(0.028 - half_width, abs=1e-6)
    assert difference.high == pytest.approx(0.028 + half_width, abs=1e-6)
    assert difference.verdict == BETTER and difference.beats_reference
    assert difference.describe_points() == "+2.80 pts [+1.76, +3.84]"
    worse = paired_difference(base, model)
    assert worse.verdict == WORSE and not worse.beats_reference and worse.mean == pytest.approx(-0.028)


def test_an_interval_covering_zero_is_no_measurable_difference() -> None:
    # d = (+.02, −.01, +.03, −.02, 0): mean +.004, stdev .0207, half width 2.776 · .0207 / √5 = .0257.
    difference = paired_difference([0.52, 0.49, 0.53, 0.48, 0.50], [0.50] * 5)
    assert difference.low < 0 < difference.high
    assert difference.verdict == NO_DIFFERENCE and not difference.beats_reference
    same = paired_difference([0.6, 0.7], [0.6, 0.7])
    assert (same.mean, same.low, same.high, same.verdict) == (0.0, 0.0, 0.0, NO_DIFFERENCE)


def test_one_seed_gives_no_interval_and_says_so() -> None:
    difference = paired_difference([0.9], [0.5])
    assert difference.mean == pytest.approx(0.4) and difference.low is None and difference.high is None
    assert difference.verdict == ONE_SEED and not difference.beats_reference
    assert difference.to_json() == {"mean": difference.mean, "low": None, "high": None, "verdict": ONE_SEED, "seeds": 1}
    table = format_probe_table([ProbeResult("a", (0,), (0.5,), (0.5,)), ProbeResult("b", (0,), (0.9,), (0.5,))])
    assert "one seed, so no interval" in table.splitlines()[-1]


def test_results_of_other_seeds_are_not_paired() -> None:
    with pytest.raises(ValueError, match="different seeds"):
        ProbeResult("a", (0, 1), (0.5, 0.5), (0.5, 0.5)).paired_with(ProbeResult("b", (1, 2), (0.5, 0.5), (0.5, 0.5)))
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([0.5, 0.6], [0.5])


def test_the_table_and_json_show_the_paired_difference_against_the_first_model() -> None:
    seeds = (0, 1, 2, 3, 4)
    base = ProbeResult("base_dir", seeds, (0.80, 0.82, 0.79, 0.81, 0.80), (0.7,) * 5, name="base")
    run = ProbeResult("run_dir", seeds, (0.83, 0.84, 0.82, 0.83, 0.84), (0.7,) * 5, name="run")
    lines = format_probe_table([base, run]).splitlines()
    assert lines[4] == "" and lines[5] == ("paired against base, same 5 seeds (95% interval from Student's t, 4 df):")
    assert lines[6].split() == ["model", "metric", "difference", "[95%", "interval]", "verdict"]
    assert lines[8].split() == ["run", "accuracy", "+2.80", "pts", "[+1.76,", "+3.84]", "better"]
    assert lines[9].split() == ["macro-F1", "+0.00", "pts", "[+0.00,", "+0.00]", "no", "measurable", "difference"]
    first, second = probe_json([base, run])
    assert "paired_vs_first" not in first
    paired = second["paired_vs_first"]
    assert paired["reference"] == "base_dir" and paired["verdict"] == BETTER and paired["seeds"] == 5
    assert (paired["mean"], paired["low"], paired["high"]) == pytest.approx((0.028, 0.017611, 0.038389), abs=1e-6)
    assert second["paired_macro_f1_vs_first"]["verdict"] == NO_DIFFERENCE
    json.dumps(second)  # plain JSON types only


def test_five_seeds_is_the_default() -> None:
    assert ProbeConfig(models=["m"], train=Path("a.csv"), test=Path("b.csv")).seeds == 5
    parser = argparse.ArgumentParser()
    probe_cli.add_arguments(parser)
    arguments = parser.parse_args(["--models", "m", "--train", "a.csv", "--test", "b.csv"])
    assert arguments.seeds == 5


def _mlm_only_copy(bert_dir: Path, directory: Path) -> Path:
    """``bert_dir`` saved as BertForMaskedLM: the same encoder without a pooler (and without an NSP head)."""
    from transformers import BertForMaskedLM

    from bert_domain_ft.model.pretraining import quiet_transformers

    with quiet_transformers():
        BertForMaskedLM.from_pretrained(str(bert_dir)).save_pretrained(str(directory))
    for path in bert_dir.iterdir():
        if path.is_file() and not path.name.startswith(("model", "config")):
            shutil.copy2(path, directory / path.name)  # the tokenizer files
    return directory


def test_every_encoder_starts_from_the_same_classifier_head_for_a_seed(tiny_bert_dir: Path, tmp_path: Path) -> None:
    # Loading a checkpoint without a pooler draws the pooler first: without the per-name generators the
    # classification layer of the two models would differ.
    without_pooler = _mlm_only_copy(tiny_bert_dir, tmp_path / "mlm_only")
    heads = {}
    for name, directory in (("with", tiny_bert_dir), ("without", without_pooler)):
        for seed in (0, 1):
            torch.manual_seed(1234 + seed * 7 + len(name))  # whatever the global state, only the seed counts
            model = classifier_from_pretrained(str(directory))(3, seed)
            heads[name, seed] = (model.classifier.weight.detach().clone(), model.classifier.bias.detach().clone())
    for seed in (0, 1):
        assert torch.equal(heads["with", seed][0], heads["without", seed][0])
        assert torch.equal(heads["with", seed][1], heads["without", seed][1])
    assert not torch.equal(heads["with", 0][0], heads["with", 1][0])
    assert heads["with", 0][0].std().item() == pytest.approx(0.02, rel=0.3)  # BERT's initializer_range


def test_two_copies_of_a_model_get_identical_scores_seed_by_seed(
    tiny_bert_dir: Path,
    probe_files: tuple[Path, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    copy = shutil.copytree(tiny_bert_dir, tmp_path / "copy")
    base, same = run_probe(fast_config([str(tiny_bert_dir), str(copy)], probe_files, seeds=3, epochs=3))
    assert base.accuracies == same.accuracies and base.macro_f1s == same.macro_f1s
    assert same.paired_with(base).verdict == NO_DIFFERENCE and same.paired_with(base).mean == 0.0


def test_models_are_named_by_their_last_path_component_and_the_table_fits_100_columns() -> None:
    """Absolute paths of ~200 characters made the table ~200 columns wide; the default names are short."""
    deep = "/home/someone/projects/" + "a-very-long-directory-name/" * 6
    models = [deep + "base-model", deep + "runs/adapted/best", deep + "other/adapted/best"]
    assert short_model_names(models) == ["base-model", "runs/adapted/best", "other/adapted/best"]
    assert short_model_names(["org/name", "run/", "./run"]) == ["name", "run/", "./run"]  # one directory, twice
    assert short_model_names(["bert-base-uncased", "out/best", "."]) == ["bert-base-uncased", "best", "."]
    seeds = (0, 1, 2, 3, 4)
    results = [
        ProbeResult(model, seeds, (0.5, 0.52, 0.51, 0.49, 0.5), (0.4,) * 5, name=name)
        for model, name in zip(models, short_model_names(models))
    ]
    table = format_probe_table(results)
    assert deep not in table and max(len(line) for line in table.splitlines()) <= 100, table


def test_probe_names_label_the_models_one_each() -> None:
    from bert_domain_ft.cli import build_parser
    from bert_domain_ft.cli.flags import build_config, parse_with_config

    flags = ["probe", "--models", "/long/path/base", "/long/path/run", "--train", "a.csv", "--test", "b.csv"]
    config = build_config(ProbeConfig, parse_with_config(build_parser(), [*flags, "--names", "base", "adapted"]))
    assert config.names == ["base", "adapted"]
    with pytest.raises(ValueError, match="--names: 1 given for 2 models"):
        ProbeConfig(models=["a", "b"], train=Path("a.csv"), test=Path("b.csv"), names=["a"])
    with pytest.raises(ValueError, match="--names gives a name twice"):
        ProbeConfig(models=["a", "b"], train=Path("a.csv"), test=Path("b.csv"), names=["x", "x"])
