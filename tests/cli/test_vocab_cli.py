"""``bert-domain-ft vocab analyse|extend``: a command of subcommands whose flags, help and config files work like
every other command's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bert_domain_ft.cli import build_parser, chosen_command, main, parse_with_config


def test_subcommands_are_listed_and_one_is_required(capsys) -> None:
    with pytest.raises(SystemExit) as leaving:
        main(["vocab"])
    assert leaving.value.code == 2 and "analyse" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["vocab", "--help"])
    out = capsys.readouterr().out
    assert "analyse" in out and "extend" in out


def test_flags_and_config_files_reach_the_subcommand(tmp_path: Path) -> None:
    config = tmp_path / "extend.json"
    config.write_text(json.dumps({"bert_model": "m", "add": 994, "min_pieces": 3}))
    arguments = parse_with_config(
        build_parser(), ["vocab", "extend", "c.txt", "--output", "o", "--config", str(config)]
    )
    assert chosen_command(arguments).name == "extend"
    assert (arguments.corpus, arguments.bert_model, arguments.add, arguments.min_pieces) == (Path("c.txt"), "m", 994, 3)


def test_bad_values_are_one_line_and_status_2(tmp_path: Path, capsys) -> None:
    assert main(["vocab", "extend", "c.txt", "--bert_model", "m", "--add", "0", "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == "error: --add must be at least 1, got 0"
