"""``bert-domain-ft pregenerate`` and the classic ``pregenerate-training-data`` script (same flags as the
original lm_finetuning example, plus ours)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bert_domain_ft.cli.common import config_from_arguments, run_classic_script
from bert_domain_ft.errors import UserError

HELP = "Turn a corpus (one sentence per line, blank line between documents) into epochs of masked NSP instances."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--train_corpus",
        nargs="+",
        required=True,
        help="corpus file in the corpus format; or several named corpora NAME=FILE …; or a directory of train.NAME "
        "files (one corpus each)",
    )
    parser.add_argument(
        "--sampling_exponent",
        type=float,
        default=1.0,
        help="several corpora: corpus i is sampled ∝ (n_i/Σn)^α; 1 = proportional, 0 = uniform, XLM-R used 0.3",
    )
    parser.add_argument("--output_dir", type=Path, required=True, help="where manifest.json and epoch_XXX/ go")
    add_task_arguments(parser)
    parser.add_argument(
        "--bert_model", help="model directory or hub id whose tokenizer to use (the model you will train)"
    )
    parser.add_argument(
        "--tokenizer", help="tokenizer directory to use instead of the model's (e.g. from `bert-domain-ft tokenizer`)"
    )
    parser.add_argument(
        "--objective",
        choices=("auto", "nsp", "mlm"),
        default="auto",
        help="nsp: BERT sentence pairs with NSP labels; mlm: contiguous text packed full, no NSP; "
        "auto: nsp for BERT models, mlm for models without an NSP head (RoBERTa, DistilBERT, …)",
    )
    parser.add_argument(
        "--dynamic_masking",
        action="store_true",
        help="store unmasked text and let the trainer draw fresh masks every batch (RoBERTa-style)",
    )
    parser.add_argument(
        "--no_cross_document",
        action="store_true",
        help="with --objective mlm: never let a sequence continue into the next document",
    )
    parser.add_argument(
        "--do_lower_case",
        action="store_true",
        default=None,
        help="assert that the tokenizer lower-cases (an uncased model); by default follow the tokenizer",
    )
    parser.add_argument(
        "--do_whole_word_mask", action="store_true", help="mask all '##' pieces of a word together (WordPiece only)"
    )
    parser.add_argument(
        "--reduce_memory",
        action="store_true",
        help="keep the tokenized corpus on disk as memmaps: RAM stays flat however large the corpus",
    )
    parser.add_argument(
        "--num_workers", type=int, default=1, help="processes generating in parallel (output is the same for any value)"
    )
    parser.add_argument("--epochs_to_generate", type=int, default=3, help="epochs of data, each freshly paired/masked")
    parser.add_argument("--max_seq_len", type=int, default=128, help="tokens per instance, special tokens included")
    parser.add_argument(
        "--short_seq_prob", type=float, default=0.1, help="probability of aiming at a random shorter instance length"
    )
    parser.add_argument("--masked_lm_prob", type=float, default=0.15, help="fraction of each instance's tokens masked")
    parser.add_argument("--max_predictions_per_seq", type=int, default=20, help="at most this many masked tokens")
    parser.add_argument("--seed", type=int, default=42, help="seed of every random choice (same seed → same bytes)")
    parser.add_argument(
        "--holdout_fraction",
        type=float,
        default=0.0,
        help="fraction of documents set aside (by seed) for a held-out evaluation set, e.g. 0.05",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace what an earlier run left in --output_dir")
    parser.add_argument(
        "--resume", action="store_true", help="finish an interrupted run: keep its complete epochs, make the rest"
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bars (for logs)")


def add_task_arguments(parser: Any) -> None:
    """``--task_data``, ``--task_text_column``, ``--task_share`` on a parser or argument group (pregenerate, simple)."""
    parser.add_argument(
        "--task_data",
        type=Path,
        default=None,
        help="your task's texts (CSV/TSV/JSON lines/plain text; labels are never read) added as the corpus 'task' "
        "(task-adaptive pretraining); for TAPT alone use --task_share 1",
    )
    parser.add_argument("--task_text_column", default="text", help="CSV/TSV column or JSON key holding the task's text")
    parser.add_argument(
        "--task_share",
        type=float,
        default=0.5,
        help="fraction of each epoch's training instances drawn from the task text, in (0, 1]",
    )


def parse_corpora(values: list[str]) -> Path | dict[str, Path]:
    """``FILE``, ``NAME=FILE …`` or a directory of ``train.NAME`` files → a path or named paths."""
    if len(values) == 1 and "=" not in values[0]:
        path = Path(values[0])
        if not path.is_dir():
            return path
        named = {file.suffix.lstrip("."): file for file in sorted(path.glob("train.*")) if file.is_file()}
        if not named:
            raise UserError(f"{path}: a directory of corpora needs files named train.NAME (e.g. train.zul)")
        return named
    named = {}
    for value in values:
        name, separator, file = value.partition("=")
        if not separator or not name or not file:
            raise UserError(f"--train_corpus {value}: with several corpora give each as NAME=FILE")
        if name in named:
            raise UserError(f"--train_corpus: the name {name!r} is given twice")
        named[name] = Path(file)
    return named


def run(arguments: argparse.Namespace) -> int:
    from bert_domain_ft.data.pregenerate import PregenerateConfig, pregenerate

    config = config_from_arguments(
        PregenerateConfig,
        arguments,
        train_corpus=parse_corpora(arguments.train_corpus),
        show_progress=not arguments.no_progress,
    )
    manifest = pregenerate(config)
    epochs = manifest["epochs"]
    print(
        f"wrote {len(epochs)} epochs ({sum(e['num_instances'] for e in epochs)} instances) to {config.output_dir}"
        + (f", held-out set of {manifest['holdout']['num_instances']} instances" if manifest["holdout"] else "")
    )
    return 0


def classic_main(argv: list[str] | None = None) -> int:
    """Entry point of ``pregenerate-training-data``: the original example's flags work unchanged."""
    return run_classic_script("pregenerate-training-data", HELP, add_arguments, run, argv)
