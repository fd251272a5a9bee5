"""``vocab extend``: [unused] slots first, then growth; each added word one token, text round-trips; the new rows
are their pieces' mean; the result loads and trains like any model; a bad word list gets one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import vocabulary_assets
from training_helpers import load_weights, make_pregenerated, quick_config

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
