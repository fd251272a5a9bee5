"""The ``bert-domain-ft`` command: maps each sub-command to the module that parses its flags.

A command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(arguments)``; it only parses,
builds the stage's config and calls one library function. Modules are imported lazily so ``--help`` and the data
stages start without importing torch.

    bert-domain-ft pregenerate --train_corpus data/sample_corpus.txt --bert_model MODEL --output_dir out/
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from bert_domain_ft.cli.common import run_command
from bert_domain_ft.cli.config_files import add_config_arguments, parse_with_config

COMMANDS = {
    "prepare": "bert_domain_ft.cli.prepare",
    "check": "bert_domain_ft.cli.check",
    "pregenerate": "bert_domain_ft.cli.pregenerate",
    "finetune": "bert_domain_ft.cli.finetune",
    "simple": "bert_domain_ft.cli.simple",
    "evaluate": "bert_domain_ft.cli.evaluate",
    "plot": "bert_domain_ft.cli.plot",
    "probe": "bert_domain_ft.cli.probe",
    "tokenizer": "bert_domain_ft.cli.tokenizer",
    "select": "bert_domain_ft.cli.select",
}


def _available_commands() -> dict[str, object]:
    modules = {}
    for name, module_path in COMMANDS.items():
        try:
            modules[name] = importlib.import_module(module_path)
        except ModuleNotFoundError as error:
            if error.name != module_path:
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bert-domain-ft",
        description="Adapt a pretrained BERT to your domain by continuing its pretraining (masked LM + NSP).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in _available_commands().items():
        sub = subparsers.add_parser(
            name,
            help=module.HELP,  # type: ignore[attr-defined]
            description=module.HELP,  # type: ignore[attr-defined]
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(sub)  # type: ignore[attr-defined]
        add_config_arguments(sub)
        sub.set_defaults(_run=module.run)  # type: ignore[attr-defined]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_with_config(build_parser(), argv if argv is not None else sys.argv[1:])
    return run_command(arguments, arguments._run)
