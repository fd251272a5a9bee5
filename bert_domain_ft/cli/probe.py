"""``bert-domain-ft probe``: fine-tune a classifier from each model on your labelled sentences and compare them.

bert-domain-ft probe --models bert-base-uncased finetuned_lm finetuned_lm/checkpoint-* --train train.csv --test test.csv
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from bert_domain_ft.cli.common import config_from_arguments
from bert_domain_ft.evaluation.config import ProbeConfig

HELP = "Compare models on a downstream task: fine-tune a classifier from each (several seeds), print accuracy/F1."

_DEFAULTS = {field.name: field.default for field in dataclasses.fields(ProbeConfig)}
DEFAULT_PLOT = Path("probe.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models",
        nargs="+",
        required=True,
        metavar="MODEL",
        help="model directories or hub ids, the reference (e.g. the base model) first; checkpoints count too",
    )
    parser.add_argument("--train", type=Path, required=True, help="labelled training sentences (CSV or JSON lines)")
    parser.add_argument("--test", type=Path, required=True, help="labelled test sentences, same classes")
    parser.add_argument("--text_column", default=_DEFAULTS["text_column"], help="column or key of the sentence")
    parser.add_argument("--label_column", default=_DEFAULTS["label_column"], help="column or key of the class")
    parser.add_argument(
        "--seeds",
        type=int,
        default=_DEFAULTS["seeds"],
        help="classifiers per model (seeds); 2+ give a paired 95%% interval vs the first model",
    )
    parser.add_argument("--seed", type=int, default=_DEFAULTS["seed"], help="first seed (then seed+1, …)")
    parser.add_argument("--epochs", type=int, default=_DEFAULTS["epochs"], help="passes over the training set")
    parser.add_argument("--batch_size", type=int, default=_DEFAULTS["batch_size"], help="sentences per step")
    parser.add_argument(
        "--learning_rate", type=float, default=_DEFAULTS["learning_rate"], help="peak AdamW rate of the classifier"
    )
    parser.add_argument("--max_seq_len", type=int, default=_DEFAULTS["max_seq_len"], help="tokens per sentence")
    parser.add_argument("--tokenizer", help="tokenizer for every model (default: each model's own)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as a JSON list")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT, metavar="FILE", help="bar chart (PNG) to write")
    parser.add_argument("--no_plot", action="store_true", help="do not draw the chart (no matplotlib needed)")
    parser.add_argument("--no_cuda", action="store_true", help="stay on the CPU even when a GPU is available")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars (for logs)")


def run(arguments: argparse.Namespace) -> int:
    from bert_domain_ft.evaluation.probe import run_probe
    from bert_domain_ft.evaluation.probe_report import format_probe_table

    config = config_from_arguments(
        ProbeConfig,
        arguments,
        json_output=arguments.json,
        plot_output=None if arguments.no_plot else arguments.plot,
        show_progress=not arguments.no_progress,
    )
    results = run_probe(config)
    print(format_probe_table(results))
    for path in (config.json_output, config.plot_output):
        if path is not None:
            print(f"wrote {path}")
    return 0
