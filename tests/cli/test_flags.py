"""The flags every command derives from its config: no abbreviations, a did-you-mean for spelling slips only,
one name per concept (the old names hidden but accepted), and --help in plain words."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from bert_domain_ft.cli import COMMANDS, build_parser, parse_with_config
from bert_domain_ft.cli.help_text import did_you_mean

FINETUNE = ["finetune", "--pregenerated_data", "d", "--output_dir", "o", "--bert_model", "m"]


def refusal(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """stderr of ``bert-domain-ft ARGV``, which the parser must refuse with exit status 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        parse_with_config(build_parser(), argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


def all_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser (``vocab analyse`` included) and the classic scripts', by the words that call it."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    found = {}
    for name, sub in commands.items():
        nested = [a.choices for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        found |= {f"{name} {n}": p for n, p in nested[0].items()} if nested else {name: sub}
    for command in COMMANDS.values():
        if command.classic:
            found[command.classic] = command.classic_parser()
    return found


def accepted_names(parser: argparse.ArgumentParser) -> set[str]:
    return {name for action in parser._actions for name in action.option_strings}


# Abbreviations and the did-you-mean rule.


@pytest.mark.parametrize("abbreviated", ["--max_step", "--learning_rat", "--pregenerated"])
def test_an_abbreviated_flag_is_refused_never_taken_for_the_longer_one(
    capsys: pytest.CaptureFixture[str], abbreviated: str
) -> None:
    argv = [*FINETUNE, abbreviated, "10"]
    if abbreviated == "--pregenerated":  # the required flag abbreviated: named as unknown, not as missing
        argv = ["finetune", "--pregenerated", "d", "--output_dir", "o", "--bert_model", "m"]
    error = refusal(capsys, argv)
    assert f"unrecognized argument {abbreviated}" in error


def test_no_parser_expands_abbreviations(capsys: pytest.CaptureFixture[str]) -> None:
    for words, parser in all_parsers().items():
        assert parser.allow_abbrev is False, words
    assert "--conf" in refusal(capsys, [*FINETUNE, "--conf", "run.yaml"])  # not read as --config


FINETUNE_NAMES = sorted(accepted_names(all_parsers()["finetune"]))


@pytest.mark.parametrize(
    ("typed", "suggested"),
    [
        ("--max_step", "--max_steps"),  # a letter short
        ("--learning_rat", "--learning_rate"),
        ("--lerning_rte", "--learning_rate"),  # a slip in each word
        ("--learnign_rate", "--learning_rate"),  # two letters swapped
        ("--Max-Steps", "--max_steps"),  # case and separators
        ("--maxsteps", "--max_steps"),
        ("--eval_step", "--eval_steps"),
        ("--head_warmup", None),  # a word short: another name, not a slip
        ("--holdout", None),
        ("--do_eval", None),  # one letter, but "do" and "no" are words of their own: the opposite meaning
        ("--probe_seed", "--probe_seeds"),
        ("--fp32", None),
        ("--bert", None),
    ],
)
def test_did_you_mean_suggests_spelling_variants_of_the_real_flags_only(typed: str, suggested: str | None) -> None:
    assert did_you_mean(typed, FINETUNE_NAMES) == suggested


def test_a_flag_is_never_suggested_for_a_name_that_differs_by_a_word_of_meaning() -> None:
    """--warmup_steps (a learning-rate ramp) must never be answered with --head_warmup_steps (head-only steps)."""
    without = [name for name in FINETUNE_NAMES if name != "--warmup_steps"]
    assert did_you_mean("--warmup_steps", without) is None
    assert did_you_mean("--warmup_step", without) is None
    assert did_you_mean("--general_holdout", ["--holdout_data"]) is None
    assert did_you_mean("--probe_seeds", ["--seed", "--seeds"]) is None


def test_every_flag_of_another_command_is_named_as_such_never_answered_with_a_look_alike(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``evaluate --epochs 3``: --epochs is finetune's number of passes, --epoch evaluate's choice of one epoch;
    the answer names the commands that take --epochs."""
    error = refusal(capsys, ["evaluate", "--bert_model", "m", "--corpus", "c.txt", "--epochs", "3"])
    assert "did you mean" not in error and "--epochs" in error and "finetune" in error
    parsers = all_parsers()
    for words, parser in parsers.items():
        own = accepted_names(parser)
        others = {name for other in parsers.values() for name in accepted_names(other)} - own
        for name in sorted(others):
            assert did_you_mean(name, sorted(own), elsewhere=others) is None, (words, name)


@pytest.mark.parametrize(
    ("argv", "answer"),
    [
        (["finetune", "--pregenerated_data", "d", "--output_dir", "o", "--model", "m"], "did you mean --bert_model?"),
        (["pregenerate", "--train_corpus", "c", "--output_dir", "o", "--max_seq_length", "64"], "--max_seq_len?"),
        (["fill-mask", "--models", "m", "--from_holdout", "2", "--pregenerated_data", "d"], "--holdout_data?"),
        ([*FINETUNE, "--data", "d"], "a flag of evaluate, not of this command"),  # --holdout_data or training data?
    ],
)
def test_another_commands_name_for_a_flag_of_this_one_is_answered_with_this_ones(
    capsys: pytest.CaptureFixture[str], argv: list[str], answer: str
) -> None:
    assert answer in refusal(capsys, argv)


def test_a_misspelled_config_key_gets_the_same_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.json"
    config.write_text('{"head_warmup": 5}')
    error = refusal(capsys, [*FINETUNE, "--config", str(config)])
    assert "unknown key 'head_warmup'" in error and "did you mean" not in error


# One name per concept; the old names still work, hidden from --help.


def test_evaluate_names_the_model_and_the_data_as_the_other_commands_do(tmp_path: Path) -> None:
    new = parse_with_config(build_parser(), ["evaluate", "--bert_model", "run/", "--holdout_data", "data/"])
    for old in (["--model", "run/", "--data", "data/"], ["--model", "run/", "--pregenerated_data", "data/"]):
        assert vars(parse_with_config(build_parser(), ["evaluate", *old])) == vars(new)
    config = tmp_path / "old.yaml"  # an effective_config.yaml written before the rename
    config.write_text("model: run/\ndata: data/\n")
    from_file = parse_with_config(build_parser(), ["evaluate", "--config", str(config)])
    assert vars(from_file) == {**vars(new), "config": config}


@pytest.mark.parametrize("command", ["probe", "fill-mask"])
def test_the_models_compared_take_the_single_model_names_too(command: str) -> None:
    rest = ["--train", "a.csv", "--test", "b.csv"] if command == "probe" else ["--from_holdout", "3"]
    for name in ("--models", "--model", "--bert_model"):
        assert parse_with_config(build_parser(), [command, name, "base", "run", *rest]).models == ["base", "run"]


def help_text(capsys: pytest.CaptureFixture[str], parser: argparse.ArgumentParser) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    return capsys.readouterr().out


def test_old_names_are_hidden_from_help(capsys: pytest.CaptureFixture[str]) -> None:
    parsers = all_parsers()
    evaluate = help_text(capsys, parsers["evaluate"])
    assert "--bert_model" in evaluate and "--holdout_data" in evaluate
    assert not re.search(r"--model\b|--data\b|--pregenerated_data", evaluate)
    probe = help_text(capsys, parsers["probe"])
    assert "--models" in probe and not re.search(r"--model\b|--bert_model", probe)
    simple = " ".join(help_text(capsys, parsers["simple-lm-finetuning"]).split())
    assert "--max_seq_len MAX_SEQ_LEN Tokens per pair" in simple and "--max_seq_length MAX" not in simple


# --help in plain words.


@pytest.mark.parametrize("words", sorted(all_parsers()))
def test_help_is_plain_words_for_every_flag(capsys: pytest.CaptureFixture[str], words: str) -> None:
    parser = all_parsers()[words]
    text = " ".join(help_text(capsys, parser).split())
    for code in ("None", "(default: (", "(default: [", "Path(", "``", "turn off:", "{'", '{"', "True", "False"):
        assert code not in text, (words, code)
    for action in parser._actions:
        if action.help is not argparse.SUPPRESS and action.dest not in ("help",):
            assert action.help and action.help.strip() != action.dest, (words, action.dest)


def test_switches_that_turn_something_off_say_so_the_right_way_round(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(help_text(capsys, all_parsers()["finetune"]).split())
    assert "--stock_kernels On the CPU, train with bert_domain_ft's" in text
    assert "the --stock_kernels flag keeps transformers' own" in text
    assert re.search(r"--no_eval Evaluate on held-out data [^;]*; this flag turns that off\.", text)
    assert "--no_progress Show progress bars; this flag turns that off." in text
    assert "--report_to TRACKER [TRACKER ...] " in text and "(default: none)" in text


def test_help_names_other_flags_as_flags(capsys: pytest.CaptureFixture[str]) -> None:
    probe = " ".join(help_text(capsys, all_parsers()["probe"]).split())
    assert "--no_plot Draw no chart, even with --plot" in probe
    finetune = " ".join(help_text(capsys, all_parsers()["finetune"]).split())
    assert "(see --holdout_data)" in finetune and "needs --probe_test" in finetune
