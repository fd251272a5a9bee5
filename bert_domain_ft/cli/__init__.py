"""The ``bert-domain-ft`` command and the three classic scripts: each command's flags are the fields of its configs.

A command is a name, a line of help, the config dataclasses its flags come from (``flags.flags_of``) and the
function in ``commands`` that runs it. Every command also takes ``--config FILE`` and ``--print_config``.

    bert-domain-ft pregenerate --train_corpus data/sample_corpus.txt --bert_model MODEL --output_dir out/
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from bert_domain_ft.cli import commands
from bert_domain_ft.cli.commands import run_command, run_guarded
from bert_domain_ft.cli.flags import FlagParser, flags_of, parse_with_config, steps_or_auto
from bert_domain_ft.corpus.config import CheckConfig, PrepareConfig, SelectConfig, TokenizerTrainingConfig
from bert_domain_ft.data.config import PregenerateConfig
from bert_domain_ft.evaluation.config import EvaluateConfig, PlotConfig, ProbeConfig
from bert_domain_ft.training.config import FinetuneConfig, OriginalSimpleFlags, SimpleConfig

__all__ = ["build_parser", "main", "parse_with_config", "run_command", "run_guarded", "steps_or_auto"]


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    help: str
    configs: tuple[type, ...]  # the dataclasses whose fields are the flags
    run: Callable[[argparse.Namespace], int]
    config_from: Callable[[argparse.Namespace], Any] | None = None
    classic: str | None = None  # the name of the original lm_finetuning script it also runs as

    def flags(self) -> list[Any]:
        return [flag for config in self.configs for flag in flags_of(config)]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the command's flags to any parser (no ``--config``)."""
        from bert_domain_ft.cli.flags import add_flags

        add_flags(parser, self.flags())

    def classic_main(self, argv: Sequence[str] | None = None) -> int:
        """The console script named after an original ``lm_finetuning`` script: same flags, plus ``--config``."""
        parser = FlagParser(prog=self.classic, description=self.help, flags=self.flags())
        return run_command(parse_with_config(parser, argv), self.run)


PREPARE = Command(
    "prepare",
    "Turn raw text into the corpus format: one sentence per line (Punkt), a blank line between documents.",
    (PrepareConfig,),
    commands.run_prepare,
)
CHECK = Command(
    "check",
    "Validate a corpus file and describe it; exit status 0 only if pregeneration will accept it.",
    (CheckConfig,),
    commands.run_check,
)
PREGENERATE = Command(
    "pregenerate",
    "Turn a corpus (one sentence per line, blank line between documents) into epochs of masked NSP instances.",
    (PregenerateConfig,),
    commands.run_pregenerate,
    classic="pregenerate-training-data",
)
FINETUNE = Command(
    "finetune",
    "continue pretraining a model on pregenerated epochs (masked LM, + NSP for BERT), or pretrain one from scratch",
    (FinetuneConfig,),
    commands.run_finetune,
    commands.finetune_config,
    classic="finetune-on-pregenerated",
)
SIMPLE = Command(
    "simple",
    "continue pretraining a BERT on a corpus in one command: sentence pairs and masks made on the fly",
    (SimpleConfig, OriginalSimpleFlags),
    commands.run_simple,
    commands.simple_config,
    classic="simple-lm-finetuning",
)
EVALUATE = Command(
    "evaluate",
    "Evaluate a model on held-out data: masked-LM loss, perplexity, MLM accuracy, NSP accuracy.",
    (EvaluateConfig,),
    commands.run_evaluate,
)
PLOT = Command(
    "plot",
    "Plot a finetune run's metrics.jsonl (losses, held-out metrics, learning rate) into a PNG.",
    (PlotConfig,),
    commands.run_plot,
)
PROBE = Command(
    "probe",
    "Compare models on a downstream task: fine-tune a classifier from each (several seeds), print accuracy/F1.",
    (ProbeConfig,),
    commands.run_probe,
)
TOKENIZER = Command(
    "tokenizer",
    "Train a new tokenizer (WordPiece, byte-level BPE or Unigram) on a corpus; AutoTokenizer loads the result.",
    (TokenizerTrainingConfig,),
    commands.run_tokenizer,
)
SELECT = Command(
    "select",
    "Keep the corpus documents nearest to your task's texts (each task text gets neighbours), up to a budget.",
    (SelectConfig,),
    commands.run_select,
)
COMMANDS = {command.name: command for command in (PREPARE, CHECK, PREGENERATE, FINETUNE, SIMPLE, EVALUATE, PLOT, PROBE, TOKENIZER, SELECT)}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bert-domain-ft",
        description="Adapt a pretrained BERT to your domain by continuing its pretraining (masked LM + NSP).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=FlagParser)
    for command in COMMANDS.values():
        subparsers.add_parser(command.name, help=command.help, description=command.help, flags=command.flags())
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_with_config(build_parser(), argv)
    return run_command(arguments, COMMANDS[arguments.command].run)


def pregenerate_training_data(argv: Sequence[str] | None = None) -> int:
    """The ``pregenerate-training-data`` console script (the original example's flags work unchanged)."""
    return PREGENERATE.classic_main(argv)


def finetune_on_pregenerated(argv: Sequence[str] | None = None) -> int:
    """The ``finetune-on-pregenerated`` console script (the original script's name and flags)."""
    return FINETUNE.classic_main(argv)


def simple_lm_finetuning(argv: Sequence[str] | None = None) -> int:
    """The ``simple-lm-finetuning`` console script (the original script's name and flags)."""
    return SIMPLE.classic_main(argv)
