"""Command-line flags derived from the config dataclasses, and ``--config`` files that set the same flags.

Each field is one flag: its name (``--max_seq_len``, also the key in config files), type (``X | None``, ``list[X]``:
several values, ``bool``: a switch), default and help (the first sentence of the docstring below the field).
``dataclasses.field(metadata=...)`` adds what the type cannot say: ``flag`` (another name; on a bool defaulting to
True, a switch turning it off: ``show_progress`` ↔ ``--no_progress``), ``aliases`` (other names it also takes, on the
command line and as config file keys, kept out of --help: the original scripts' and earlier versions' names),
``positional``, ``choices``,
``metavar``, ``nargs``, ``one_of`` (a required group, exactly one given), ``auto`` (also takes ``auto``: None),
``negatable`` (``--x``/``--no-x``), ``cli_default`` and ``nested`` (a config inside whose fields are flags too:
``{"exclude": names, "required": names}``).

    parser = FlagParser(prog="toy", flags=flags_of(ToyConfig)); arguments = parse_with_config(parser, argv)
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bert_domain_ft.cli.help_text import HelpFormatter, did_you_mean, help_line, name_fields
from bert_domain_ft.errors import UserError, at_location
from bert_domain_ft.files import nonempty_path, write_text_atomic

EFFECTIVE_CONFIG_NAME = "effective_config.yaml"
EXIT_USER_ERROR = 2
_NOT_SETTINGS = {"help", "command", "config", "print_config"}  # namespace entries that are not a run's settings
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}
_SWITCHES = ("store_true", "negated", "negatable")
_CONFIG_HELP = "YAML or JSON file of flag values (keys are the flag names without --); flags given here win"
# A file of flag values holds a few hundred values at most. The bounds keep a wrong file (a corpus, /dev/zero) or
# a hostile one (YAML aliases nested into a "billion laughs": 1 KB standing for 10⁹ values) from using up memory.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 10_000  # YAML nodes once every alias is expanded


def steps_or_auto(text: str) -> int | None:
    """A flag's value that is a whole number or ``auto`` (None), e.g. ``--head_warmup_steps``."""
    if text.strip().lower() != "auto" and not text.strip().lstrip("+-").isdigit():
        raise argparse.ArgumentTypeError(f"expected a number of steps or 'auto', got {text!r}")
    return None if text.strip().lower() == "auto" else int(text)


def file_path(text: str) -> Path:
    """A path flag's value; an empty one is refused (``files.nonempty_path``): "" would be the current directory."""
    try:
        return nonempty_path(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


@dataclasses.dataclass(frozen=True)
class Flag:
    """One command-line flag, made from the field ``name`` of the config dataclass ``owner``."""

    owner: type
    name: str
    dest: str  # the flag's name without dashes: the namespace attribute and the config file key
    convert: Callable[[str], Any]  # one value's text → its value
    default: Any
    help: str
    names: tuple[str, ...] = ()  # the option strings; () for a positional
    action: str | None = None  # "store_true", "negated" (a switch setting the field False), "negatable", None
    nargs: str | None = None
    required: bool = False
    choices: tuple[Any, ...] | None = None
    metavar: str | None = None
    group: str | None = None


@functools.cache
def field_docs(config_class: type) -> dict[str, str]:
    """Field name → its attribute docstring (the string literal right below the field in the source)."""
    try:
        body = ast.parse(textwrap.dedent(inspect.getsource(config_class))).body[0].body  # type: ignore[attr-defined]
    except (OSError, TypeError, SyntaxError):
        return {}
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[ast.unparse(node.target)] = str(after.value.value)
    return docs


def _value_type(hint: Any) -> tuple[Any, str | None]:
    """(type of one value, nargs) of a field's type hint: ``int | None`` → (int, None), ``list[str]`` → (str, "+")."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    members = [member for member in typing.get_args(hint) if member is not type(None)] if union else [hint]
    one = members[0] if len(members) == 1 else str  # several: the command line gives text (e.g. NAME=FILE)
    return (typing.get_args(one)[0], "+") if typing.get_origin(one) in (list, tuple) else (one, None)


def _flag(owner: type, field: dataclasses.Field, hint: Any, required: bool) -> Flag:
    meta = field.metadata
    kind, nargs = _value_type(hint)
    default = meta.get("cli_default", None if field.default is dataclasses.MISSING else field.default)
    action = "negatable" if meta.get("negatable") else "store_true" if kind is bool else None
    action = "negated" if action == "store_true" and default is True else action
    default = False if action == "negated" else "auto" if meta.get("auto") else default
    dest = meta.get("flag", field.name)
    names = () if meta.get("positional") else tuple(f"--{name}" for name in (dest, *meta.get("aliases", ())))
    return Flag(
        owner, field.name, dest, steps_or_auto if meta.get("auto") else file_path if kind is Path else kind, default,
        help_line(field_docs(owner).get(field.name, field.name), action, default, dest), names, action,
        meta.get("nargs", nargs), required, meta.get("choices"), meta.get("metavar"), meta.get("one_of"),
    )  # fmt: skip


def flags_of(config_class: type, exclude: Sequence[str] = (), required: Sequence[str] = ()) -> list[Flag]:
    """The flags of every field of ``config_class`` (and of the configs nested in it), in field order."""
    hints = typing.get_type_hints(config_class)
    flags: list[Flag] = []
    for field in (field for field in dataclasses.fields(config_class) if field.name not in exclude):
        if "nested" in field.metadata:
            flags += flags_of(hints[field.name], **field.metadata["nested"])
        else:
            missing = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
            flags.append(_flag(config_class, field, hints[field.name], missing or field.name in required))
    return flags


def naming_flags(flags: Sequence[Flag]) -> list[Flag]:
    """``flags`` with the fields their help mentions written as the flags that set them (``holdout_data`` →
    ``--holdout_data``, ``plot_output`` → ``--plot``), so --help speaks of what the reader can type. Fields set by
    a switch that turns them off (``do_eval`` ↔ ``--no_eval``) stay as written: as flags they would say the opposite."""
    names = {flag.name: f"--{flag.dest}" for flag in flags if flag.names and flag.action != "negated"}
    return [dataclasses.replace(flag, help=name_fields(flag.help, names)) for flag in flags]


def build_config(config_class: type, arguments: argparse.Namespace, **overrides: Any) -> Any:
    """``config_class`` from the flags of its own fields (None: its default) and ``overrides``; a ``ValueError`` of
    its validation becomes a ``UserError`` (one line for the user)."""
    values = {}
    for flag in flags_of(config_class):
        value = getattr(arguments, flag.dest, None)
        if flag.owner is config_class and value is not None:
            values[flag.name] = not value if flag.action == "negated" else value
    try:
        return config_class(**{**values, **overrides})
    except ValueError as error:
        raise UserError(str(error)) from None


def add_flags(parser: Any, flags: Sequence[Flag], defaults: Mapping[str, Any] = {}) -> None:
    """Add ``flags`` to ``parser``; ``defaults`` (a config file's values) replace theirs and make them optional."""
    groups: dict[str, Any] = {}
    for flag in flags:
        if flag.group and flag.group not in groups:
            supplied = any(other.dest in defaults for other in flags if other.group == flag.group)
            groups[flag.group] = parser.add_mutually_exclusive_group(required=not supplied)
        options: dict[str, Any] = {"help": flag.help, "default": defaults.get(flag.dest, flag.default)}
        if flag.action in _SWITCHES:
            options["action"] = argparse.BooleanOptionalAction if flag.action == "negatable" else "store_true"
        else:
            options.update(type=flag.convert, nargs=flag.nargs, choices=flag.choices, metavar=flag.metavar)
        if not flag.names:  # a positional the config file gives may be left out
            options["nargs"] = (
                {"+": "*", None: "?"}.get(flag.nargs, flag.nargs) if flag.dest in defaults else flag.nargs
            )
            groups.get(flag.group, parser).add_argument(flag.dest, **options)
        else:
            options.update(dest=flag.dest, required=flag.required and flag.dest not in defaults)
            action = groups.get(flag.group, parser).add_argument(*flag.names, **options)
            action.hidden_names = flag.names[1:]  # type: ignore[attr-defined]  # aliases: see HelpFormatter


@dataclasses.dataclass(frozen=True)
class OtherFlags:
    """The flags of every command, for the answer to a flag this one lacks: name → the commands that take it, and
    name → the other names of the same flag (evaluate's --model is --bert_model, simple's --max_seq_length is
    --max_seq_len)."""

    owners: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    synonyms: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)


class FlagParser(argparse.ArgumentParser):
    """A parser of config flags that reads ``--config FILE`` first: the file's values become the flags' defaults.
    A flag is never abbreviated (``--max_step`` is refused, not taken for ``--max_steps``); an unknown one gets a
    did-you-mean only for a spelling slip (``did_you_mean``) or for another name of the same flag, and one that is
    another command's flag is named as such (``elsewhere``)."""

    def __init__(self, *args: Any, flags: Sequence[Flag] = (), defaults: Mapping[str, Any] = {},
                 elsewhere: OtherFlags = OtherFlags(), **kwargs: Any):  # fmt: skip
        super().__init__(*args, **{"allow_abbrev": False, "formatter_class": HelpFormatter, **kwargs})
        self.flags, self.elsewhere = list(flags), elsewhere
        add_flags(self, self.flags, defaults)
        group = self.add_argument_group("configuration file")
        group.add_argument("--config", type=Path, metavar="FILE", help=_CONFIG_HELP)
        group.add_argument("--print_config", action="store_true", help="print the effective configuration (YAML), exit")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        args = list(sys.argv[1:] if args is None else args)
        try:
            values = {} if {"-h", "--help"} & set(args) else self.file_values(args)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None
        parser = FlagParser(prog=self.prog, description=self.description, flags=self.flags, defaults=values,
                            elsewhere=self.elsewhere)  # fmt: skip
        names = list(parser._option_string_actions)
        for word in args[: args.index("--") if "--" in args else len(args)]:  # said before any missing flag
            if word.startswith("--") and word.split("=")[0] not in names:
                parser.error(f"unrecognized argument {word}{self.unknown_hint(word.split('=')[0], names, '--{}')}")
        arguments, extras = argparse.ArgumentParser.parse_known_args(parser, args, namespace)
        for key in values:  # a flag given for another member of the key's exclusive group wins over the file
            if any(getattr(arguments, other) is not None for other in self.partners(key)):
                setattr(arguments, key, None)
        return arguments, extras

    def unknown_hint(self, name: str, names: Sequence[str], spelled: str) -> str:
        """What to say after "unknown ``name``": whose flag it is, or which of ``names`` it misspells (written as
        ``spelled``, e.g. "--{}" or "'{}'"), or "" when neither."""
        bare = name.lstrip("-")
        here = {other.lstrip("-") for other in names}
        same = sorted(here & {other.lstrip("-") for other in self.elsewhere.synonyms.get(f"--{bare}", ())})
        if len(same) == 1:  # e.g. evaluate's old --model, typed to finetune: its --bert_model
            return f"; did you mean {spelled.format(same[0])}? (this command's name for it)"
        owners = self.elsewhere.owners.get(f"--{bare}", ())
        if owners:
            commands = ", ".join(owners[:-1]) + " and " + owners[-1] if len(owners) > 1 else owners[0]
            return f": a flag of {commands}, not of this command; see {self.prog} --help"
        close = did_you_mean(bare, [other.lstrip("-") for other in names])
        return f"; did you mean {spelled.format(close)}?" if close else ""

    def partners(self, dest: str) -> set[str]:
        """The other flags in ``dest``'s exclusive group."""
        group = next((flag.group for flag in self.flags if flag.dest == dest), None)
        return {flag.dest for flag in self.flags if group and flag.group == group} - {dest}

    def file_values(self, args: list[str]) -> dict[str, Any]:
        """The values of the ``--config`` file named in ``args`` (``{}`` without one), converted and checked. Its
        keys are the flags' names (an alias names its flag: a file written before a rename still reads)."""
        finder = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        finder.add_argument("--config", type=Path, nargs="?")  # no value: the parser says so
        path = finder.parse_known_args(args)[0].config
        by_name = {name.lstrip("-"): flag for flag in self.flags for name in (flag.dest, *flag.names)}
        values, keys = {}, {}  # dest → value, dest → the key that gave it
        for key, value in load_config_file(path).items() if path is not None else ():
            if key not in by_name:
                valid = "; valid keys: " + ", ".join(sorted(flag.dest for flag in self.flags))
                hint = self.unknown_hint(key, list(by_name), "'{}'") or valid
                raise UserError(f"{path}: unknown key '{key}'{hint}")
            dest = by_name[key].dest
            if dest in keys:
                raise UserError(f"{path}: keys '{keys[dest]}' and '{key}' both set --{dest}; keep one")
            keys[dest] = key
            if value is not None:  # null means "not set": the default applies
                values[dest] = convert_value(by_name[key], value, f"{path}: key '{key}'")
        for key in values:
            if self.partners(key) & set(values):
                other = min(self.partners(key) & set(values))
                raise UserError(f"{path}: keys '{key}' and '{other}' exclude each other; keep one")
        return values


def _convert_one(flag: Flag, value: Any, where: str) -> Any:
    if isinstance(value, (list, dict)):
        raise UserError(f"{where}: expected a single value, got {type(value).__name__} {value!r}")
    try:
        result = flag.convert(str(value).lower() if isinstance(value, bool) else str(value))
    except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
        detail = f" ({error})" if isinstance(error, argparse.ArgumentTypeError) else ""
        raise UserError(f"{where}: {value!r} is not a valid {getattr(flag.convert, '__name__', 'value')}{detail}") from None  # fmt: skip
    if flag.choices is not None and result not in flag.choices:
        raise UserError(f"{where}: {value!r} is not one of {', '.join(str(choice) for choice in flag.choices)}")
    return result


def convert_value(flag: Flag, value: Any, where: str) -> Any:
    """``value`` from a config file as the command line would have given it for ``flag``."""
    word = str(value).strip().lower()
    if flag.action in _SWITCHES and (
        isinstance(value, bool) or isinstance(value, (str, int)) and word in _TRUE | _FALSE
    ):
        return word in _TRUE  # the key is the flag's name, so the value is the flag's (also --no_progress)
    if flag.action in _SWITCHES:
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if flag.nargs is None:
        return _convert_one(flag, value, where)
    items = [_convert_one(flag, item, where) for item in (value if isinstance(value, list) else [value])]
    if not items and flag.nargs != "*":  # "*": none is a value (fill-mask's texts)
        raise UserError(f"{where}: expected at least one value")
    return items


def _import_yaml() -> Any:
    try:
        import yaml
    except ImportError:
        return None
    return yaml


def _expanded_size(node: Any, sizes: dict[int, int]) -> int:
    """How many nodes the YAML ``node`` stands for once each alias is copied out (``sizes``: memo by node id, so
    a node shared by a thousand aliases is counted in one step)."""
    if id(node) not in sizes:
        children = node.value if isinstance(node.value, list) else []
        items = [item for child in children for item in (child if isinstance(child, tuple) else (child,))]
        sizes[id(node)] = 1 + sum(_expanded_size(item, sizes) for item in items)
    return sizes[id(node)]


def _load_yaml(yaml: Any, path: Path, text: str) -> Any:
    """``yaml.safe_load(text)``, refusing a document whose aliases expand beyond ``MAX_CONFIG_VALUES`` values."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_CONFIG_VALUES:
            problem = f"expands to over {MAX_CONFIG_VALUES:,} values (nested YAML aliases?); write the values out"
            raise UserError(at_location(path, None, problem))
        return None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def _parse_text(path: Path, text: str) -> Any:
    yaml = None if path.suffix.lower() == ".json" else _import_yaml()
    try:
        return _load_yaml(yaml, path, text) if yaml is not None else json.loads(text)
    except RecursionError:
        raise UserError(at_location(path, None, "nested too deeply to be flag values; fix the file")) from None
    except json.JSONDecodeError as error:
        if path.suffix.lower() != ".json":  # a YAML-named file holding JSON still works without PyYAML
            raise UserError(at_location(path, None, "reading YAML needs PyYAML: pip install pyyaml (or pip install "
                                        "'bert_domain_ft[config]'), or write the file as JSON")) from None  # fmt: skip
        raise UserError(at_location(path, error.lineno, f"not valid JSON ({error.msg}); fix the file")) from None
    except yaml.YAMLError as error:  # type: ignore[union-attr]
        mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None) or "syntax error"
        line = mark.line + 1 if mark is not None else None
        raise UserError(at_location(path, line, f"not valid YAML ({problem}); fix the file")) from None


def load_config_file(path: Path) -> dict[str, Any]:
    """The mapping of flag names to values in ``path`` (JSON for ``.json``, YAML otherwise; JSON is valid YAML)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(at_location(path, None, "is a directory; give the YAML or JSON file of flag values in it"))
    if not path.exists():
        raise UserError(at_location(path, None, "config file not found; check the --config path"))
    try:
        with open(path, "rb") as handle:  # read at most the bound: a device or a pipe may never end
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise UserError(at_location(path, None, f"cannot read the config file ({error.strerror})")) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UserError(at_location(path, None, f"over {MAX_CONFIG_BYTES >> 20} MB: not a file of flag values"))
    try:
        values = _parse_text(path, data.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(at_location(path, None, "config file is not UTF-8 text; save it as UTF-8")) from None
    if values is None:  # an empty file
        return {}
    if not isinstance(values, dict) or not all(isinstance(key, str) for key in values):
        raise UserError(at_location(path, None, "must hold a mapping of flag names to values, e.g. 'max_seq_len: 128'"))
    return values


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)  # Path → its text


def effective_config(arguments: argparse.Namespace) -> dict[str, Any]:
    """The run's settings in a parsed namespace, as plain YAML/JSON values (paths as strings)."""
    return {key: _plain(value) for key, value in vars(arguments).items() if _is_setting(key)}


def _is_setting(key: str) -> bool:
    """Whether a namespace entry is a flag's value (not ``--config``, nor the subcommand a group routed to, e.g.
    ``vocab_command``: the command line names it, a config file cannot)."""
    return not key.startswith("_") and not key.endswith("_command") and key not in _NOT_SETTINGS


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
    """``parser.parse_args(argv)``; ``--print_config`` prints the effective configuration and exits with status 0."""
    arguments = parser.parse_args(argv)
    if getattr(arguments, "print_config", False):
        sys.stdout.write(format_config(effective_config(arguments)))
        raise SystemExit(0)
    return arguments
