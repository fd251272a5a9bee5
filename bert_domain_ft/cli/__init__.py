"""The ``bert-domain-ft`` command and the three classic scripts: each command's flags are the fields of its configs.

A command is a name, the config dataclasses its flags come from (``flags.flags_of``) and the function in
``commands`` that runs it. Every command also takes ``--config FILE`` and ``--print_config``.

    bert-domain-ft pregenerate --train_corpus data/sample_corpus.txt --bert_model MODEL --output_dir out/
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any

from bert_domain_ft.cli import commands
from bert_domain_ft.cli.commands import run_command, run_guarded
from bert_domain_ft.cli.flags import (
    Flag,
    FlagParser,
    OtherFlags,
    add_flags,
    flags_of,
    naming_flags,
    parse_with_config,
    steps_or_auto,
)
from bert_domain_ft.corpus.config import (
    CheckConfig,
    PrepareConfig,
    SelectConfig,
    TokenizerTrainingConfig,
    VocabAnalyseConfig,
    VocabExtendConfig,
)
from bert_domain_ft.data.config import PregenerateConfig
from bert_domain_ft.evaluation.config import EvaluateConfig, FillMaskConfig, PlotConfig, ProbeConfig
from bert_domain_ft.training.config import FinetuneConfig, OriginalSimpleFlags, OriginalTrainingFlags, SimpleConfig

__all__ = ["build_parser", "main", "parse_with_config", "run_command", "run_guarded", "steps_or_auto"]


@dataclasses.dataclass(frozen=True)
class Command:
    """A command: its name, the config dataclasses whose fields are its flags, and its run function (whose
    docstring is its help line); ``classic`` names the original ``lm_finetuning`` script it also runs as."""

    name: str
    configs: tuple[type, ...]
    run: Callable[[argparse.Namespace], int]
    config_from: Callable[[argparse.Namespace], Any] | None = None
    classic: str | None = None

    @property
    def help(self) -> str:
        return (self.run.__doc__ or self.name).strip()

    def flags(self) -> list[Flag]:
        return naming_flags([flag for config in self.configs for flag in flags_of(config)])

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the command's flags to any parser (without ``--config``)."""
        add_flags(parser, self.flags())

    def classic_parser(self) -> FlagParser:
        """The parser of the console script named after an original ``lm_finetuning`` script."""
        return FlagParser(prog=self.classic, description=self.help, flags=self.flags(), elsewhere=other_flags())

    def classic_main(self, argv: Sequence[str] | None = None) -> int:
        """Run as the console script named after an original ``lm_finetuning`` script: same flags, and ``--config``."""
        printable_output()
        return run_command(parse_with_config(self.classic_parser(), argv), self.run)


PREPARE = Command("prepare", (PrepareConfig,), commands.run_prepare)
CHECK = Command("check", (CheckConfig,), commands.run_check)
PREGENERATE = Command("pregenerate", (PregenerateConfig,), commands.run_pregenerate, None, "pregenerate-training-data")
FINETUNE = Command(
    "finetune",
    (FinetuneConfig, OriginalTrainingFlags),
    commands.run_finetune,
    commands.finetune_config,
    "finetune-on-pregenerated",
)
SIMPLE = Command(
    "simple",
    (SimpleConfig, OriginalSimpleFlags, OriginalTrainingFlags),
    commands.run_simple,
    commands.simple_config,
    "simple-lm-finetuning",
)
EVALUATE = Command("evaluate", (EvaluateConfig,), commands.run_evaluate)
PLOT = Command("plot", (PlotConfig,), commands.run_plot)
PROBE = Command("probe", (ProbeConfig,), commands.run_probe)
TOKENIZER = Command("tokenizer", (TokenizerTrainingConfig,), commands.run_tokenizer)
SELECT = Command("select", (SelectConfig,), commands.run_select)
FILL_MASK = Command("fill-mask", (FillMaskConfig,), commands.run_fill_mask)
COMMANDS = {
    c.name: c
    for c in (PREPARE, CHECK, PREGENERATE, FINETUNE, SIMPLE, EVALUATE, PLOT, PROBE, FILL_MASK, TOKENIZER, SELECT)
}


@dataclasses.dataclass(frozen=True)
class CommandGroup:
    """A command made of subcommands (``bert-domain-ft vocab analyse``); the chosen one is in the namespace
    attribute ``<name>_command``."""

    name: str
    help: str
    commands: dict[str, Command]

    def parser(self, **kwargs: Any) -> argparse.ArgumentParser:
        """Its parser: routes to one ``FlagParser`` per subcommand (a group takes no flags of its own)."""
        parser = argparse.ArgumentParser(allow_abbrev=False, **kwargs)
        choices = "{" + ",".join(self.commands) + "}"  # named in the error when none is given
        nested = parser.add_subparsers(dest=f"{self.name}_command", metavar=choices, required=True,
                                       parser_class=FlagParser)  # fmt: skip
        for command in self.commands.values():
            nested.add_parser(command.name, help=command.help, description=command.help, flags=command.flags(),
                              elsewhere=other_flags())  # fmt: skip
        return parser


VOCAB = CommandGroup(
    "vocab",
    "The domain's vocabulary: how the tokenizer splits its words (analyse), tokens of their own for the costliest "
    "(extend).",
    {
        "analyse": Command("analyse", (VocabAnalyseConfig,), commands.run_vocab_analyse),
        "extend": Command("extend", (VocabExtendConfig,), commands.run_vocab_extend),
    },
)
GROUPS = {group.name: group for group in (VOCAB,)}


@functools.cache
def other_flags() -> OtherFlags:
    """Every name a flag answers to (aliases included) → the commands that take it (e.g. "--epochs" → finetune,
    probe, simple) and → the flag's other names: a flag typed to a command that lacks it is named as another
    command's, or as this command's name for it, never answered with a look-alike (``FlagParser.unknown_hint``)."""
    commands = [(command.name, command) for command in COMMANDS.values()]
    commands += [(f"{group.name} {name}", sub) for group in GROUPS.values() for name, sub in group.commands.items()]
    owners: dict[str, set[str]] = {}
    synonyms: dict[str, set[str]] = {}
    for words, command in commands:
        for flag in command.flags():
            for name in flag.names:
                owners.setdefault(name, set()).add(words)
                synonyms.setdefault(name, set()).update(set(flag.names) - {name})
    return OtherFlags(
        {name: tuple(sorted(words)) for name, words in owners.items()},
        {name: frozenset(others) for name, others in synonyms.items() if others},
    )


def _command_parser(*, group: CommandGroup | None = None, **kwargs: Any) -> argparse.ArgumentParser:
    """The parser of a top-level command: a ``FlagParser`` of its flags, or a group's router."""
    return FlagParser(elsewhere=other_flags(), **kwargs) if group is None else group.parser(**kwargs)


def chosen_command(arguments: argparse.Namespace) -> Command:
    """The command (or a group's subcommand) that ``arguments`` were parsed for."""
    group = GROUPS.get(arguments.command)
    return COMMANDS[arguments.command] if group is None else group.commands[getattr(arguments, f"{group.name}_command")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="bert-domain-ft",
        description="Adapt a pretrained BERT to your domain by continuing its pretraining (masked LM + NSP).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_command_parser)
    for command in COMMANDS.values():
        subparsers.add_parser(command.name, help=command.help, description=command.help, flags=command.flags())
    for group in GROUPS.values():
        subparsers.add_parser(group.name, help=group.help, description=group.help, group=group)
    return parser


def printable_output() -> None:
    """Characters the terminal's encoding lacks (a latin-1 or ASCII locale, ``PYTHONIOENCODING``) are printed as
    ``\\u2192`` escapes instead of ending the run with a ``UnicodeEncodeError`` after its work is done."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    printable_output()
    arguments = parse_with_config(build_parser(), argv)
    return run_command(arguments, chosen_command(arguments).run)


# The console scripts named after the original lm_finetuning scripts (see setup.cfg).
pregenerate_training_data = PREGENERATE.classic_main
finetune_on_pregenerated = FINETUNE.classic_main
simple_lm_finetuning = SIMPLE.classic_main
