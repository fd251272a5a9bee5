"""Config files for every command: ``--config run.yaml`` (or ``.json``) supplies flag values; command-line flags win.

Keys are the flags' names without dashes (the argparse ``dest``: ``train_corpus``, ``max_seq_len``, a positional's
name). Values are converted with the flag's own ``type`` and checked against its ``choices`` exactly as argparse
treats text, so a file and a command line cannot mean different things; a file can also supply required flags.
``--print_config`` prints the effective configuration (file + flags + defaults) as YAML and exits; that output is
itself a valid config file. Works at the parser level, so every command gets it with no per-command code:

    arguments = parse_with_config(parser, sys.argv[1:])
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bert_domain_ft.errors import UserError, at_location
from bert_domain_ft.files import write_text_atomic

EFFECTIVE_CONFIG_NAME = "effective_config.yaml"
EXIT_USER_ERROR = 2
_CONFIG_DESTS = ("config", "print_config")
_NOT_SETTINGS = {"help", "version", "command", *_CONFIG_DESTS}  # namespace entries that are not a run's settings
_TRUE_WORDS = {"true", "yes", "on", "1"}
_FALSE_WORDS = {"false", "no", "off", "0"}
_UNSET = object()  # marks, while detecting what the command line gave, a value no flag has set


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and ``--print_config`` to ``parser`` (once; calling again does nothing)."""
    if "--config" in parser._option_string_actions:
        return
    group = parser.add_argument_group("configuration file")
    group.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="YAML or JSON file of flag values (keys are the flag names without --); flags given here win",
    )
    group.add_argument("--print_config", action="store_true", help="print the effective configuration as YAML and exit")


def _import_yaml() -> Any:
    try:
        import yaml
    except ImportError:
        return None
    return yaml


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(at_location(path, error.lineno, f"not valid JSON ({error.msg}); fix the file")) from None


def _parse_yaml(path: Path, text: str, yaml: Any) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or "syntax error"
        line = mark.line + 1 if mark is not None else None
        raise UserError(at_location(path, line, f"not valid YAML ({problem}); fix the file")) from None


def load_config_file(path: Path) -> dict[str, Any]:
    """The mapping of flag names to values in ``path`` (JSON for ``.json``, YAML otherwise; JSON is valid YAML)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(at_location(path, None, "config file not found; check the --config path"))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(at_location(path, None, "config file is not UTF-8 text; save it as UTF-8")) from None
    if path.suffix.lower() == ".json":
        values = _parse_json(path, text)
    else:
        yaml = _import_yaml()
        if yaml is not None:
            values = _parse_yaml(path, text, yaml)
        else:
            try:  # a YAML-named file holding JSON still works without PyYAML
                values = json.loads(text)
            except json.JSONDecodeError:
                raise UserError(
                    at_location(
                        path,
                        None,
                        "reading YAML needs PyYAML: pip install pyyaml (or pip install 'bert_domain_ft[config]'), "
                        "or write the file as JSON",
                    )
                ) from None
    if values is None:  # an empty file
        return {}
    if not isinstance(values, dict) or not all(isinstance(key, str) for key in values):
        raise UserError(at_location(path, None, "must hold a mapping of flag names to values, e.g. 'max_seq_len: 128'"))
    return values


def _settings(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Flag name (dest) → its action, for every flag a config file may set."""
    settings: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if action.dest in (argparse.SUPPRESS, None) or action.dest in _NOT_SETTINGS:
            continue
        if isinstance(action, (argparse._SubParsersAction, argparse._HelpAction, argparse._VersionAction)):
            continue
        settings.setdefault(action.dest, action)
    return settings


def _unknown_key(path: Path, key: str, valid: Sequence[str]) -> UserError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(sorted(valid))}"
    return UserError(f"{path}: unknown key '{key}'; {hint}")


def _as_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (str, int)) and str(value).strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
        return str(value).strip().lower() in _TRUE_WORDS
    raise UserError(f"{where}: expected true or false, got {value!r}")


def _convert_one(action: argparse.Action, value: Any, where: str) -> Any:
    if isinstance(value, (list, dict)):
        raise UserError(f"{where}: expected a single value, got {type(value).__name__} {value!r}")
    text = str(value).lower() if isinstance(value, bool) else str(value)
    convert = action.type if callable(action.type) else str
    try:
        result = convert(text)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
        kind = getattr(action.type, "__name__", "value")
        detail = f" ({error})" if isinstance(error, argparse.ArgumentTypeError) else ""
        raise UserError(f"{where}: {value!r} is not a valid {kind}{detail}") from None
    if action.choices is not None and result not in action.choices:
        choices = ", ".join(str(choice) for choice in action.choices)
        raise UserError(f"{where}: {value!r} is not one of {choices}")
    return result


def convert_value(action: argparse.Action, value: Any, where: str) -> Any:
    """``value`` from a config file as argparse would have produced it from the command line for ``action``."""
    if isinstance(action, argparse._CountAction):
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected a whole number, got {value!r}")
        return value
    if action.nargs == 0:  # store_true / store_false / store_const: a switch
        switch = _as_bool(value, where)
        if isinstance(action.const, bool) or isinstance(action, argparse.BooleanOptionalAction):
            return switch  # the key is the dest, so its value is the dest's value (also for store_false)
        return action.const if switch else None
    takes_list = action.nargs in ("+", "*", argparse.REMAINDER) or isinstance(action.nargs, int)
    if takes_list or isinstance(action, (argparse._AppendAction, argparse._ExtendAction)):
        items = [_convert_one(action, item, where) for item in (value if isinstance(value, list) else [value])]
        if isinstance(action.nargs, int) and len(items) != action.nargs:
            raise UserError(f"{where}: expected {action.nargs} values, got {len(items)}")
        if action.nargs == "+" and not items:
            raise UserError(f"{where}: expected at least one value")
        return items
    return _convert_one(action, value, where)


def _target_parser(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The (sub-)parser that the flags in ``argv`` belong to, and the part of ``argv`` it parses."""
    while True:
        subparsers = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if subparsers is None:
            return parser, argv
        index = next((i for i, token in enumerate(argv) if not token.startswith("-")), None)
        if index is None or argv[index] not in subparsers.choices:
            return parser, argv  # no (valid) command: argparse reports it
        parser, argv = subparsers.choices[argv[index]], argv[index + 1 :]


def _relaxed_requirements(parser: argparse.ArgumentParser, dests: set[str] | None) -> list[tuple[Any, bool]]:
    """Make the flags in ``dests`` (all flags when None) optional; return what to restore."""
    changed: list[tuple[Any, bool]] = []
    for holder in [*parser._actions, *parser._mutually_exclusive_groups]:
        members = holder._group_actions if isinstance(holder, argparse._MutuallyExclusiveGroup) else [holder]
        if holder.required and (dests is None or any(member.dest in dests for member in members)):
            changed.append((holder, True))
            holder.required = False
    return changed


def _command_line_values(parser: argparse.ArgumentParser, argv: list[str]) -> dict[str, Any]:
    """The flags ``argv`` itself gives (no defaults), found by parsing with nothing required."""
    accumulating = (argparse._CountAction, argparse._AppendAction, argparse._AppendConstAction)
    prefilled = {
        action.dest: _UNSET
        for action in parser._actions
        if action.dest not in (argparse.SUPPRESS, None) and not isinstance(action, accumulating)
    }
    restore = _relaxed_requirements(parser, None)
    try:
        namespace, _ = parser.parse_known_args(argv, argparse.Namespace(**prefilled))
    finally:
        for holder, required in restore:
            holder.required = required
    return {key: value for key, value in vars(namespace).items() if value is not _UNSET}


def _exclusive_partners(parser: argparse.ArgumentParser, dest: str) -> set[str]:
    partners: set[str] = set()
    for group in parser._mutually_exclusive_groups:
        dests = {action.dest for action in group._group_actions}
        if dest in dests:
            partners |= dests - {dest}
    return partners


def apply_config_file(parser: argparse.ArgumentParser, argv: Sequence[str]) -> dict[str, Any]:
    """Make the values of the ``--config`` file named in ``argv`` the defaults of the parser ``argv`` selects
    (``parser`` or one of its sub-command parsers), adding ``--config``/``--print_config`` to it if missing.

    Flags given in ``argv`` win (also over the file's choice in a mutually exclusive group); flags the file
    supplies stop being required. Changes ``parser``'s defaults: build a fresh parser per parse. Returns the
    values applied (``{}`` without ``--config``). Raises ``UserError`` for an unreadable file or a bad key/value.
    """
    target, argv = _target_parser(parser, list(argv))
    if any(isinstance(action, argparse._SubParsersAction) for action in target._actions):
        return {}  # no sub-command given: argparse says so
    add_config_arguments(target)
    if {"-h", "--help"} & set(argv):
        return {}
    given = _command_line_values(target, argv)
    path = given.get("config")
    if path is None:
        return {}
    settings = _settings(target)
    values = {}
    for key, value in load_config_file(path).items():
        if key not in settings:
            raise _unknown_key(path, key, list(settings))
        if value is not None:  # null means "not set": the default applies
            values[key] = convert_value(settings[key], value, f"{path}: key '{key}'")
    for key in values:
        clash = sorted(_exclusive_partners(target, key) & set(values))
        if clash:
            raise UserError(f"{path}: keys '{key}' and '{clash[0]}' exclude each other; keep one")
    overridden = set(given) | {partner for key in given for partner in _exclusive_partners(target, key)}
    applied = {key: value for key, value in values.items() if key not in overridden}
    for action in target._actions:
        if action.dest in applied:
            action.default = applied[action.dest]
    _relaxed_requirements(target, set(applied))
    return applied


def effective_config(arguments: argparse.Namespace) -> dict[str, Any]:
    """The run's settings from a parsed namespace, as plain YAML/JSON values (paths as strings)."""
    values = {}
    for key, value in vars(arguments).items():
        if key.startswith("_") or key in _NOT_SETTINGS:
            continue
        values[key] = _plain(value)
    return values


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return str(value)  # Path and other flag types: their text form converts back through the flag's type


def format_config(values: dict[str, Any]) -> str:
    """YAML text of ``values`` (JSON, which is also YAML, when PyYAML is not installed)."""
    yaml = _import_yaml()
    if yaml is None:
        return json.dumps(values, indent=2, ensure_ascii=False) + "\n"
    return yaml.safe_dump(values, sort_keys=False, default_flow_style=False, allow_unicode=True)


def save_effective_config(output_dir: Path, values: dict[str, Any]) -> Path:
    """Write ``values`` to ``output_dir/effective_config.yaml`` atomically; ``--config`` reads it back."""
    path = Path(output_dir) / EFFECTIVE_CONFIG_NAME
    write_text_atomic(path, format_config(values))
    return path


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with ``--config FILE`` and ``--print_config`` (added to ``parser`` if missing).

    Like any bad flag, a bad config file ends the process with status 2 and one line ``error: ...`` on stderr;
    ``--print_config`` prints the effective configuration and ends it with status 0.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        apply_config_file(parser, argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    arguments = parser.parse_args(argv)
    if getattr(arguments, "print_config", False):
        sys.stdout.write(format_config(effective_config(arguments)))
        raise SystemExit(0)
    return arguments
