"""``bert-domain-ft evaluate``: held-out masked-LM loss, perplexity, MLM accuracy (and NSP accuracy) of a model,
per corpus too when the data comes from several.

bert-domain-ft evaluate --model finetuned_lm --data pregenerated/ --json results.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bert_domain_ft.cli.common import config_from_arguments

HELP = "Evaluate a model on held-out data: masked-LM loss, perplexity, MLM accuracy, NSP accuracy."

STDOUT = "-"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="directory of the model to evaluate (e.g. finetune's output)")
    parser.add_argument("--tokenizer", help="tokenizer directory the data was made with, if not the model's own")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data", type=Path, help="pregenerated directory: its held-out set (--holdout_fraction) is evaluated"
    )
    source.add_argument(
        "--corpus", type=Path, help="corpus file, pregenerated on the fly with a fixed seed and evaluated whole"
    )
    parser.add_argument("--epoch", type=int, help="with --data: evaluate training epoch N (0-based) instead")
    parser.add_argument("--batch_size", type=int, default=64, help="instances per forward pass (memory and speed only)")
    parser.add_argument("--max_seq_len", type=int, default=128, help="with --corpus: tokens per instance")
    parser.add_argument("--max_instances", type=int, help="evaluate only the first N instances (always the same)")
    parser.add_argument("--json", metavar="FILE", help=f"also write the results as JSON to FILE ('{STDOUT}': stdout)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (fast on recent CPUs and GPUs)")
    parser.add_argument("--no_cuda", action="store_true", help="stay on the CPU even when a GPU is available")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars (for logs)")


def run(arguments: argparse.Namespace) -> int:
    from bert_domain_ft.evaluation.config import EvaluateConfig
    from bert_domain_ft.evaluation.evaluate import evaluate_model
    from bert_domain_ft.evaluation.heldout import format_result_table

    to_stdout = arguments.json == STDOUT
    json_output = Path(arguments.json) if arguments.json and not to_stdout else None
    config = config_from_arguments(
        EvaluateConfig, arguments, json_output=json_output, show_progress=not arguments.no_progress
    )
    result = evaluate_model(config)
    if to_stdout:
        print(json.dumps(result.to_json(), indent=2))
    else:
        title = "held-out set" if config.epoch is None and config.data is not None else "evaluation set"
        print(format_result_table(result, title=title))
        if json_output is not None:
            print(f"wrote {json_output}")
    return 0
