"""Labelled files for the probe: CSV and JSON lines read faithfully, every bad input named with file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bert_domain_ft.corpus.task_files import class_names, read_labelled_file, read_probe_pair
from bert_domain_ft.errors import UserError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[object]) -> Path:
    return write(path, "".join(json.dumps(record) + "\n" for record in records))


def test_csv_rows_are_read_in_order_with_quoted_commas_and_newlines(tmp_path: Path):
    path = write(tmp_path / "train.csv", 'text,label\n"a, b\nc",x\nplain   words,y\n\n')
    labelled = read_labelled_file(path)
    assert labelled.texts == ("a, b c", "plain words")  # whitespace (also the quoted newline) folded
    assert labelled.labels == ("x", "y")


def test_a_byte_order_mark_and_tab_separated_files_are_understood(tmp_path: Path):
    csv_path = tmp_path / "bom.csv"
    csv_path.write_bytes("\ufefftext,label\nhello there,a\n".encode())
    assert read_labelled_file(csv_path).labels == ("a",)
    tsv_path = write(tmp_path / "data.tsv", "sentence\tclass\nhello, there\tb\n")
    labelled = read_labelled_file(tsv_path, text_column="sentence", label_column="class")
    assert labelled.texts == ("hello, there",) and labelled.labels == ("b",)


def test_json_lines_accept_numeric_labels_as_class_names(tmp_path: Path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"text": "one", "label": 1}, {"text": "two", "label": 2.0}])
    assert read_labelled_file(path).labels == ("1", "2")


def test_a_file_without_a_known_suffix_is_recognised_by_its_first_character(tmp_path: Path):
    path = write_jsonl(tmp_path / "train.data", [{"text": "one", "label": "a"}])
    assert read_labelled_file(path).labels == ("a",)


@pytest.mark.parametrize("name", ["train.csv", "train.jsonl"])
def test_a_missing_column_names_the_column_the_available_ones_and_the_flag(tmp_path: Path, name: str):
    if name.endswith(".csv"):
        path = write(tmp_path / name, "sentence,label\nhello,a\n")
    else:
        path = write_jsonl(tmp_path / name, [{"sentence": "hello", "label": "a"}])
    with pytest.raises(UserError, match=rf"{name}:1: no column 'text' \(columns: 'sentence', 'label'\).*--text_column"):
        read_labelled_file(path)


def test_a_json_line_missing_the_label_is_reported_at_its_line(tmp_path: Path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "x"}, {"text": "b"}])
    with pytest.raises(UserError, match=r"t.jsonl:2: no column 'label'.*--label_column"):
        read_labelled_file(path)


def test_an_empty_label_is_an_error_at_its_line(tmp_path: Path):
    path = write(tmp_path / "train.csv", "text,label\nfine,a\nno class here,\n")
    with pytest.raises(UserError, match=r"train.csv:3: empty or invalid 'label'"):
        read_labelled_file(path)


def test_an_empty_text_is_an_error_at_its_line(tmp_path: Path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "  ", "label": "a"}])
    with pytest.raises(UserError, match=r"t.jsonl:1: empty 'text'"):
        read_labelled_file(path)


def test_a_broken_json_line_and_a_json_array_get_their_messages(tmp_path: Path):
    broken = write(tmp_path / "b.jsonl", '{"text": "a", "label": "x"}\n{"text": \n')
    with pytest.raises(UserError, match=r"b.jsonl:2: not valid JSON"):
        read_labelled_file(broken)
    array = write(tmp_path / "a.json", '[{"text": "a", "label": "x"}]\n')
    with pytest.raises(UserError, match=r"a.json:1: holds a JSON array; write one JSON object per line"):
        read_labelled_file(array)


def test_text_that_is_not_utf8_is_reported_at_its_line(tmp_path: Path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"text,label\ncaf\xe9 au lait,a\n")
    with pytest.raises(UserError, match=r"latin.csv:2: not valid UTF-8"):
        read_labelled_file(path)


def test_missing_and_empty_files_are_errors(tmp_path: Path):
    with pytest.raises(UserError, match=r"nope.csv: not found"):
        read_labelled_file(tmp_path / "nope.csv")
    with pytest.raises(UserError, match=r"empty.csv: is empty"):
        read_labelled_file(write(tmp_path / "empty.csv", ""))
    with pytest.raises(UserError, match=r"header.csv: holds no labelled rows"):
        read_labelled_file(write(tmp_path / "header.csv", "text,label\n"))


def test_a_test_class_without_training_examples_is_a_label_set_mismatch(tmp_path: Path):
    train = write(tmp_path / "train.csv", "text,label\none,a\ntwo,b\n")
    test = write(tmp_path / "test.csv", "text,label\none,a\ntwo,b\nthree,c\n")
    with pytest.raises(UserError, match=r"test.csv: label set mismatch, classes 'c' have no examples in .*train.csv"):
        read_probe_pair(train, test)


def test_a_training_class_that_is_empty_in_the_test_set_is_an_error(tmp_path: Path):
    train = write(tmp_path / "train.csv", "text,label\none,a\ntwo,b\nthree,c\n")
    test = write(tmp_path / "test.csv", "text,label\none,a\ntwo,b\n")
    with pytest.raises(UserError, match=r"label set mismatch, classes 'c' of .*train.csv are empty here"):
        read_probe_pair(train, test)


def test_a_single_class_cannot_train_a_classifier(tmp_path: Path):
    train = write(tmp_path / "train.csv", "text,label\none,a\ntwo,a\n")
    with pytest.raises(UserError, match=r"only one class \('a'\)"):
        read_probe_pair(train, train)


def test_class_names_are_sorted_and_shared(tmp_path: Path):
    train = read_labelled_file(write(tmp_path / "train.csv", "text,label\none,b\ntwo,a\n"))
    test = read_labelled_file(write(tmp_path / "test.csv", "text,label\nthree,a\nfour,b\n"))
    assert class_names(train, test) == ["a", "b"]
