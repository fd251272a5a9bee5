"""The starting model is a candidate for best/: a checkpoint must beat it on the probe beyond the seeds' noise.

The probe's scores are made up per step (``Prober.probe`` replaced) so each test says exactly which model should
win; the real probe on every checkpoint is covered by test_model_selection.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_assets import small_probe_files
from training_helpers import load_weights, make_pregenerated, quick_config, read_metrics

from bert_domain_ft.evaluation.plots import read_run_metrics
from bert_domain_ft.evaluation.probe import Prober, ProbeResult
from bert_domain_ft.training.checkpoints import checkpoint_directories
from bert_domain_ft.training.recipe import finetune
from bert_domain_ft.training.selection import BEST_DIRECTORY, BEST_INFO_FILE

BASE_SCORES = (0.70, 0.74, 0.69)  # the starting model's accuracy for seeds 42, 43, 44


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, tiny_bert_dir: Path) -> Path:
    directory = tmp_path_factory.mktemp("data") / "pregenerated"
    return make_pregenerated(tiny_corpus, tiny_bert_dir, directory, epochs=1)


def fake_probe(monkeypatch: pytest.MonkeyPatch, scores: Callable[[int], Sequence[float]]) -> list[int]:
    """Replace the probe's training by ``scores(step)`` (accuracy per seed); returns the steps probed, in order."""
    probed: list[int] = []

    def probe(self: Prober, model: str, name: str = "", make_classifier: Any = None) -> ProbeResult:
        step = int(name.removeprefix("step "))
        probed.append(step)
        assert Path(model, "config.json").is_file()  # a whole model directory, the starting model's too
        accuracies = tuple(scores(step))
        return ProbeResult(str(model), tuple(self.config.seed_list), accuracies, accuracies, name=name)

    monkeypatch.setattr(Prober, "probe", probe)
    return probed


def run(data_dir: Path, model: Path, output: Path, **options: Any) -> None:
    train, test = small_probe_files(output.parent)
    probe = {"probe_train": train, "probe_test": test, "probe_seeds": 3, "save_best": True, "do_eval": False}
    finetune(quick_config(data_dir, model, output, save_steps=2, **probe, **options))


def test_no_checkpoint_beyond_the_noise_leaves_the_starting_model_in_best(
    data_dir: Path, tiny_encoder_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    # Every checkpoint: −1 / +4 / 0 points per seed: mean +1, stdev 2.65, half width 4.303 · 2.65 / √3 = 6.57.
    probed = fake_probe(monkeypatch, lambda step: BASE_SCORES if step == 0 else (0.69, 0.78, 0.69))
    output = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="bert_domain_ft"):
        run(data_dir, tiny_encoder_dir, output, head_warmup_steps=2)
    checkpoints = [step for step, _ in checkpoint_directories(output)]
    assert probed == [0, *checkpoints] and len(checkpoints) >= 2
    records = read_metrics(output)
    probes = [r for r in records if r.get("kind") == "probe"]
    start = probes[0]
    # Step 0 is logged like every other probe, after the head warm-up, naming the model the run started from.
    assert start["step"] == 0 and start["model"] == str(tiny_encoder_dir)
    assert start["accuracy_per_seed"] == list(BASE_SCORES) and start["seeds"] == [42, 43, 44]
    assert set(start) == set(probes[1]) - {"paired_vs_start"}
    assert records.index(start) > max(i for i, r in enumerate(records) if r.get("kind") == "head_warmup")
    assert probes[1]["paired_vs_start"]["verdict"] == "no measurable difference"
    assert [r["step"] for r in read_run_metrics(output).probes] == [0, *checkpoints]
    # best/ holds the starting model: a whole model directory, its encoder exactly as loaded.
    assert (output / BEST_DIRECTORY / BEST_INFO_FILE).is_file()
    info = (output / BEST_DIRECTORY / BEST_INFO_FILE).read_text()
    assert '"step": 0' in info and '"metric": "probe_accuracy"' in info
    from transformers import AutoModelForPreTraining, AutoTokenizer

    AutoModelForPreTraining.from_pretrained(str(output / BEST_DIRECTORY))
    AutoTokenizer.from_pretrained(str(output / BEST_DIRECTORY))
    best, loaded = load_weights(output / BEST_DIRECTORY), load_weights(tiny_encoder_dir)
    encoder = [name for name in loaded if name.startswith(("embeddings.", "encoder."))]
    assert encoder and all(torch.equal(best["bert." + name], loaded[name]) for name in encoder)
    assert not list(output.glob("*.partial")) and not list(output.glob(".*.partial"))
    lines = [r.getMessage() for r in caplog.records if "starting model on the probe" in r.getMessage()]
    assert lines == [
        "no checkpoint beat the starting model on the probe beyond the seeds' noise "
        f"(best: step {checkpoints[0]}, +1.00 pts [-5.57, +7.57]); best/ holds the starting model"
    ]


def test_a_checkpoint_clearly_better_than_the_start_becomes_best(
    data_dir: Path, tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    def scores(step: int) -> Sequence[float]:
        if step == 0:
            return BASE_SCORES
        if step == 2:  # +10 points on every seed (±1): better beyond the noise
            return (0.80, 0.85, 0.79)
        return (0.99, 0.74, 0.69)  # a higher mean (+9.7 points) but all from one seed: not beyond the noise

    fake_probe(monkeypatch, scores)
    output = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="bert_domain_ft"):
        run(data_dir, tiny_bert_dir, output)
    info = (output / BEST_DIRECTORY / BEST_INFO_FILE).read_text()
    assert '"step": 2' in info
    bests = [r["step"] for r in read_metrics(output) if r.get("kind") == "best"]
    assert bests == [0, 2]  # the start first, then the one checkpoint that beat it
    assert any(r.getMessage().startswith("best/ holds the checkpoint of step 2: +10.33 pts") for r in caplog.records)


def test_a_resumed_run_compares_with_the_step_0_probe_it_logged_before(
    data_dir: Path, tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probed = fake_probe(monkeypatch, lambda step: BASE_SCORES if step < 4 else (0.80, 0.85, 0.79))
    output = tmp_path / "run"
    run(data_dir, tiny_bert_dir, output, stop_after_steps=2)
    run(data_dir, tiny_bert_dir, output, resume=True)
    assert probed.count(0) == 1  # the starting model is not probed again
    probes = [r for r in read_metrics(output) if r.get("kind") == "probe"]
    assert [r["step"] for r in probes].count(0) == 1
    assert all(r["paired_vs_start"]["verdict"] == "better" for r in probes if r["step"] >= 4)
    assert '"step": 4' in (output / BEST_DIRECTORY / BEST_INFO_FILE).read_text()
