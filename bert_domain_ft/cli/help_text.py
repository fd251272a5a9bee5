"""How flags read to a person: the --help line made from a field's docstring, and which flag a mistyped name meant.

A flag's help is the first sentence of its field's docstring, its default in plain words (``shown_default``: no
``None``, no tuples, paths as text), and for a switch that turns a default behaviour off, a clause saying so. An
unknown flag gets a did-you-mean only when it is a spelling slip of a real one (``is_spelling_variant``): a word
more or less (head_, general_, probe_) is another flag with another meaning, never suggested.

    did_you_mean("--max_step", ["--max_steps", "--head_warmup_steps"])   # → "--max_steps"
"""

from __future__ import annotations

import argparse
import copy
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any


def _words(name: str) -> list[str]:
    """A flag's name as lower-case words: ``--Max-Steps`` → ["max", "steps"]."""
    return [word for word in re.split(r"[-_]+", name.split("=")[0].lower()) if word]


def _edits(first: str, second: str) -> int:
    """Optimal string alignment distance: letters inserted, deleted, replaced, or two neighbours swapped."""
    previous = list(range(len(second) + 1))  # the row of first[: i - 1]; ``before``, that of first[: i - 2]
    before: list[int] = []
    for i, a in enumerate(first, 1):
        current = [i] + [0] * len(second)
        for j, b in enumerate(second, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a != b))
            if i > 1 and j > 1 and a == second[j - 2] and first[i - 2] == b:
                current[j] = min(current[j], before[j - 2] + 1)
        before, previous = previous, current
    return previous[-1]


def is_spelling_variant(typed: str, name: str) -> bool:
    """Whether ``typed`` is ``name`` misspelt: the same letters but for case and separators (``--Max-Steps``,
    ``--maxsteps``), or as many words, each the same or one slip away (a letter added, dropped, replaced or two
    swapped) where both have three letters or more and one four ("do" is not a slip of "no"). A word more or less
    (head_, general_, probe_) makes another flag with another meaning, never a slip."""
    typed_words, words = _words(typed), _words(name)
    if "".join(typed_words) == "".join(words):
        return True
    return len(typed_words) == len(words) and all(
        a == b or min(len(a), len(b)) >= 3 and max(len(a), len(b)) >= 4 and _edits(a, b) <= 1
        for a, b in zip(typed_words, words)
    )


def did_you_mean(typed: str, names: Sequence[str], elsewhere: Collection[str] = ()) -> str | None:
    """The one of ``names`` that ``typed`` misspells (``is_spelling_variant``; the closest when several are), or
    None. Never a suggestion for a name in ``elsewhere`` (another command's flag: it has a meaning of its own)."""
    if typed.split("=")[0] in elsewhere:
        return None
    close = [name for name in names if is_spelling_variant(typed, name)]
    return min(close, key=lambda name: (_edits("_".join(_words(typed)), "_".join(_words(name))), name), default=None)


def shown_default(value: Any) -> str:
    """A default as --help shows it, in plain words: a list as its items ("none"), a path as its text, "" for
    None, "" and switches (no default to show)."""
    if value is None or isinstance(value, bool):
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(shown_default(item) for item in value)
    return str(value)


def help_line(doc: str, action: str | None, default: Any, dest: str) -> str:
    """The docstring's first sentence on one line, with the default; a switch that turns a default behaviour off
    says so after it (unless the sentence names the flag itself); argparse's ``%`` escaped."""
    text = " ".join(doc.replace("``", "").split())
    text = re.split(r"(?<!e\.g\.)(?<!i\.e\.)(?<=[.!?])\s+", text, maxsplit=1)[0]
    if action == "negated" and f"--{dest}" not in text:
        text = f"{text.rstrip('.')}; this flag turns that off."
    elif action is None and shown_default(default):
        text = f"{text} (default: {shown_default(default)})"
    return text.replace("%", "%%")


# A field's name in help text: lower-case words joined by "_", not part of a flag, a path or a file name.
_FIELD_NAME = re.compile(r"(?<![\w./-])[a-z][a-z0-9]*(?:_[a-z0-9]+)+(?![\w/-])")


def name_fields(text: str, names: Mapping[str, str]) -> str:
    """``text`` with each field name that ``names`` maps written as its flag (``holdout_data`` → ``--holdout_data``)."""
    return _FIELD_NAME.sub(lambda match: names.get(match.group(0), match.group(0)), text)


class HelpFormatter(argparse.HelpFormatter):
    """Lists each flag under its own name: the other names it also takes (``Flag.names[1:]``, the original scripts'
    and earlier versions') stay out of --help."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        hidden = getattr(action, "hidden_names", ())
        if hidden:
            action = copy.copy(action)
            action.option_strings = [name for name in action.option_strings if name not in hidden]
        return super()._format_action_invocation(action)
