"""Errors a user can act on.

Every failure caused by input (a corpus line, a flag, a directory) is raised as ``UserError``: the CLI prints
its message on one line and exits with status 2, never a traceback.

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
