"""``check``: every problem it lists is caught with its line number, and its verdict matches pregeneration's."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from bert_domain_ft.cli import main
from bert_domain_ft.corpus.check import check_corpus
from bert_domain_ft.corpus.reading import iter_documents
from bert_domain_ft.data.document_store import build_document_store
from bert_domain_ft.errors import UserError
from bert_domain_ft.model.tokenizer import describe_tokenizer, encode_sentences, load_tokenizer

LONG_SENTENCE = " ".join(["the kernel module"] * 20) + "."  # 60 words: far over 32 - 3 tokens


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.fixture()
def flawed_corpus(tmp_path: Path) -> Path:
    """Each problem ``check`` reports, at a known line (numbers in the comments)."""
    return write_lines(
        tmp_path / "flawed.txt",
        [
            b"The first document starts here.",  # 1
            b"It has a second sentence.",  # 2
            b"",  # 3
            b"A document of one sentence.",  # 4  single-sentence document
            b"",  # 5
            "\u200b".encode(),  # 6  empty sentence, and an empty document (starts here)
            b"",  # 7
            b"Caf\xe9 is Latin-1, not UTF-8.",  # 8  not UTF-8
            LONG_SENTENCE.encode(),  # 9  too long for max_seq_len 32
            b"\x00\x01",  # 10 empty sentence (no token)
            b"Last line \xff\xfe too.",  # 11 not UTF-8
        ],
    )


def test_a_well_formed_corpus_is_accepted_and_described_exactly(tiny_corpus, tiny_tokenizer_dir):
    report = check_corpus(tiny_corpus, str(tiny_tokenizer_dir), max_seq_len=128)
    documents = [[line.text for line in document] for document in iter_documents(tiny_corpus)]
    sizes = [len(document) for document in documents]
    assert report.accepted and report.rejection_reasons == []
    assert report.documents == report.documents_with_text == len(documents)
    assert report.sentences == sum(sizes)
    assert report.sentences_per_document == {"min": min(sizes), "median": statistics.median(sizes), "max": max(sizes)}
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir))
    assert report.tokens == sum(len(ids) for ids in encode_sentences(tokenizer, [s for d in documents for s in d]))
    assert report.single_sentence_documents.count == sizes.count(1)
    assert report.invalid_utf8_lines.count == report.empty_documents.count == 0


def test_each_problem_is_reported_with_its_line_number(flawed_corpus, tiny_tokenizer_dir):
    report = check_corpus(flawed_corpus, str(tiny_tokenizer_dir), max_seq_len=32)
    assert report.invalid_utf8_lines.lines == [8, 11]  # all of them, not just the first
    assert report.sentences_too_long.lines == [9]
    assert report.empty_sentences.lines == [6, 10]
    assert report.empty_documents.lines == [6]
    assert report.single_sentence_documents.lines == [4, 9]  # line 9 is the only readable sentence with tokens
    assert (report.documents, report.documents_with_text, report.sentences) == (4, 3, 8)
    assert not report.accepted
    assert any("not valid UTF-8 (first: line 8)" in reason for reason in report.rejection_reasons)


def test_without_a_tokenizer_tokens_are_not_counted_but_structure_is_checked(flawed_corpus):
    report = check_corpus(flawed_corpus)
    assert report.tokens is None and report.sentences_too_long.count == 0
    assert report.empty_documents.lines == [6] and report.invalid_utf8_lines.lines == [8, 11]
    assert "not counted (give --bert_model)" in report.format()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"\n  \n\n", "0 document(s) with text"),
        (b"One document.\nStill the same one.\n", "1 document(s) with text"),
        (b"Real text.\n\n\x00\x01\n", "1 document(s) with text"),  # the second document tokenizes to nothing
    ],
)
def test_corpora_that_pregeneration_rejects_are_rejected_for_the_same_reason(
    tmp_path, tiny_tokenizer_dir, content, reason
):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    report = check_corpus(path, str(tiny_tokenizer_dir))
    assert not report.accepted and reason in "; ".join(report.rejection_reasons)
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir))
    with pytest.raises(UserError):
        build_document_store(path, tokenizer, describe_tokenizer(tokenizer, "tiny"), show_progress=False)


def test_an_accepted_corpus_is_one_pregeneration_reads(tmp_path, tiny_tokenizer_dir):
    path = write_lines(tmp_path / "corpus.txt", [b"\xef\xbb\xbfFirst one.", b"", b"  ", b"Second one.\r", b"More."])
    report = check_corpus(path, str(tiny_tokenizer_dir))
    assert report.accepted and report.documents == 2 and report.sentences == 3
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir))
    store = build_document_store(path, tokenizer, describe_tokenizer(tokenizer, "tiny"), show_progress=False)
    assert store.num_documents == report.documents_with_text and store.num_tokens == report.tokens


def test_cli_exit_status_is_zero_only_when_pregeneration_accepts(tiny_corpus, flawed_corpus, tmp_path, capsys):
    assert main(["check", str(tiny_corpus), "--no_progress"]) == 0
    table = capsys.readouterr().out
    assert "pregeneration accepts it" in table and table.rstrip().endswith("yes")
    assert main(["check", str(flawed_corpus), "--no_progress"]) == 1
    table = capsys.readouterr().out
    assert "lines 8, 11" in table and "NO:" in table
    assert main(["check", str(tmp_path / "missing.txt"), "--no_progress", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["rejection_reasons"] == ["the file does not exist"]


def test_cli_check_with_a_tokenizer_prints_json_with_all_findings(flawed_corpus, tiny_tokenizer_dir, capsys):
    arguments = ["check", str(flawed_corpus), "--bert_model", str(tiny_tokenizer_dir), "--max_seq_len", "32"]
    assert main([*arguments, "--json", "--no_progress"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["sentences_too_long"] == {"count": 1, "lines": [9]}
    assert report["accepted"] is False


def test_an_unloadable_tokenizer_is_a_user_error(tiny_corpus, tmp_path, capsys):
    assert main(["check", str(tiny_corpus), "--bert_model", str(tmp_path / "no_model"), "--no_progress"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def corpus_commands(pipe: Path, tmp_path: Path, model: Path, other: Path) -> dict[str, list[str]]:
    """Commands reading a corpus (or task file) more than once, each given the pipe."""
    select = ["select", "--output", str(tmp_path / "s.txt"), "--fraction", "0.5", "--no_progress"]
    return {
        "check": ["check", str(pipe), "--no_progress"],
        "pregenerate": [
            "pregenerate",
            "--train_corpus",
            str(pipe),
            "--bert_model",
            str(model),
            "--output_dir",
            str(tmp_path / "out"),
            "--no_progress",
        ],  # fmt: skip
        "select corpus": [*select, "--task_data", str(other), "--corpus", str(pipe)],
        "select task": [*select, "--task_data", str(pipe), "--corpus", str(other)],
        "tokenizer": ["tokenizer", str(pipe), "--output", str(tmp_path / "tok"), "--no_progress"],
        "evaluate": ["evaluate", "--model", str(model), "--corpus", str(pipe), "--no_progress"],
    }


@pytest.mark.parametrize("command", ["check", "pregenerate", "select corpus", "select task", "tokenizer", "evaluate"])
def test_a_pipe_is_said_to_be_one_that_cannot_be_read_twice_not_an_empty_file(
    tmp_path: Path, tiny_corpus: Path, tiny_bert_dir: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """`--train_corpus <(cat corpus.txt)` names /dev/fd/N, a pipe: its size is 0, but it is not empty."""
    import os

    from training_helpers import run_cli

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)  # nobody writes to it: a command that opened it would wait forever
    status, error, _ = run_cli(capsys, corpus_commands(pipe, tmp_path, tiny_bert_dir, tiny_corpus)[command])
    assert status == 2 and error == (
        f"error: {pipe}: is a pipe or a device, not a file, and it is read more than once; save it to a file first "
        "(e.g. `cat … > corpus.txt`)"
    )
