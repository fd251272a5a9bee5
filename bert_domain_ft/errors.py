"""Errors a user can act on.

Every failure caused by input (a corpus line, a flag, a directory) is raised as ``UserError``: the CLI prints
its message on one line and exits with status 2, never a traceback. The value checks every stage's config shares
(``check_seed``, ``check_not_empty``) raise ``ValueError``, which the CLI turns into a ``UserError`` alike.

    raise UserError("corpus.txt:12: line is not valid UTF-8; re-encode the file as UTF-8 (e.g. iconv -t UTF-8)")
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A problem with the user's input or set-up, with a message that says how to fix it."""


def at_location(path: str | Path, line_number: int | None, problem: str) -> str:
    """Format ``file:line: problem`` (or ``file: problem`` when there is no line)."""
    if line_number is None:
        return f"{path}: {problem}"
    return f"{path}:{line_number}: {problem}"


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name when it has none): a library's error in one line."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# Seeds go to numpy (``default_rng``, the legacy ``RandomState`` takes 0 ≤ seed < 2**32), torch and ``random``:
# the range all of them take.
SEED_LIMIT = 2**32


def check_seed(seed: int, flag: str = "--seed") -> None:
    """A ``ValueError`` (the configs' way to refuse a value) unless ``seed`` is a whole number in [0, 2**32)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{flag} must be a whole number from 0 to {SEED_LIMIT - 1:,}, got {seed!r}")


def check_not_empty(flag: str, *values: object) -> None:
    """A ``ValueError`` when a given (not None) model name, path or column is empty or blank: an unset shell
    variable (``--bert_model "$MODEL"``) must not quietly mean the current directory."""
    if any(value is not None and not str(value).strip() for value in values):
        raise ValueError(f"{flag} is empty; give a name or path (is a shell variable unset?)")
