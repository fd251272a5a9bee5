"""``bert-domain-ft tokenizer``: train a WordPiece, byte-level BPE or Unigram tokenizer on a corpus.

bert-domain-ft tokenizer corpus.txt --output my_tokenizer --kind wordpiece --vocab_size 30522 --lowercase
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bert_domain_ft.cli.common import config_from_arguments
from bert_domain_ft.corpus.config import KINDS, TokenizerTrainingConfig

HELP = "Train a new tokenizer (WordPiece, byte-level BPE or Unigram) on a corpus; AutoTokenizer loads the result."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "corpus", type=Path, help="corpus file (one sentence per line, blank line between documents) to learn from"
    )
    parser.add_argument("--output", type=Path, required=True, help="directory to write the tokenizer to")
    parser.add_argument(
        "--kind",
        choices=KINDS,
        default="wordpiece",
        help="wordpiece: BERT ([CLS] [SEP], '##' pieces); bpe: RoBERTa (byte-level, <s> </s>); unigram: XLM-R",
    )
    parser.add_argument(
        "--vocab_size", type=int, default=30522, help="vocabulary entries, special tokens included (BERT: 30522)"
    )
    parser.add_argument(
        "--lowercase", action="store_true", help="wordpiece: lower-case and strip accents first (an uncased model)"
    )
    parser.add_argument(
        "--min_frequency", type=int, default=2, help="wordpiece/bpe: a merged piece must occur this often"
    )
    parser.add_argument(
        "--model_max_length", type=int, default=512, help="longest input of the model, recorded for truncation"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --output when it already holds files")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars (for logs)")


def run(arguments: argparse.Namespace) -> int:
    from bert_domain_ft.corpus.tokenizer_training import train_tokenizer

    config = config_from_arguments(TokenizerTrainingConfig, arguments, show_progress=not arguments.no_progress)
    directory = train_tokenizer(config)
    print(f"wrote a {config.kind} tokenizer to {directory}; use it with --tokenizer {directory}")
    return 0
