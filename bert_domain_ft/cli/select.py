"""``bert-domain-ft select``: keep the corpus documents nearest to a task's texts (kNN-TAPT), whole, in corpus order.

bert-domain-ft select --task_data train.csv --corpus corpus.txt --output selected.txt --tokens 2000000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bert_domain_ft.cli.common import config_from_arguments
from bert_domain_ft.corpus.config import METHODS, SelectConfig

HELP = "Keep the corpus documents nearest to your task's texts (each task text gets neighbours), up to a budget."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--task_data",
        type=Path,
        required=True,
        help="the task's texts: CSV/TSV/JSON lines with --text_column (labels are never read), or plain text "
        "(one text per line, or the corpus format)",
    )
    parser.add_argument("--text_column", default="text", help="column or JSON field holding the task's text")
    parser.add_argument(
        "--corpus", type=Path, required=True, help="domain corpus (one sentence per line, blank line between documents)"
    )
    parser.add_argument(
        "--output", type=Path, required=True, help="corpus file of the kept documents; OUTPUT.json records the choice"
    )
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--tokens", type=int, help="budget in whitespace-separated words of the kept documents")
    budget.add_argument("--fraction", type=float, help="budget as a share of the corpus's words, in (0, 1]")
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="bm25",
        help="bm25: lexical (Okapi BM25, no torch); embedding: cosine of --bert_model's mean-pooled hidden states",
    )
    parser.add_argument("--bert_model", default=None, help="model directory or hub id for --method embedding")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the (fixed, random) order in which task texts take turns"
    )
    parser.add_argument("--k1", type=float, default=1.2, help="BM25 term-frequency saturation")
    parser.add_argument("--b", type=float, default=0.75, help="BM25 document-length normalisation, in [0, 1]")
    parser.add_argument("--keep_stopwords", action="store_true", help="BM25: score common function words too (slower)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar (for logs)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")


def run(arguments: argparse.Namespace) -> int:
    from bert_domain_ft.corpus.selection import select_documents

    config = config_from_arguments(SelectConfig, arguments, show_progress=not arguments.no_progress)
    report = select_documents(config)
    if arguments.json:
        summary = {key: value for key, value in report.to_json().items() if key != "kept_document_indices"}
        print(json.dumps(summary, indent=2))
    else:
        print(report.format())
    return 0
