"""task_text: reading a task's unlabelled text (CSV, TSV, JSON lines, plain text) and writing it as a corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bert_domain_ft.corpus.reading import iter_documents
from bert_domain_ft.corpus.task_files import iter_task_texts, task_file_format, write_task_corpus
from bert_domain_ft.errors import UserError

TEXTS = [
    "The court dismissed the appeal. Costs were awarded to the respondent.",
    "A contract clause, quoted in full, limits liability.",
    'She said "no, not yet"; the hearing was adjourned.',
]


def write_csv(path: Path, rows: list[tuple[str, str]], delimiter: str = ",") -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(["label", "text"])
        writer.writerows(rows)
    return path


def texts_of(path: Path, text_column: str = "text") -> list[str]:
    return [row.text for row in iter_task_texts(path, text_column)]


@pytest.mark.parametrize("suffix, delimiter", [(".csv", ","), (".tsv", "\t")])
def test_csv_and_tsv_texts_are_read_in_file_order(tmp_path: Path, suffix: str, delimiter: str) -> None:
    path = write_csv(tmp_path / f"task{suffix}", [("pos", text) for text in TEXTS], delimiter)
    assert texts_of(path) == TEXTS


def test_a_quoted_multi_line_csv_field_is_one_text_with_folded_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "task.csv"
    path.write_text('text,label\n"first line\nsecond   line",a\nplain,b\n', encoding="utf-8")
    rows = list(iter_task_texts(path))
    assert [row.text for row in rows] == ["first line second line", "plain"]
    assert [row.line_number for row in rows] == [2, 4]


def test_json_lines_texts_are_read(tmp_path: Path) -> None:
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(json.dumps({"sentence": text, "label": 1}) for text in TEXTS) + "\n", "utf-8")
    assert texts_of(path, "sentence") == TEXTS


def test_plain_text_without_blank_lines_is_one_text_per_line(tmp_path: Path) -> None:
    path = tmp_path / "task.txt"
    path.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    assert texts_of(path) == TEXTS
    assert task_file_format(path) == "plain"


def test_plain_text_with_blank_lines_is_read_as_corpus_documents(tmp_path: Path) -> None:
    path = tmp_path / "task.txt"
    path.write_text("One sentence.\nTwo sentence.\n\n\nThird document.\n", encoding="utf-8")
    rows = list(iter_task_texts(path))
    assert [row.sentences for row in rows] == [("One sentence.", "Two sentence."), ("Third document.",)]
    assert [row.text for row in rows] == ["One sentence. Two sentence.", "Third document."]
    assert [row.line_number for row in rows] == [1, 5]


def test_labels_are_never_read(tmp_path: Path) -> None:
    # Labels missing, empty, of odd types or absent as a column: the texts read the same.
    csv_path = tmp_path / "task.csv"
    csv_path.write_text("text\nfirst text\nsecond text\n", encoding="utf-8")
    jsonl_path = tmp_path / "task.jsonl"
    records = [{"text": "first text", "label": None}, {"text": "second text", "label": [1, {"x": 2}]}, {"text": ""}]
    jsonl_path.write_text("\n".join(json.dumps(record) for record in records) + "\n", encoding="utf-8")
    assert texts_of(csv_path) == texts_of(jsonl_path) == ["first text", "second text"]


def test_written_corpus_has_one_document_per_row_split_into_sentences(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "task.csv", [("a", text) for text in TEXTS] + [("b", "   ")])
    output = tmp_path / "task_corpus.txt"
    stats = write_task_corpus(path, "text", output)
    documents = [[line.text for line in document] for document in iter_documents(output)]
    assert len(documents) == stats.documents == 3
    assert (stats.rows, stats.empty_rows_skipped) == (4, 1)
    assert documents[0] == ["The court dismissed the appeal.", "Costs were awarded to the respondent."]
    assert [" ".join(document) for document in documents] == TEXTS  # nothing lost, nothing added
    assert stats.sentences == sum(len(document) for document in documents)
    assert stats.characters == sum(len(line) for document in documents for line in document)
    assert "label" not in output.read_text(encoding="utf-8") and "Punkt" in stats.sentence_splitter


def test_corpus_format_input_keeps_its_own_sentences(tmp_path: Path) -> None:
    path = tmp_path / "task.txt"
    path.write_text("Dr. Smith came. He left.\nAnother line.\n\nSecond doc.\n", encoding="utf-8")
    output = tmp_path / "out.txt"
    stats = write_task_corpus(path, "text", output)
    assert output.read_text(encoding="utf-8") == "Dr. Smith came. He left.\nAnother line.\n\nSecond doc.\n"
    assert (stats.documents, stats.sentences) == (2, 3)


def test_long_sentences_are_cut_not_dropped(tmp_path: Path) -> None:
    path = tmp_path / "task.txt"
    path.write_text(("word " * 300).strip() + "\n", encoding="utf-8")
    stats = write_task_corpus(path, "text", tmp_path / "out.txt", max_sentence_chars=100)
    lines = (tmp_path / "out.txt").read_text(encoding="utf-8").splitlines()
    assert stats.long_sentences_split == 1 and all(len(line) <= 100 for line in lines)
    assert " ".join(lines) == ("word " * 300).strip()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("t.csv", b"label,sentence\na,hello\n", r"t\.csv:1: no column 'text' \(columns: 'label', 'sentence'\)"),
        ("t.jsonl", b'{"text": "ok"}\n{"text": "broken"\n', r"t\.jsonl:2: not valid JSON"),
        ("t.jsonl", b'{"text": "ok"}\n\n{"label": 1}\n', r"t\.jsonl:3: no column 'text'"),
        ("t.jsonl", b'{"text": 12}\n', r"t\.jsonl:1: 'text' is not text"),
        ("t.jsonl", b'["a", "b"]\n', r"t\.jsonl:1: holds a JSON array"),
        ("t.csv", b"text\nfine\ncaf\xe9\n", r"t\.csv:3: byte 4 of this line is not valid UTF-8"),
        ("t.txt", b"fine\n\xff\n", r"t\.txt:2: byte 1 of this line is not valid UTF-8"),
        ("t.csv", b"", r"t\.csv: is empty"),
        ("t.csv", b"text,label\n", r"t\.csv: holds no task text"),
        ("t.csv", b'text\n"open quote\n', r"t\.csv:\d+: not valid CSV"),
        ("t.csv", b"label,text\na\n", r"t\.csv:2: has 1 fields but 'text' is field 2"),
    ],
)
def test_bad_input_is_one_line_naming_file_and_line(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as raised:
        list(iter_task_texts(path))
    assert "\n" not in str(raised.value)


def test_a_failed_write_leaves_no_output(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("text,label\n,a\n", encoding="utf-8")
    output = tmp_path / "out.txt"
    with pytest.raises(UserError, match="holds no task text"):
        write_task_corpus(path, "text", output)
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        ("pregenerate --task_data", "--task_text_column"),
        ("pregenerate --train_corpus", "--text_field"),
        ("simple --task_data", "--task_text_column"),
        ("simple --train_corpus", "--text_field"),
        ("select --task_data", "--text_column"),
    ],
)
def test_a_missing_text_column_names_the_flag_the_command_has(
    tmp_path: Path, tiny_corpus: Path, tiny_bert_dir: Path, capsys: pytest.CaptureFixture[str], command: str, flag: str
) -> None:
    """Every reader of rows advised --text_column, which pregenerate and simple do not have."""
    from training_helpers import run_cli

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"body": "The kernel frees a page."}\n{"body": "A lock guards it."}\n', encoding="utf-8")
    name, given = command.split()
    corpus, task = (str(rows), []) if given == "--train_corpus" else (str(tiny_corpus), ["--task_data", str(rows)])
    model = ["--bert_model", str(tiny_bert_dir)]
    arguments = {
        "pregenerate": ["--train_corpus", corpus, *task, *model, "--output_dir", str(tmp_path / "out")],
        "simple": ["--train_corpus", corpus, *task, *model, "--output_dir", str(tmp_path / "out")],
        "select": [*task, "--corpus", corpus, "--output", str(tmp_path / "out.txt"), "--fraction", "0.5"],
    }[name]
    status, error, _ = run_cli(capsys, [name, *arguments, "--no_progress"])
    assert (status, error) == (2, f"error: {rows}:1: no column 'text' (columns: 'body'); name it with {flag}")
