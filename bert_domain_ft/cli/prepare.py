"""``bert-domain-ft prepare``: raw text (files, directories, JSON lines) in, the corpus format out.

bert-domain-ft prepare raw_notes/ --output corpus.txt --doc_break paragraph
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bert_domain_ft.cli.common import config_from_arguments
from bert_domain_ft.corpus.config import DEFAULT_PUNKT_SAMPLE_BYTES, DOC_BREAKS, PrepareConfig

HELP = "Turn raw text into the corpus format: one sentence per line (Punkt), a blank line between documents."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_input_arguments(parser)
    _add_splitting_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar (for logs)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")


def _add_input_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT",
        help="plain-text files (one document each), directories (searched recursively with --glob), "
        "or JSON-lines files with --text_field",
    )
    parser.add_argument(
        "--output", type=Path, required=True, help="corpus file to write; Punkt parameters go to OUTPUT.punkt.json"
    )
    parser.add_argument(
        "--doc_break",
        choices=DOC_BREAKS,
        default="file",
        help="what makes a document: a file / JSON record, or each blank-line-separated paragraph",
    )
    parser.add_argument(
        "--glob", default=None, help="file pattern inside directories; None means *.txt, or *.jsonl with --text_field"
    )
    parser.add_argument(
        "--text_field", default=None, help="read the inputs as JSON lines and take the text from this field"
    )
    parser.add_argument(
        "--encoding", default="utf-8", help="encoding of the inputs, ASCII-compatible (the output is always UTF-8)"
    )


def _add_splitting_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--punkt",
        default="train",
        metavar="{train,pretrained,FILE.punkt.json}",
        help="sentence splitter: train Punkt on a sample of the input, use NLTK's installed punkt_tab model, "
        "or reuse parameters saved by an earlier run",
    )
    parser.add_argument("--punkt_language", default="english", help="model used by --punkt pretrained")
    parser.add_argument(
        "--punkt_sample_bytes",
        type=int,
        default=DEFAULT_PUNKT_SAMPLE_BYTES,
        help="bytes of text from the start of the input that Punkt trains on (it learns about 1 MB/s)",
    )
    parser.add_argument(
        "--min_sentence_chars", type=int, default=1, help="drop (and count) sentences shorter than this"
    )
    parser.add_argument(
        "--max_sentence_chars",
        type=int,
        default=1000,
        help="cut longer sentences at a safe point (after ; : , or at a space) instead of dropping them",
    )


def run(arguments: argparse.Namespace) -> int:
    from bert_domain_ft.corpus.prepare import prepare_corpus

    config = config_from_arguments(PrepareConfig, arguments, show_progress=not arguments.no_progress)
    report = prepare_corpus(config)
    print(json.dumps(report.to_json(), indent=2) if arguments.json else report.format())
    return 0
