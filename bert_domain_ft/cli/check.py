"""``bert-domain-ft check``: validate a corpus file; exit status 0 only when pregeneration will accept it.

bert-domain-ft check corpus.txt --bert_model bert-base-uncased --max_seq_len 128
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "Validate a corpus file and describe it; exit status 0 only if pregeneration will accept it."

EXIT_REJECTED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus", type=Path, help="corpus file (one sentence per line, blank line between documents)")
    parser.add_argument(
        "--bert_model",
        default=None,
        help="model directory or hub id whose tokenizer counts tokens and finds over-long sentences",
    )
    parser.add_argument(
        "--max_seq_len", type=int, default=128, help="tokens per instance planned for pregeneration (with specials)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar (for logs)")


def run(arguments: argparse.Namespace) -> int:
    from bert_domain_ft.corpus.check import check_corpus

    report = check_corpus(
        arguments.corpus, arguments.bert_model, arguments.max_seq_len, show_progress=not arguments.no_progress
    )
    print(json.dumps(report.to_json(), indent=2) if arguments.json else report.format())
    return 0 if report.accepted else EXIT_REJECTED
