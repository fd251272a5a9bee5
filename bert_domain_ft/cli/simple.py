"""``bert-domain-ft simple`` and the classic ``simple-lm-finetuning`` script: corpus → adapted BERT in one command.

Accepts every flag of the original ``simple_lm_finetuning.py`` (``--num_train_epochs``, ``--max_seq_length``,
``--on_memory``, ``--do_train``…) plus finetune's training flags and ``--group_by_length``.

    bert-domain-ft simple --train_corpus corpus.txt --bert_model bert-base-uncased --output_dir out/ --on_memory
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from bert_domain_ft.cli.common import config_from_arguments, run_classic_script
from bert_domain_ft.cli.finetune import (
    add_hardware_arguments,
    add_model_selection_arguments,
    add_optimisation_arguments,
)
from bert_domain_ft.cli.pregenerate import add_task_arguments
from bert_domain_ft.errors import UserError
from bert_domain_ft.training.config import FinetuneConfig, SimpleConfig

HELP = "continue pretraining a BERT on a corpus in one command: sentence pairs and masks made on the fly"


def _add_data(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("corpus, model and pairs")
    group.add_argument(
        "--train_corpus", type=Path, required=True, help="corpus: one sentence per line, blank line between documents"
    )
    group.add_argument("--output_dir", type=Path, required=True, help="where the model, metrics and checkpoints go")
    group.add_argument("--bert_model", required=True, help="local model directory or hub id to start from")
    group.add_argument(
        "--do_lower_case",
        action="store_true",
        default=None,
        help="insist the tokenizer lower-cases (default: follow the tokenizer; a mismatch is an error)",
    )
    group.add_argument("--do_train", action="store_true", help="accepted for compatibility: training is what this does")
    group.add_argument(
        "--max_seq_length",
        "--max_seq_len",
        dest="max_seq_len",
        type=int,
        default=128,
        help="tokens per sentence pair at most, special tokens included (longer pairs are truncated)",
    )
    group.add_argument(
        "--on_memory",
        action="store_true",
        help="keep the tokenized corpus in RAM (default: on disk in output_dir, only its index in RAM)",
    )
    group.add_argument(
        "--group_by_length",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="batch pairs of similar length together, so short pairs carry little padding (~20x fewer padded "
        "tokens than fixed padding on prose); --no_group_by_length draws batches fully at random",
    )
    group.add_argument("--masked_lm_prob", type=float, default=0.15, help="fraction of each pair's tokens masked")
    group.add_argument("--max_predictions_per_seq", type=int, default=20, help="at most this many masked tokens")
    group.add_argument(
        "--do_whole_word_mask", action="store_true", help="mask all '##' pieces of a word together (WordPiece only)"
    )
    add_task_arguments(group)


def _add_run_control(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("epochs, checkpoints and logging")
    group.add_argument(
        "--num_train_epochs",
        type=float,
        default=None,
        help="the original script's name for --epochs, which it overrides (a whole number, e.g. 3.0)",
    )
    defaults = FinetuneConfig.__dataclass_fields__
    group.add_argument(
        "--save_steps",
        type=int,
        default=defaults["save_steps"].default,
        help="also checkpoint every this many steps (0: at the end of each epoch and of the run)",
    )
    group.add_argument(
        "--save_total_limit",
        type=int,
        default=defaults["save_total_limit"].default,
        help="keep only the newest this-many checkpoints (0: keep all)",
    )
    group.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output_dir")
    group.add_argument(
        "--overwrite_output_dir", action="store_true", help="delete the checkpoints and metrics of an earlier run"
    )
    group.add_argument(
        "--stop_after_steps",
        type=int,
        default=defaults["stop_after_steps"].default,
        help="stop with a checkpoint after this many steps (continue with --resume); 0 runs to the end",
    )
    group.add_argument(
        "--logging_steps",
        type=int,
        default=defaults["logging_steps"].default,
        help="write a metrics.jsonl record every this many steps",
    )
    group.add_argument("--no_progress", action="store_true", help="hide progress bars")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_data(parser)
    add_optimisation_arguments(parser)
    add_hardware_arguments(parser)
    _add_run_control(parser)
    add_model_selection_arguments(parser, held_out=False)


def _epochs(arguments: argparse.Namespace) -> int:
    """--epochs, or the original --num_train_epochs when given (it must be a whole number of epochs)."""
    if arguments.num_train_epochs is None:
        return int(arguments.epochs)
    value = float(arguments.num_train_epochs)
    if value != int(value) or value < 1:
        raise UserError(f"--num_train_epochs {value:g}: give a whole number of epochs (e.g. 3)")
    return int(value)


def config_from(arguments: argparse.Namespace) -> SimpleConfig:
    if arguments.save_best and arguments.probe_train is None:
        # finetune's other yardstick, the held-out MLM loss, needs pregenerated data with --holdout_fraction.
        raise UserError("--save_best: simple has no held-out set, so the best model is the best by a probe; "
                        "give --probe_train and --probe_test (labelled sentences, see `bert-domain-ft probe`)")  # fmt: skip
    training = config_from_arguments(
        FinetuneConfig,
        arguments,
        pregenerated_data=arguments.train_corpus,
        epochs=_epochs(arguments),
        do_eval=False,
        show_progress=not arguments.no_progress,
        cpu_kernels=not arguments.stock_kernels,
    )
    return config_from_arguments(SimpleConfig, arguments, training=training)


def run(arguments: argparse.Namespace) -> int:
    config = config_from(arguments)
    from bert_domain_ft.training.simple import (
        simple_finetune,  # imports torch: only once the flags are known to be fine
    )

    simple_finetune(config)
    return 0


def classic_main(argv: Sequence[str] | None = None) -> int:
    """The ``simple-lm-finetuning`` console script (the original script's name and flags)."""
    return run_classic_script("simple-lm-finetuning", HELP, add_arguments, run, argv)
