"""The demo's labelled task: classes from standard-library areas, train and test from different modules."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from demo_probe_data import build_demo_probe_task, module_class

from bert_domain_ft.corpus.task_files import read_probe_pair
from bert_domain_ft.errors import UserError

REPEATED = "Return the value that this object holds right now."


def module_source(topic: str, count: int) -> str:
    sentences = " ".join(f"The {topic} helper number {index} handles one more case well." for index in range(count))
    return f'"""{sentences}\n\n{REPEATED}"""\n\ndef f():\n    """Short."""\n'


@pytest.fixture(scope="module")
def fake_stdlib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stdlib = tmp_path_factory.mktemp("stdlib")
    files = {
        "tkinter/__init__.py": "widget",
        "tkinter/ttk.py": "themed widget",
        "idlelib/editor.py": "editor window",
        "turtle.py": "turtle drawing",
        "email/parser.py": "message parser",
        "email/header.py": "header encoding",
        "smtplib.py": "mail transfer",
        "mailbox.py": "mailbox format",
        "json/decoder.py": "json decoding",  # a single module: cannot be split, so its class is left out
        "tests/test_x.py": "never read",
        "colorsys.py": "colour conversion",  # in no class
    }
    for name, topic in files.items():
        path = stdlib / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(module_source(topic, 12), encoding="utf-8")
    return stdlib


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_modules_belong_to_the_class_of_their_top_level_package(fake_stdlib: Path):
    assert module_class(fake_stdlib, fake_stdlib / "tkinter" / "ttk.py") == "gui"
    assert module_class(fake_stdlib, fake_stdlib / "smtplib.py") == "mail"
    assert module_class(fake_stdlib, fake_stdlib / "colorsys.py") is None


def test_train_and_test_come_from_different_modules_of_every_class(fake_stdlib: Path, tmp_path: Path):
    task = build_demo_probe_task(tmp_path, train_per_class=10, test_per_class=6, stdlib=fake_stdlib)
    assert task.classes == ("gui", "mail")
    train, test = read_rows(task.train), read_rows(task.test)
    for label in task.classes:
        train_modules = {row["module"] for row in train if row["label"] == label}
        test_modules = {row["module"] for row in test if row["label"] == label}
        assert train_modules and test_modules and not train_modules & test_modules
    assert [sum(row["label"] == label for row in train) for label in task.classes] == [10, 10]
    assert [sum(row["label"] == label for row in test) for label in task.classes] == [6, 6]
    assert REPEATED not in {row["text"] for row in train + test}  # in every module: boilerplate, dropped
    read_probe_pair(task.train, task.test)  # the probe accepts the files as they are


def test_the_task_is_the_same_bytes_every_time_and_changes_with_the_seed(fake_stdlib: Path, tmp_path: Path):
    first = build_demo_probe_task(tmp_path / "a", 10, 6, seed=0, stdlib=fake_stdlib)
    second = build_demo_probe_task(tmp_path / "b", 10, 6, seed=0, stdlib=fake_stdlib)
    other = build_demo_probe_task(tmp_path / "c", 10, 6, seed=1, stdlib=fake_stdlib)
    assert first.train.read_bytes() == second.train.read_bytes()
    assert first.test.read_bytes() == second.test.read_bytes()
    assert first.train.read_bytes() != other.train.read_bytes()


def test_a_library_without_documented_areas_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="too few documented modules"):
        build_demo_probe_task(tmp_path / "out", stdlib=tmp_path / "missing")
