"""pregenerate and simple take a corpus kept as records (parquet, a datasets directory, JSON lines)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tiny_assets import synthetic_sentence
from training_helpers import run_cli

from bert_domain_ft.cli import main
from bert_domain_ft.data.config import PregenerateConfig
from bert_domain_ft.data.pregenerate import pregenerate


def sentence_rows(num_documents: int = 30, seed: int = 0) -> list[dict]:
    """One sentence per row; ``doc`` says which document it belongs to (2-6 sentences each)."""
    rng = random.Random(seed)
    return [
        {"doc": f"d{document}", "sentence": synthetic_sentence(rng)}
        for document in range(num_documents)
        for _ in range(rng.randint(2, 6))
    ]


def test_pregenerate_from_parquet_rows_grouped_into_documents(tmp_path: Path, tiny_bert_dir: Path) -> None:
    import pyarrow
    import pyarrow.parquet

    rows = sentence_rows()
    path = tmp_path / "sentences.parquet"
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), str(path), row_group_size=16)
    config = PregenerateConfig(
        train_corpus=path, output_dir=tmp_path / "data", bert_model=str(tiny_bert_dir), epochs_to_generate=1,
        max_seq_len=64, text_field="sentence", document_field="doc", show_progress=False,
        holdout_fraction=0.0,
    )  # fmt: skip
    manifest = pregenerate(config)
    assert manifest["corpus"]["documents"] == 30 and manifest["corpus"]["sentences"] == len(rows)
    assert manifest["generation"]["records"] == {"text_field": "sentence", "document_field": "doc"}
    written = (tmp_path / "data" / "corpus_corpus.txt").read_text(encoding="utf-8").split("\n\n")
    assert written[0].splitlines() == [row["sentence"] for row in rows if row["doc"] == "d0"]


def test_simple_trains_on_a_datasets_directory(tmp_path: Path, tiny_bert_dir: Path) -> None:
    import datasets

    rows = sentence_rows(seed=1)
    texts = {}
    for row in rows:  # one document per row: the sentences of a document joined
        texts.setdefault(row["doc"], []).append(row["sentence"])
    directory = tmp_path / "dataset"
    datasets.Dataset.from_list([{"body": " ".join(value)} for value in texts.values()]).save_to_disk(str(directory))
    output = tmp_path / "run"
    arguments = ["simple", "--train_corpus", str(directory), "--text_field", "body", "--bert_model",
                 str(tiny_bert_dir), "--output_dir", str(output), "--max_steps", "2", "--train_batch_size", "8",
                 "--max_seq_length", "32", "--no_cuda", "--no_progress", "--on_memory"]  # fmt: skip
    assert main(arguments) == 0
    assert (output / "model.safetensors").is_file() and (output / "README.md").is_file()
    corpus = (output / "train_corpus.txt").read_text(encoding="utf-8").strip().split("\n\n")
    assert len(corpus) == len(texts)
    arguments_file = json.loads((output / "training_args.json").read_text())
    assert arguments_file["text_field"] == "body"


def test_a_missing_document_field_is_one_line(tmp_path: Path, tiny_bert_dir: Path, capsys) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in sentence_rows()), encoding="utf-8")
    arguments = ["pregenerate", "--train_corpus", str(path), "--text_field", "sentence", "--document_field",
                 "section", "--bert_model", str(tiny_bert_dir), "--output_dir", str(tmp_path / "out")]  # fmt: skip
    assert main(arguments) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"error: {path}:1: no column 'section' (columns: 'doc', 'sentence'); name it with --document_field"


def test_a_datasets_directory_is_one_corpus_not_a_directory_of_corpora(tmp_path: Path) -> None:
    import datasets

    from bert_domain_ft.data.config import corpora_from_text

    datasets.Dataset.from_list([{"text": "One text."}, {"text": "Two."}]).save_to_disk(str(tmp_path / "dataset"))
    assert corpora_from_text([str(tmp_path / "dataset")]) == tmp_path / "dataset"


@pytest.mark.parametrize("name", ["../../evil", "ABSOLUTE", ".hidden", "a/b", "a b"])
def test_a_corpus_name_that_would_write_outside_the_output_directory_is_refused(
    tmp_path: Path, tiny_bert_dir: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """NAME=FILE names the records' corpus file NAME_corpus.txt in --output_dir: no name may leave it, from the
    command line or from a shared --config file."""
    name = str(tmp_path / "evil") if name == "ABSOLUTE" else name
    rows = tmp_path / "work" / "rows.jsonl"
    rows.parent.mkdir()
    rows.write_text("".join(json.dumps(row) + "\n" for row in sentence_rows()), encoding="utf-8")
    output = tmp_path / "work" / "out"
    arguments = ["--bert_model", str(tiny_bert_dir), "--output_dir", str(output), "--text_field", "sentence",
                 "--epochs_to_generate", "1", "--max_seq_len", "32", "--no_progress"]  # fmt: skip
    config = tmp_path / "shared.yaml"
    config.write_text(json.dumps({"train_corpus": [f"{name}={rows}", f"other={rows}"]}), encoding="utf-8")
    for source in (["--train_corpus", f"{name}={rows}", f"other={rows}"], ["--config", str(config)]):
        status, error, _ = run_cli(capsys, ["pregenerate", *source, *arguments])
        assert status == 2 and f"the corpus name {name!r} may hold only letters, digits" in error
    assert sorted(path.name for path in tmp_path.rglob("*_corpus.txt*")) == []


def test_corpus_names_of_letters_digits_dashes_and_dots_are_kept(tmp_path: Path) -> None:
    from bert_domain_ft.data.config import corpora_from_text

    given = ["zul=a.txt", "en-GB.v2=b.txt", "nb_NO=c.txt", "Ελληνικά=d.txt"]
    config = PregenerateConfig(
        train_corpus=corpora_from_text(given), output_dir=tmp_path, bert_model="m", holdout_fraction=0.0
    )
    assert list(config.train_corpus) == ["zul", "en-GB.v2", "nb_NO", "Ελληνικά"]
