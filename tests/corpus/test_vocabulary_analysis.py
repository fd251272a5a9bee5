"""``vocab analyse``: words are the tokenizer's own pre-tokens, their pieces are counted exactly, and the costliest
words come first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import vocabulary_assets

from bert_domain_ft.cli import main
from bert_domain_ft.corpus.config import VocabAnalyseConfig
from bert_domain_ft.corpus.vocabulary import analyse_vocabulary, choose_words, count_words, split_words
from bert_domain_ft.errors import UserError
from bert_domain_ft.model.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return vocabulary_assets.write_model(tmp_path_factory.mktemp("slotted"), with_heads=False)


def test_figures_count_every_piece_of_every_word(model_dir: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("Mutex writeback mutex.\n\nThe mutex\n", encoding="utf-8")
    report = analyse_vocabulary(
        VocabAnalyseConfig(corpus=corpus, bert_model=str(model_dir), top=2, max_seq_len=8, show_progress=False)
    )
    # mutex: m ##u ##t ##e ##x (5), writeback: write ##b ##a ##c ##k (5), ".": 1, the: 1 → 3×5 + 5 + 1 + 1 = 22
    assert (report.words, report.distinct_words, report.tokens) == (6, 4, 22)
    assert report.pieces_per_word == pytest.approx(22 / 6)
    assert report.continuation_share == pytest.approx((22 - 6) / 22)
    assert report.sequences_per_mb == pytest.approx(22 * 1e6 / corpus.stat().st_size / (8 - 3))
    assert [(w.word, w.count, len(w.pieces)) for w in report.fragmented] == [("mutex", 3, 5), ("writeback", 1, 5)]
    assert report.to_json()["most_fragmented"][0] == {
        "word": "mutex",
        "count": 3,
        "pieces": list(report.fragmented[0].pieces),
    }


def test_words_joined_by_punctuation_are_several_pre_tokens(model_dir: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("pthread_mutex_lock(m)\n", encoding="utf-8")
    counts = count_words(corpus, load_tokenizer(str(model_dir)))
    assert counts.words == {"pthread": 1, "_": 2, "mutex": 1, "lock": 1, "(": 1, "m": 1, ")": 1}


def test_candidates_rank_by_tokens_saved_and_skip_tokens_short_and_rare_words(model_dir: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("mutex mutex writeback writeback writeback kernel kernel kernels kernels kernels zq\n", "utf-8")
    tokenizer = load_tokenizer(str(model_dir))
    counts = count_words(corpus, tokenizer)
    splits = split_words(tokenizer, counts.words)
    ranked = choose_words(counts, splits, tokenizer.get_vocab(), min_pieces=2, min_count=2, unk="[UNK]")
    # writeback 3 × 4 saved, mutex 2 × 4, kernels (kernel ##s) 3 × 1; kernel is a token; zq occurs once
    assert [(w.word, w.tokens_saved) for w in ranked] == [("writeback", 12), ("mutex", 8), ("kernels", 3)]
    assert [w.word for w in choose_words(counts, splits, tokenizer.get_vocab(), 3, 2, "[UNK]")] == [
        "writeback",
        "mutex",
    ]


def test_the_command_prints_json_and_refuses_an_empty_corpus(model_dir: Path, tmp_path: Path, capsys) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("mutex writeback\n", encoding="utf-8")
    assert main(["vocab", "analyse", str(corpus), "--bert_model", str(model_dir), "--json", "--no_progress"]) == 0
    values = json.loads(capsys.readouterr().out)
    assert values["tokens"] == 10 and values["most_fragmented"][0]["word"] in ("mutex", "writeback")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(UserError, match="no text"):
        analyse_vocabulary(VocabAnalyseConfig(corpus=empty, bert_model=str(model_dir), show_progress=False))


def test_a_corpus_given_as_a_pipe_is_read_as_a_stream(model_dir: Path, tmp_path: Path) -> None:
    """`vocab analyse <(cat corpus.txt)`: the corpus is read once, so a pipe does (it has no size to check)."""
    import os
    import threading

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Kernels schedule threads.\nThreads hold locks.\n\nLocks guard memory.\n", encoding="utf-8")
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    writer = threading.Thread(target=lambda: pipe.write_bytes(corpus.read_bytes()), daemon=True)
    writer.start()
    piped = analyse_vocabulary(VocabAnalyseConfig(pipe, str(model_dir), show_progress=False))
    writer.join()
    from_file = analyse_vocabulary(VocabAnalyseConfig(corpus, str(model_dir), show_progress=False))
    assert {**piped.to_json(), "corpus": ""} == {**from_file.to_json(), "corpus": ""}
