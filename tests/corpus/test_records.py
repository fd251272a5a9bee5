"""Text kept as records: parquet files (written by pyarrow), ``datasets`` save_to_disk directories (written by
``datasets`` itself) and JSON lines, read in batches by every command that takes text; bad ones in one line."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
from tiny_assets import labelled_rows, synthetic_sentence, write_csv

from bert_domain_ft.cli import main
from bert_domain_ft.corpus import records
from bert_domain_ft.corpus.config import PrepareConfig
from bert_domain_ft.corpus.prepare import prepare_corpus
from bert_domain_ft.corpus.records import input_fingerprint, iter_record_rows
from bert_domain_ft.corpus.task_files import iter_task_texts, read_labelled_file, write_task_corpus
from bert_domain_ft.errors import UserError

NUM_DOCUMENTS = 40


def sentences(rng: random.Random, count: int) -> list[str]:
    return [synthetic_sentence(rng) for _ in range(count)]


def documents(seed: int = 0) -> list[dict]:
    """Rows of a dataset: an id, a title, and a text of 1-5 sentences."""
    rng = random.Random(seed)
    return [
        {"doc_id": index, "title": f"t{index}", "text": " ".join(sentences(rng, rng.randint(1, 5)))}
        for index in range(NUM_DOCUMENTS)
    ]


def write_parquet(path: Path, rows: list[dict], row_group_size: int = 7) -> Path:
    import pyarrow
    import pyarrow.parquet

    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), str(path), row_group_size=row_group_size)
    return path


def write_dataset(path: Path, rows: list[dict]) -> Path:
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def write_json_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("records")
    rows = documents()
    return {
        "parquet": write_parquet(root / "docs.parquet", rows),
        "dataset": write_dataset(root / "docs_dataset", rows),
        "json_lines": write_json_lines(root / "docs.jsonl", rows),
    }


@pytest.mark.parametrize("kind", ["parquet", "dataset"])
def test_every_row_comes_back_in_order_across_batches(kind: str, inputs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "BATCH_ROWS", 3)  # many batches (and row groups) even for 40 rows
    rows = list(iter_record_rows(inputs[kind], ("text", "doc_id")))
    assert rows == [(index + 1, [row["text"], row["doc_id"]]) for index, row in enumerate(documents())]


def test_reading_holds_one_row_group_not_the_file(tmp_path: Path) -> None:
    import pyarrow

    rng = random.Random(0)
    rows = [{"text": " ".join(sentences(rng, 8))} for _ in range(16000)]  # ~6 MB of text in 32 row groups
    path = write_parquet(tmp_path / "many_groups.parquet", rows, row_group_size=500)
    peak = 0
    for _ in iter_record_rows(path, ("text",)):
        peak = max(peak, pyarrow.total_allocated_bytes())
    assert peak < 0.2 * sum(len(row["text"]) for row in rows)  # a few row groups at most, never the whole file


def test_prepare_reads_parquet_datasets_directories_and_json_lines_alike(inputs, tmp_path: Path) -> None:
    outputs = []
    for kind, path in inputs.items():
        config = PrepareConfig(inputs=(path,), output=tmp_path / f"{kind}.txt", text_field="text", show_progress=False)
        report = prepare_corpus(config)
        assert report.documents_written == NUM_DOCUMENTS and report.input_files == 1
        outputs.append(config.output.read_text(encoding="utf-8"))
    assert outputs[0] == outputs[1] == outputs[2]
    assert outputs[0].split("\n\n")[0].replace("\n", " ").strip() == documents()[0]["text"]


@pytest.mark.parametrize("kind", ["parquet", "dataset", "json_lines"])
def test_task_texts_and_probe_files_read_every_kind(kind: str, inputs, tmp_path: Path) -> None:
    texts = [row.text for row in iter_task_texts(inputs[kind], "text")]
    assert texts == [row["text"] for row in documents()]
    labelled = [{"text": text, "label": label} for text, label in labelled_rows(4, seed=1)]
    writer = {"parquet": write_parquet, "dataset": write_dataset, "json_lines": write_json_lines}[kind]
    suffix = {"parquet": ".parquet", "dataset": "", "json_lines": ".jsonl"}[kind]
    probe = read_labelled_file(writer(tmp_path / f"probe{suffix}", labelled))
    reference = read_labelled_file(write_csv(tmp_path / "probe.csv", labelled_rows(4, seed=1)))
    assert (probe.texts, probe.labels) == (reference.texts, reference.labels)


def test_rows_of_one_document_field_value_make_one_document(tmp_path: Path) -> None:
    sentences = [{"doc": index // 3, "sentence": f"Sentence {index} is here."} for index in range(12)]
    path = write_parquet(tmp_path / "sentences.parquet", sentences)
    stats = write_task_corpus(path, "sentence", tmp_path / "corpus.txt", document_column="doc")
    assert (stats.rows, stats.documents, stats.sentences) == (12, 4, 12)
    blocks = (tmp_path / "corpus.txt").read_text(encoding="utf-8").strip().split("\n\n")
    assert blocks[1].splitlines() == [f"Sentence {index} is here." for index in (3, 4, 5)]


def test_a_dataset_directory_is_fingerprinted_by_its_files(tmp_path: Path) -> None:
    first = input_fingerprint(write_dataset(tmp_path / "a", documents(0)))
    assert first == input_fingerprint(write_dataset(tmp_path / "b", documents(0)))
    assert first != input_fingerprint(write_dataset(tmp_path / "c", documents(1)))


def one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in "\n".join(lines)
    return lines[-1]


def test_a_corrupt_parquet_file_is_one_line(inputs, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(inputs["parquet"].read_bytes()[:-200])  # cut short: the footer is gone
    message = one_line_error(["prepare", str(broken), "--output", str(tmp_path / "c.txt"), "--no_progress"], capsys)
    assert str(broken) in message and "not a readable parquet file" in message


def test_a_missing_text_field_is_one_line_naming_the_columns(inputs, tmp_path: Path, capsys) -> None:
    for path in (inputs["parquet"], inputs["dataset"]):
        argv = ["prepare", str(path), "--output", str(tmp_path / "c.txt"), "--text_field", "body", "--no_progress"]
        message = one_line_error(argv, capsys)
        assert f"{path}: no column 'body' (columns: 'doc_id', 'title', 'text'); name it with --text_field" in message


def test_a_dataset_dict_names_its_splits(tmp_path: Path) -> None:
    import datasets

    splits = {"train": datasets.Dataset.from_list(documents()), "test": datasets.Dataset.from_list(documents(1))}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(UserError, match=r"a DatasetDict \(splits: test, train\); give one split's directory"):
        list(iter_task_texts(tmp_path / "dict", "text"))


def test_without_pyarrow_parquet_input_is_one_line(inputs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(UserError, match=r"needs pyarrow; pip install 'bert_domain_ft\[datasets\]'"):
        list(iter_record_rows(inputs["parquet"], ("text",)))
