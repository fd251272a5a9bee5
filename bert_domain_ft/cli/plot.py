"""``bert-domain-ft plot RUN_DIR``: draw a finetune run's losses, accuracies and learning rate into a PNG.

bert-domain-ft plot finetuned_lm            # -> finetuned_lm/training_curves.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Plot a finetune run's metrics.jsonl (losses, held-out metrics, learning rate) into a PNG."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="finetune --output_dir holding metrics.jsonl")
    parser.add_argument("--output", type=Path, help="PNG to write (default: RUN_DIR/training_curves.png)")


def run(arguments: argparse.Namespace) -> int:
    from bert_domain_ft.evaluation.plots import plot_run

    print(f"wrote {plot_run(arguments.run_dir, arguments.output)}")
    return 0
