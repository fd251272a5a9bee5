"""``vocab extend``: [unused] slots first, then growth; each added word one token, text round-trips; the new rows
are their pieces' mean; the result loads and trains like any model; a bad word list gets one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import vocabulary_assets
from training_helpers import load_weights, make_pregenerated, quick_config, run_cli

from bert_domain_ft.cli import main
from bert_domain_ft.corpus.config import VocabExtendConfig
from bert_domain_ft.corpus.vocabulary_extension import extend_vocabulary
from bert_domain_ft.model.vocabulary import EXTENSION_RECORD, fresh_rows

SLOTS = [1, 2, 3, 4]  # vocabulary_assets puts [unused0..3] right after [PAD]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return vocabulary_assets.write_model(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return vocabulary_assets.write_domain_corpus(tmp_path_factory.mktemp("domain") / "corpus.txt")


@pytest.fixture(scope="module")
def grown(base_dir: Path, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Six words into four slots: two grow the vocabulary."""
    output = tmp_path_factory.mktemp("grown") / "model"
    config = VocabExtendConfig(
        corpus=corpus, bert_model=str(base_dir), add=6, min_count=1, output=output, show_progress=False
    )
    report = extend_vocabulary(config)
    return output, report.to_json()


def test_unused_slots_are_filled_first_in_order_then_the_vocabulary_grows(grown, base_dir: Path) -> None:
    output, report = grown
    size = len(vocabulary_assets.vocabulary())
    record = json.loads((output / EXTENSION_RECORD).read_text())
    ids = [entry["id"] for entry in record["added"]]
    assert ids == [*SLOTS, size, size + 1]
    assert [entry["slot"] for entry in record["added"]] == [
        "[unused0]",
        "[unused1]",
        "[unused2]",
        "[unused3]",
        None,
        None,
    ]
    assert json.loads((output / "config.json").read_text())["vocab_size"] == size + 2 == report["vocab_size"]
    assert fresh_rows(output) == tuple(sorted(ids)) and fresh_rows(base_dir) == ()
    # the costliest word first: hypercholesterolemia (18 pieces) takes the first slot
    assert record["added"][0]["token"] == "hypercholesterolemia"


def test_within_the_slots_vocabulary_and_parameter_count_are_unchanged(
    base_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    report = extend_vocabulary(
        VocabExtendConfig(
            corpus=corpus, bert_model=str(base_dir), add=4, min_count=1, output=tmp_path / "m", show_progress=False
        )
    ).to_json()
    assert report["vocab_size"] == report["vocab_size_before"] == len(vocabulary_assets.vocabulary())
    assert report["parameters"] == report["parameters_before"]
    assert report["corpus_tokens"] < report["corpus_tokens_before"]
    assert load_weights(tmp_path / "m").keys() == load_weights(base_dir).keys()


def test_an_added_word_is_one_token_and_text_round_trips(grown, base_dir: Path) -> None:
    from transformers import AutoTokenizer

    output, report = grown
    old, new = AutoTokenizer.from_pretrained(str(base_dir)), AutoTokenizer.from_pretrained(str(output))
    text = "The Writeback of a mutex, hypercholesterolemia and pthreads (syscall)!"
    ids = new(text, add_special_tokens=False)["input_ids"]
    for entry in report["words"]:
        if entry["word"] in text.lower():
            assert ids.count(entry["id"]) == 1
    assert new.convert_ids_to_tokens(ids)[:2] == ["the", "writeback"]
    assert new.tokenize("pthreads") == ["pthread", "##s"]  # a new word also starts longer words
    assert new.decode(ids) == old.decode(old(text, add_special_tokens=False)["input_ids"])
    assert len(ids) < len(old(text, add_special_tokens=False)["input_ids"])


def test_new_rows_are_the_mean_of_their_pieces_and_old_rows_are_untouched(grown, base_dir: Path) -> None:
    output, report = grown
    before, after = load_weights(base_dir), load_weights(output)
    record = json.loads((output / EXTENSION_RECORD).read_text())
    for name in ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias"):
        for entry in record["added"]:
            assert torch.allclose(after[name][entry["id"]], before[name][entry["pieces"]].mean(dim=0), atol=1e-6)
        old = [i for i in range(before[name].shape[0]) if i not in SLOTS]
        assert torch.equal(after[name][old], before[name][old])


def test_the_extended_model_reloads_trains_and_saves(grown, corpus: Path, tmp_path: Path) -> None:
    from transformers import BertForPreTraining

    from bert_domain_ft.training.recipe import finetune

    output, report = grown
    data = make_pregenerated(corpus, output, tmp_path / "data", epochs=1, max_seq_len=32)
    run = finetune(quick_config(data, output, tmp_path / "run", max_steps=2, train_batch_size=8, head_warmup_steps=0))
    trained = BertForPreTraining.from_pretrained(str(run))
    assert trained.config.vocab_size == report["vocab_size"]
    assert fresh_rows(run) == ()  # trained rows are no longer fresh


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("mutex\nwriteback\nMutex\n", "words.txt:3: 'mutex' repeats line 1; keep one"),
        ("mutex\nkernel\n", "words.txt:2: 'kernel' is a token of the vocabulary already; remove it"),
        ("pthread_mutex_lock\n", "words.txt:1: 'pthread_mutex_lock' is 5 pre-tokens (pthread _ mutex _ lock)"),
        ("mutex\n", "words.txt: lists 1 words but --add asks for 2; lower --add"),
    ],
)
def test_a_bad_word_list_gets_one_line_naming_the_file(
    base_dir: Path, corpus: Path, tmp_path: Path, capsys, lines: str, message: str
) -> None:
    words = tmp_path / "words.txt"
    words.write_text(lines, encoding="utf-8")
    arguments = ["vocab", "extend", str(corpus), "--bert_model", str(base_dir), "--add", "2", "--words", str(words)]
    assert main([*arguments, "--output", str(tmp_path / "out"), "--no_progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and message in error
    assert not (tmp_path / "out").exists()


def test_more_words_than_qualify_get_one_line_saying_how_many_do(
    base_dir: Path, corpus: Path, tmp_path: Path, capsys
) -> None:
    arguments = ["vocab", "extend", str(corpus), "--bert_model", str(base_dir), "--add", "500", "--min_pieces", "3"]
    assert main([*arguments, "--output", str(tmp_path / "out"), "--no_progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "only 5 words qualify but --add asks for 500; lower --add to 5" in error


def test_extending_an_extended_model_keeps_the_first_extensions_fresh_rows_and_an_absolute_base(
    grown, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second extension's record lists the first one's rows too (untrained, they still need their warm-up),
    and names the base model by its absolute path, valid from any working directory."""
    first, _ = grown
    words = tmp_path / "words.txt"
    words.write_text("writebacks\n", encoding="utf-8")
    monkeypatch.chdir(first.parent)
    arguments = ["vocab", "extend", str(corpus), "--bert_model", first.name, "--add", "1", "--words", str(words)]
    assert main([*arguments, "--output", str(tmp_path / "second"), "--no_progress"]) == 0
    earlier = json.loads((first / EXTENSION_RECORD).read_text())
    record = json.loads((tmp_path / "second" / EXTENSION_RECORD).read_text())
    assert [entry["token"] for entry in record["added"]] == [e["token"] for e in earlier["added"]] + ["writebacks"]
    assert fresh_rows(tmp_path / "second") == tuple(sorted(entry["id"] for entry in record["added"]))
    assert record["base_model"] == earlier["base_model"] and Path(record["base_model"]).is_absolute()
    assert record["vocab_size_before"] == earlier["vocab_size_before"] < record["vocab_size"]


def test_a_word_list_that_is_not_utf8_names_its_line(base_dir: Path, corpus: Path, tmp_path: Path, capsys) -> None:
    words = tmp_path / "words.txt"
    words.write_bytes(b"mutex\ncaf\xe9\n")
    arguments = ["vocab", "extend", str(corpus), "--bert_model", str(base_dir), "--add", "1", "--words", str(words)]
    status, error, _ = run_cli(capsys, [*arguments, "--output", str(tmp_path / "out"), "--no_progress"])
    assert status == 2 and error == f"error: {words}:2: byte 4 of this line is not valid UTF-8; save the file as UTF-8"
    assert not (tmp_path / "out").exists()


def test_a_terminal_that_is_not_utf8_gets_the_report_escaped_not_a_traceback(
    base_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    """The report's "→" and the words cannot be encoded in latin-1: the extended model was already written."""
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "bert_domain_ft", "vocab", "extend", str(corpus), "--bert_model", str(base_dir),
               "--add", "2", "--min_count", "1", "--output", str(tmp_path / "out"), "--no_progress"]  # fmt: skip
    environment = {**os.environ, "PYTHONIOENCODING": "latin-1"}
    result = subprocess.run(command, capture_output=True, env=environment, timeout=300, check=False)
    assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr.decode("latin-1")[-2000:]
    assert b"vocabulary" in result.stdout and b"\\u2192" in result.stdout


def test_the_record_names_the_base_model_by_its_absolute_path(
    base_dir: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(base_dir.parent)
    arguments = ["vocab", "extend", str(corpus), "--bert_model", base_dir.name, "--add", "1", "--min_count", "1"]
    assert main([*arguments, "--output", str(tmp_path / "out"), "--no_progress"]) == 0
    assert json.loads((tmp_path / "out" / EXTENSION_RECORD).read_text())["base_model"] == str(base_dir.resolve())
