"""What every command shares: turning known errors into one-line messages, logging set-up, config building.

raise SystemExit(run_guarded(lambda: pregenerate(config)))
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bert_domain_ft.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

ConfigT = TypeVar("ConfigT")


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def run_guarded(action: Callable[[], Any]) -> int:
    """Run ``action``; a ``UserError`` becomes ``error: <message>`` on stderr and exit status 2."""
    configure_logging()
    try:
        result = action()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return result if isinstance(result, int) else 0


def run_command(arguments: argparse.Namespace, run: Callable[[argparse.Namespace], Any]) -> int:
    """``run(arguments)`` under ``run_guarded``; after a successful run, a command with an ``output_dir`` gets its
    effective configuration saved there as ``effective_config.yaml`` (reusable with ``--config``)."""

    def action() -> int:
        result = run(arguments)
        status = result if isinstance(result, int) else 0
        output_dir = getattr(arguments, "output_dir", None)
        is_main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 writes, as during the run
        if status == 0 and is_main and output_dir is not None and Path(output_dir).is_dir():
            from bert_domain_ft.cli.config_files import effective_config, save_effective_config
            from bert_domain_ft.files import hold_output_lock

            try:  # under the output lock: a run started on this directory meanwhile keeps it to itself
                with hold_output_lock(Path(output_dir), "save effective_config.yaml"):
                    save_effective_config(Path(output_dir), effective_config(arguments))
            except UserError as error:  # the run's own output is complete: say so rather than fail it
                logging.getLogger(__name__).warning("effective configuration not saved: %s", error)
        return status

    return run_guarded(action)


def run_classic_script(
    prog: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], Any],
    argv: Sequence[str] | None,
) -> int:
    """A console script named after an original ``lm_finetuning`` script: its own parser (flags and ``--config``),
    then ``run_command``."""
    from bert_domain_ft.cli.config_files import parse_with_config

    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_arguments(parser)
    arguments = parse_with_config(parser, list(argv) if argv is not None else sys.argv[1:])
    return run_command(arguments, run)


def config_from_arguments(config_class: type[ConfigT], arguments: argparse.Namespace, **overrides: Any) -> ConfigT:
    """Build a stage config from the parsed flags whose names match its fields (flags that are None are left out).

    ``__post_init__`` validation errors (``ValueError``) become ``UserError`` so the user sees one line.
    """
    values = {
        field.name: getattr(arguments, field.name)
        for field in dataclasses.fields(config_class)  # type: ignore[arg-type]
        if getattr(arguments, field.name, None) is not None
    }
    values.update(overrides)
    try:
        return config_class(**values)
    except ValueError as error:
        raise UserError(str(error)) from None
