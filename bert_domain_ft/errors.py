"""Errors a user can act on.

Every failure caused by input (a corpus line, a flag, a directory) is raised as ``UserError``: the CLI prints
its message on one line and exits with status 2, never a traceback. A message never shows a secret:
``redact_secrets`` takes out the credentials of URLs and the values of secret-looking environment variables;
``first_line``, the one way a library's error becomes part of a message, applies it. The value checks every stage's
config shares (``check_seed``, ``check_not_empty``, ``check_finite``) raise ``ValueError``, which the CLI turns into
a ``UserError`` alike.

    raise UserError("corpus.txt:12: line is not valid UTF-8; re-encode the file as UTF-8 (e.g. iconv -t UTF-8)")
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any

REDACTED = "***"
# The user-info part of a URL (``scheme://user:password@``): the last "@" before the path, so a password holding
# an unescaped "@" goes too. A token is often the user name alone (``https://TOKEN@host``), so all of it goes.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s'\"<>]*@")
# A query or settings parameter that holds a secret: ``?token=…``, ``api_key=…``, ``password=…``, ``AccountKey=…``.
_SECRET_PARAMETER = re.compile(
    r"(?i)(?P<name>\b\w*(?:token|secret|password|passwd|pwd|key|credentials?|signature|auth)=)[^&\s'\"<>;,)]+"
)
# An environment variable holding a secret, by a whole word of its name: WANDB_API_KEY, HF_TOKEN,
# MLFLOW_TRACKING_PASSWORD, AWS_SECRET_ACCESS_KEY (not PWD, the current directory, nor TOKENIZERS_PARALLELISM).
_SECRET_VARIABLE = re.compile(r"(?i)(?:^|_)(?:token|secret|password|passwd|key|credentials?)(?:_|$)")
_SHORTEST_SECRET = 6  # shorter values ("1", "true") would blank out ordinary words


class UserError(Exception):
    """A problem with the user's input or set-up, with a message that says how to fix it."""


def at_location(path: str | Path, line_number: int | None, problem: str) -> str:
    """Format ``file:line: problem`` (or ``file: problem`` when there is no line)."""
    if line_number is None:
        return f"{path}: {problem}"
    return f"{path}:{line_number}: {problem}"


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name when it has none), secrets redacted: a library's error
    in one line."""
    return redact_secrets((str(error).strip().splitlines() or [type(error).__name__])[0])


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


def redact_secrets(text: str) -> str:
    """``text`` without credentials: a URL's user-info becomes ``***`` (``http://***@host/``), as does the value of
    a secret-named parameter (``?token=***``) and of every secret-named environment variable (``WANDB_API_KEY``,
    ``HF_TOKEN``, ``MLFLOW_TRACKING_PASSWORD``…) wherever it appears. Libraries put the URL they were given,
    password included, into their errors; every message that carries such text passes through here."""
    text = _URL_CREDENTIALS.sub(rf"\g<scheme>{REDACTED}@", text)
    text = _SECRET_PARAMETER.sub(rf"\g<name>{REDACTED}", text)
    for name, value in os.environ.items():
        if len(value) >= _SHORTEST_SECRET and _SECRET_VARIABLE.search(name) and value in text:
            text = text.replace(value, REDACTED)
    return text


def check_finite(config: Any, *names: str) -> None:
    """A ``ValueError`` for a NaN or infinite value of the float fields ``names`` of the dataclass ``config``, naming
    the flag and its default: NaN passes every range check (``NaN < 0`` is False) and shows only steps later."""
    defaults = {item.name: item.default for item in dataclasses.fields(config)}
    for name in names:
        value = getattr(config, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(
                f"--{name} {value}: not a finite number; give a number such as {defaults[name]} (the default)"
            )
