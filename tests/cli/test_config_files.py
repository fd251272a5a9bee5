"""Config files (--config run.yaml / run.json) for every command: file + flags + defaults, flags winning."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from bert_domain_ft.cli import build_parser, main
from bert_domain_ft.cli import pregenerate_training_data as classic_main
from bert_domain_ft.cli.flags import (
    EFFECTIVE_CONFIG_NAME,
    FlagParser,
    effective_config,
    flags_of,
    load_config_file,
    parse_with_config,
    save_effective_config,
)
from bert_domain_ft.errors import UserError


@dataclass
class ToyConfig:
    """Every kind of flag the commands use: typed, required, positional list, switch, choices, exclusive group."""

    inputs: list[Path] = field(metadata={"positional": True})
    output_dir: Path
    learning_rate: float = 3e-5
    seed: int = 42
    kind: str = field(default="wordpiece", metadata={"choices": ("wordpiece", "bpe")})
    show_progress: bool = field(default=True, metadata={"flag": "no_progress"})
    do_lower_case: bool | None = None
    data: Path | None = field(default=None, metadata={"one_of": "source"})
    corpus: Path | None = field(default=None, metadata={"one_of": "source"})


def toy_parser() -> FlagParser:
    return FlagParser(prog="toy", flags=flags_of(ToyConfig))


def apply_config_file(parser: FlagParser, argv: list[str]) -> dict:
    return parser.file_values(argv)


def write(path: Path, values: dict) -> Path:
    path.write_text(json.dumps(values) if path.suffix == ".json" else yaml.safe_dump(values), encoding="utf-8")
    return path


def parse(argv: list[str]) -> argparse.Namespace:
    return parse_with_config(toy_parser(), argv)


FULL = {"inputs": ["a.txt", "b.txt"], "output_dir": "out", "learning_rate": "1e-4", "seed": 7, "data": "pre"}


def test_flags_on_the_command_line_override_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "run.yaml", FULL)
    arguments = parse(["--config", str(config), "--seed", "9", "c.txt"])
    assert arguments.seed == 9 and arguments.inputs == [Path("c.txt")]
    assert arguments.learning_rate == 1e-4 and arguments.output_dir == Path("out")  # from the file
    assert arguments.kind == "wordpiece" and arguments.no_progress is False  # defaults


def test_file_values_are_converted_with_each_flags_type_like_argparse(tmp_path: Path) -> None:
    config = write(tmp_path / "run.yaml", {**FULL, "learning_rate": 5, "seed": "11", "no_progress": "yes"})
    from_file = parse(["--config", str(config)])
    flags = ["a.txt", "b.txt", "--output_dir", "out", "--learning_rate", "5", "--seed", "11", "--data", "pre"]
    from_flags = parse([*flags, "--no_progress"])
    assert from_file.learning_rate == 5.0 and isinstance(from_file.learning_rate, float)
    assert from_file.seed == 11 and from_file.inputs == [Path("a.txt"), Path("b.txt")]
    assert from_file.data == Path("pre") and from_file.no_progress is True
    assert {**vars(from_file), "config": None} == vars(from_flags)


def test_required_flags_positionals_and_groups_can_come_from_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "run.json", FULL)
    arguments = parse(["--config", str(config)])
    assert arguments.output_dir == Path("out") and arguments.data == Path("pre")
    partial = write(tmp_path / "partial.json", {"inputs": ["a.txt"], "data": "pre"})
    with pytest.raises(SystemExit) as exited:  # --output_dir is in neither: still required
        parse(["--config", str(partial)])
    assert exited.value.code == 2


def test_switches_take_true_or_false_and_null_means_the_default(tmp_path: Path) -> None:
    base = {"inputs": ["a"], "output_dir": "o", "data": "d"}
    off = parse(["--config", str(write(tmp_path / "off.yaml", {**base, "no_progress": False, "do_lower_case": False}))])
    assert off.no_progress is False and off.do_lower_case is False
    unset = parse(["--config", str(write(tmp_path / "null.yaml", {**base, "do_lower_case": None, "seed": None}))])
    assert unset.do_lower_case is None and unset.seed == 42
    with pytest.raises(UserError, match="key 'no_progress': expected true or false, got 'maybe'"):
        apply_config_file(toy_parser(), ["--config", str(write(tmp_path / "bad.yaml", {"no_progress": "maybe"}))])


def test_a_misspelled_key_names_the_closest_valid_one(tmp_path: Path) -> None:
    config = write(tmp_path / "run.yaml", {"learning_rat": 0.1})
    with pytest.raises(UserError) as caught:
        apply_config_file(toy_parser(), ["--config", str(config)])
    assert str(caught.value) == f"{config}: unknown key 'learning_rat'; did you mean 'learning_rate'?"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"seed": "many"}, "key 'seed': 'many' is not a valid int"),
        ({"kind": "bep"}, "key 'kind': 'bep' is not one of wordpiece, bpe"),
        ({"seed": [1, 2]}, "key 'seed': expected a single value"),
        ({"data": "d", "corpus": "c"}, "keys 'corpus' and 'data' exclude each other"),
        ({"config": "other.yaml"}, "unknown key 'config'"),
    ],
)
def test_bad_values_are_reported_with_their_key(tmp_path: Path, values: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        apply_config_file(toy_parser(), ["--config", str(write(tmp_path / "run.yaml", values))])


def test_unreadable_files_are_user_errors_naming_the_file_and_line(tmp_path: Path) -> None:
    broken_yaml, broken_json, a_list = tmp_path / "a.yaml", tmp_path / "b.json", tmp_path / "c.yaml"
    broken_yaml.write_text("seed: 1\nkind: [unclosed\n")
    broken_json.write_text('{\n"seed": 1,\n}')
    a_list.write_text("- seed\n")
    with pytest.raises(UserError, match=r"a\.yaml:\d+: not valid YAML"):
        load_config_file(broken_yaml)
    with pytest.raises(UserError, match=r"b\.json:3: not valid JSON"):
        load_config_file(broken_json)
    with pytest.raises(UserError, match="must hold a mapping"):
        load_config_file(a_list)
    with pytest.raises(UserError, match="config file not found"):
        load_config_file(tmp_path / "missing.yaml")


def test_a_flag_for_one_member_of_an_exclusive_group_overrides_the_files_other(tmp_path: Path) -> None:
    arguments = parse(["--config", str(write(tmp_path / "run.yaml", FULL)), "--corpus", "raw.txt"])
    assert arguments.corpus == Path("raw.txt") and arguments.data is None


def test_print_config_prints_yaml_that_reads_back_to_the_same_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--config", str(write(tmp_path / "run.json", FULL)), "--seed", "5", "--no_progress"]
    with pytest.raises(SystemExit) as exited:
        parse([*argv, "--print_config"])
    assert exited.value.code == 0
    printed = capsys.readouterr().out
    values = yaml.safe_load(printed)
    assert values["seed"] == 5 and values["learning_rate"] == 1e-4 and values["inputs"] == ["a.txt", "b.txt"]
    assert "config" not in values and "print_config" not in values
    (tmp_path / "printed.yaml").write_text(printed)
    assert vars(parse(["--config", str(tmp_path / "printed.yaml")])) == {
        **vars(parse(argv)),
        "config": tmp_path / "printed.yaml",
    }


def test_without_pyyaml_json_works_and_yaml_asks_for_pip_install_pyyaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml now fails
    assert parse(["--config", str(write(tmp_path / "run.json", FULL))]).seed == 7
    (tmp_path / "run.yaml").write_text("seed: 7\n")
    with pytest.raises(UserError, match="pip install pyyaml"):
        load_config_file(tmp_path / "run.yaml")
    with pytest.raises(SystemExit):  # --print_config falls back to JSON, which is also YAML
        parse(["--config", str(tmp_path / "run.json"), "--print_config"])
    assert json.loads(capsys.readouterr().out)["seed"] == 7


def test_json_and_yaml_files_give_the_same_run(tmp_path: Path) -> None:
    from_json = parse(["--config", str(write(tmp_path / "run.json", FULL))])
    from_yaml = parse(["--config", str(write(tmp_path / "run.yaml", FULL))])
    assert {**vars(from_json), "config": None} == {**vars(from_yaml), "config": None}


def test_every_command_accepts_a_config_file() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert commands
    for name, sub in commands.items():  # a group of subcommands (vocab analyse|extend): each of them
        nested = [a.choices for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        for full, parser in [(f"{name} {n}", p) for n, p in nested[0].items()] if nested else [(name, sub)]:
            assert {"--config", "--print_config"} <= set(parser._option_string_actions), full


def test_save_effective_config_writes_a_file_that_reads_back(tmp_path: Path) -> None:
    values = effective_config(argparse.Namespace(output_dir=Path("out"), seed=3, inputs=(Path("a"),), _run=print))
    path = save_effective_config(tmp_path, values)
    assert path == tmp_path / EFFECTIVE_CONFIG_NAME
    assert load_config_file(path) == {"output_dir": "out", "seed": 3, "inputs": ["a"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == [EFFECTIVE_CONFIG_NAME]


def test_the_effective_config_never_replaces_a_file_the_tool_did_not_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from bert_domain_ft.cli import run_command

    output = tmp_path / "out"
    output.mkdir()
    (output / EFFECTIVE_CONFIG_NAME).write_text("mine: 1\n")
    flags = ["pregenerate", "--train_corpus", "c.txt", "--bert_model", "m", "--output_dir", str(output)]
    with caplog.at_level("WARNING"):
        assert run_command(build_parser().parse_args(flags), lambda _: 0) == 0
    assert (output / EFFECTIVE_CONFIG_NAME).read_text() == "mine: 1\n"
    assert any("effective configuration not saved" in record.getMessage() for record in caplog.records)


EMPTY_PATHS = [
    ["finetune", "--pregenerated_data", "data", "--bert_model", "m", "--output_dir", ""],
    ["simple", "--train_corpus", "c.txt", "--bert_model", "m", "--output_dir", ""],
    ["pregenerate", "--train_corpus", "c.txt", "--bert_model", "m", "--output_dir", ""],
    ["prepare", "raw.txt", "--output", ""],
    ["tokenizer", "c.txt", "--output", ""],
    ["evaluate", "--model", "m", "--data", ""],
]


@pytest.mark.parametrize("arguments", EMPTY_PATHS, ids=[arguments[0] for arguments in EMPTY_PATHS])
def test_an_empty_path_is_refused_for_every_command_and_nothing_is_written(
    arguments: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unset shell variable (`--output_dir "$OUT"`) must not mean the current directory."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    with pytest.raises(SystemExit) as raised:
        main(arguments)
    assert raised.value.code == 2 and "empty path" in capsys.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == ["here"] and not list(here.iterdir())  # no lock beside


def test_an_empty_path_in_a_config_file_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "run.yaml", {"train_corpus": "c.txt", "bert_model": "m", "output_dir": ""})
    with pytest.raises(SystemExit) as raised:
        main(["pregenerate", "--config", str(config)])
    error = capsys.readouterr().err.strip()
    assert raised.value.code == 2 and "\n" not in error
    assert error.startswith("error: ") and "key 'output_dir'" in error and "empty path" in error


# End to end: the pregenerate command with the tiny corpus and tokenizer.


def pregenerate_settings(tiny_corpus: Path, tiny_tokenizer_dir: Path) -> dict:
    return {
        "train_corpus": str(tiny_corpus),
        "bert_model": str(tiny_tokenizer_dir),
        "epochs_to_generate": 1,
        "max_seq_len": 32,
        "seed": 1,
        "no_progress": True,
    }


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_pregenerate_runs_from_a_config_file_and_saves_its_effective_config(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path, suffix: str
) -> None:
    config = write(tmp_path / f"run{suffix}", pregenerate_settings(tiny_corpus, tiny_tokenizer_dir))
    output = tmp_path / "out"
    assert main(["pregenerate", "--config", str(config), "--output_dir", str(output), "--seed", "5"]) == 0
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["generation"]["seed"] == 5 and manifest["max_seq_len"] == 32
    saved = load_config_file(output / EFFECTIVE_CONFIG_NAME)
    assert saved["seed"] == 5 and saved["max_seq_len"] == 32 and saved["output_dir"] == str(output)
    assert saved["train_corpus"] == [str(tiny_corpus)] and saved["holdout_fraction"] == 0.05  # a default
    # The saved file reproduces the run: the same bytes again (written elsewhere: a flag overrides output_dir).
    again = tmp_path / "again"
    assert main(["pregenerate", "--config", str(output / EFFECTIVE_CONFIG_NAME), "--output_dir", str(again)]) == 0
    for path in (output / "epoch_000").iterdir():
        assert (again / "epoch_000" / path.name).read_bytes() == path.read_bytes()


def test_the_classic_script_reads_config_files_too(tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    settings = {**pregenerate_settings(tiny_corpus, tiny_tokenizer_dir), "output_dir": str(tmp_path / "out")}
    assert classic_main(["--config", str(write(tmp_path / "run.yaml", settings))]) == 0
    assert (tmp_path / "out" / "manifest.json").exists() and (tmp_path / "out" / EFFECTIVE_CONFIG_NAME).exists()


def test_a_misspelled_key_via_the_command_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "run.yaml", {"max_seq_lenn": 64})
    with pytest.raises(SystemExit) as exited:
        main(["pregenerate", "--config", str(config)])
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"error: {config}: unknown key 'max_seq_lenn'; did you mean 'max_seq_len'?\n"


def test_help_still_shows_the_defaults(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["pregenerate", "--config", str(tmp_path / "missing.yaml"), "--help"])
    assert "--config FILE" in capsys.readouterr().out


def test_output_piped_into_a_reader_that_stops_early_ends_quietly(tiny_corpus: Path, tiny_bert_dir: Path) -> None:
    """`bert-domain-ft check CORPUS | head -1`: no BrokenPipeError traceback, the status of a command cut off by
    its reader (141)."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "bert_domain_ft", "check", str(tiny_corpus), "--bert_model", str(tiny_bert_dir)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before the first line is written
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr


# Values no command can use: one line and exit status 2, never a traceback or a silent default.

SEEDED_COMMANDS = {
    "select": ["select", "--task_data", "t.csv", "--corpus", "c.txt", "--output", "o.txt", "--fraction", "0.5"],
    "pregenerate": ["pregenerate", "--train_corpus", "c.txt", "--bert_model", "m", "--output_dir", "o"],
    "finetune": ["finetune", "--pregenerated_data", "d", "--output_dir", "o", "--bert_model", "m"],
    "simple": ["simple", "--train_corpus", "c.txt", "--output_dir", "o", "--bert_model", "m"],
    "probe": ["probe", "--models", "m", "--train", "a.csv", "--test", "b.csv"],
    "fill-mask": ["fill-mask", "--models", "m", "a [MASK] b"],
}


def one_line_refusal(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """The ``error:`` line of ``bert-domain-ft ARGV``, which must exit with status 2 (parser or run) and print no
    traceback."""
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exited:
        status = exited.code
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error: ") or ": error: " in line]
    assert status == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


@pytest.mark.parametrize("seed", ["-1", str(2**32), str(2**64)])
@pytest.mark.parametrize("command", sorted(SEEDED_COMMANDS))
def test_every_seeded_command_refuses_a_seed_numpy_and_torch_cannot_take(
    capsys: pytest.CaptureFixture[str], command: str, seed: str
) -> None:
    error = one_line_refusal(capsys, [*SEEDED_COMMANDS[command], "--seed", seed])
    assert f"--seed must be a whole number from 0 to {2**32 - 1:,}, got {seed}" in error


EMPTY_NAMES = [
    ["pregenerate", "--train_corpus", "c.txt", "--bert_model", "", "--output_dir", "o"],
    ["pregenerate", "--train_corpus", "c.txt", "--tokenizer", " ", "--output_dir", "o"],
    ["finetune", "--pregenerated_data", "d", "--output_dir", "o", "--bert_model", ""],
    ["simple", "--train_corpus", "c.txt", "--output_dir", "o", "--bert_model", ""],
    ["check", "c.txt", "--bert_model", ""],
    [*SEEDED_COMMANDS["select"], "--method", "embedding", "--bert_model", " "],
    ["vocab", "analyse", "c.txt", "--bert_model", ""],
    ["vocab", "extend", "c.txt", "--bert_model", "", "--add", "5", "--output", "o"],
    ["evaluate", "--model", "", "--corpus", "c.txt"],
    ["evaluate", "--model", "m", "--corpus", "c.txt", "--tokenizer", ""],
    ["probe", "--models", "m", "", "--train", "a.csv", "--test", "b.csv"],
    ["fill-mask", "--models", "", "a [MASK] b"],
]


@pytest.mark.parametrize("argv", EMPTY_NAMES, ids=[" ".join(argv[:2]) for argv in EMPTY_NAMES])
def test_an_empty_model_name_is_refused_never_the_current_directory(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """``--bert_model "$MODEL"`` with MODEL unset: "" would load (or write) the current directory."""
    assert "empty" in one_line_refusal(capsys, argv)


def every_command() -> dict[str, tuple[list[str], list]]:
    """Each command line's words (``vocab analyse``) → its flags."""
    from bert_domain_ft.cli import COMMANDS, GROUPS

    found = {name: ([name], command.flags()) for name, command in COMMANDS.items()}
    for group in GROUPS.values():
        found |= {f"{group.name} {name}": ([group.name, name], sub.flags()) for name, sub in group.commands.items()}
    return found


def every_flag_set(flags: list) -> list[str]:
    """A command line giving every flag a value other than its default (one per exclusive group)."""
    argv: list[str] = []
    groups: set[str | None] = set()
    for flag in flags:
        if flag.group is not None and flag.group in groups:
            continue
        groups.add(flag.group)
        samples = {int: "3", float: "0.25"}
        value = (
            str(flag.choices[-1]) if flag.choices else samples.get(flag.convert, "7" if flag.default == "auto" else "x")
        )
        values = [] if flag.action else [value, value + "2"] if flag.nargs in ("+", "*") else [value]
        argv += [*flag.names[:1], *values]
    return argv


FILL_MASK_TEXTS_AMONG_MODELS = ["fill-mask", "--models", "base", "run", "The [MASK] was reset."]  # texts: []


@pytest.mark.parametrize("command", [*sorted(every_command()), "fill-mask, texts among --models"])
def test_print_config_of_every_command_reads_back_through_config_to_the_same_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    words, flags = every_command()[command.split(",")[0]]
    argv = FILL_MASK_TEXTS_AMONG_MODELS if "," in command else [*words, *every_flag_set(flags)]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        parse_with_config(build_parser(), [*argv, "--print_config"])
    assert exited.value.code == 0
    printed = write(tmp_path / "printed.yaml", yaml.safe_load(capsys.readouterr().out))
    again = parse_with_config(build_parser(), [*words, "--config", str(printed)])
    assert vars(again) == {**vars(parse_with_config(build_parser(), argv)), "config": printed}


def billion_laughs(levels: int = 9) -> str:
    """YAML of a few hundred bytes whose aliases expand to 9**levels strings, under a valid key."""
    lines = ["seed:", '  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        lines.append(f"  l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_yaml_aliases_expanding_beyond_a_small_bound_are_refused_before_they_fill_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "laughs.yaml").write_text(billion_laughs(), encoding="utf-8")
    error = one_line_refusal(capsys, [*SEEDED_COMMANDS["select"], "--config", str(tmp_path / "laughs.yaml")])
    assert "laughs.yaml: expands to over 10,000 values (nested YAML aliases?)" in error
    (tmp_path / "shared.yaml").write_text("seed: &s 7\nk1: 1.5\nb: *s\n", encoding="utf-8")  # a few aliases are fine
    assert load_config_file(tmp_path / "shared.yaml") == {"seed": 7, "k1": 1.5, "b": 7}


@pytest.mark.parametrize("kind", ["directory", "device", "large", "deep-yaml", "deep-json"])
def test_a_config_that_is_no_file_of_flag_values_says_what_it_is(tmp_path: Path, kind: str) -> None:
    path = {"directory": tmp_path, "device": Path("/dev/zero")}.get(kind, tmp_path / f"run.{kind[5:] or 'yaml'}")
    if kind == "large":
        path.write_text("seed: 1\n" + "#" * (1 << 20), encoding="utf-8")
    elif kind.startswith("deep"):
        path.write_text('{"seed": ' + "[" * 100_000 + "]" * 100_000 + "}", encoding="utf-8")
    message = {"directory": "is a directory; give the YAML or JSON file", "device": "over 1 MB", "large": "over 1 MB"}
    with pytest.raises(UserError, match=message.get(kind, "nested too deeply")):
        load_config_file(path)


def test_a_credential_the_user_typed_into_a_flag_is_not_echoed_in_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every one-line error passes through the redaction, not only the libraries' errors."""
    model = "https://someone:hunter2token@models.example/bert"
    status = main(["check", str(tmp_path / "missing.txt"), "--bert_model", model])
    error = capsys.readouterr().err
    assert status == 2 and "hunter2token" not in error and error.startswith("error: ")
