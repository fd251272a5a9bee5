"""select: whole documents nearest to the task's texts, round-robin over task texts, within a budget, streamed."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from training_helpers import run_cli

from bert_domain_ft.cli import main
from bert_domain_ft.corpus import selection as corpus_selection
from bert_domain_ft.corpus.config import SelectConfig
from bert_domain_ft.corpus.selection import STOPWORDS, BM25Scorer, query_turns, select_documents
from bert_domain_ft.errors import UserError

TOPICS = {
    "kernel": "kernel module driver memory page cache lock thread scheduler interrupt".split(),
    "clinic": "patient dose clinical diagnosis therapy symptom nurse hospital ward fever".split(),
    "court": "court contract clause appeal judge verdict lawyer statute plaintiff damages".split(),
}
FILLER = "the a of to and in is it that for on with was".split()


def sentence(rng: random.Random, topic: str) -> str:
    words = [rng.choice(TOPICS[topic] + FILLER) for _ in range(rng.randint(4, 12))]
    return " ".join(words).capitalize() + "."


def write_corpus(path: Path, topics: list[str], seed: int = 0) -> Path:
    """One document per entry of ``topics``, 1–4 sentences each."""
    rng = random.Random(seed)
    documents = ["\n".join(sentence(rng, topic) for _ in range(rng.randint(1, 4))) for topic in topics]
    path.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    return path


def write_task(path: Path, topics: list[str], seed: int = 1) -> Path:
    rng = random.Random(seed)
    rows = [f"{' '.join(rng.choice(TOPICS[topic]) for _ in range(6))},{topic}" for topic in topics]
    path.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def raw_documents(data: bytes) -> list[bytes]:
    """The corpus's documents as raw bytes: their lines, line ends included, between blank lines."""
    documents, current = [], b""
    for line in data.removeprefix(b"\xef\xbb\xbf").splitlines(keepends=True):
        if line.strip():
            current += line
        elif current:
            documents.append(current)
            current = b""
    return documents + ([current] if current else [])


def select(tmp_path: Path, task: Path, corpus: Path, name: str = "selected.txt", **options) -> tuple[Path, dict]:
    output = tmp_path / name
    select_documents(SelectConfig(task, corpus, output, show_progress=False, **options))
    return output, json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8"))


def test_documents_of_the_task_topic_are_kept_first(tmp_path: Path) -> None:
    topics = ["clinic", "kernel"] * 30
    corpus = write_corpus(tmp_path / "corpus.txt", topics)
    task = write_task(tmp_path / "task.csv", ["kernel"] * 5)
    kernel = [index for index, topic in enumerate(topics) if topic == "kernel"]
    kernel_words = sum(len(raw_documents(corpus.read_bytes())[index].split()) for index in kernel)
    _, record = select(tmp_path, task, corpus, tokens=kernel_words // 2)
    assert set(record["kept_document_indices"]) < set(kernel)
    _, record = select(tmp_path, task, corpus, "all_kernel.txt", tokens=kernel_words)
    assert record["kept_document_indices"] == kernel


def test_every_task_text_gets_a_neighbour_not_only_the_majority_topic(tmp_path: Path) -> None:
    topics = ["kernel"] * 40 + ["court"] * 5 + ["clinic"] * 40
    corpus = write_corpus(tmp_path / "corpus.txt", topics)
    task = write_task(tmp_path / "task.csv", ["kernel"] * 9 + ["court"])
    _, record = select(tmp_path, task, corpus, tokens=300)
    assert record["queries_with_neighbours"] == record["queries"] == 10
    assert record["documents_per_query"][0] >= 1
    assert any(topics[index] == "court" for index in record["kept_document_indices"])


def test_kept_documents_are_whole_byte_identical_and_in_corpus_order(tmp_path: Path) -> None:
    # A byte-order mark, CRLF line ends, runs of blank (and whitespace-only) lines, no final line end.
    documents = [f"Kernel driver {i} holds a lock.\r\nThe page cache {i} is warm." for i in range(6)]
    documents += [f"Patient {i} got a dose." for i in range(6)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"\xef\xbb\xbf" + "\r\n \r\n\n".join(documents).encode("utf-8"))
    task = write_task(tmp_path / "task.csv", ["kernel"] * 3)
    output, record = select(tmp_path, task, corpus, fraction=0.6)
    inputs = raw_documents(corpus.read_bytes())
    kept = raw_documents(output.read_bytes())
    assert len(kept) == record["documents_kept"] > 1
    expected = [inputs[index] for index in record["kept_document_indices"]]
    assert [document.rstrip(b"\n") for document in kept] == [document.rstrip(b"\n") for document in expected]
    assert record["kept_document_indices"] == sorted(record["kept_document_indices"])


@pytest.mark.parametrize("budget", [{"tokens": 50}, {"tokens": 777}, {"fraction": 0.25}])
def test_the_budget_is_reached_and_crossed_by_less_than_one_document(tmp_path: Path, budget: dict) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt", ["kernel", "clinic", "court"] * 40)
    task = write_task(tmp_path / "task.csv", ["kernel", "clinic", "court"])
    output, record = select(tmp_path, task, corpus, **budget)
    words = [len(document.split()) for document in raw_documents(output.read_bytes())]
    total = len(corpus.read_bytes().split())
    assert record["budget_words"] == budget.get("tokens") or math.ceil(budget["fraction"] * total)
    assert sum(words) == record["words_kept"] >= record["budget_words"]
    assert record["words_kept"] - max(words) < record["budget_words"]


def test_selection_is_deterministic_and_ties_go_to_the_earlier_document(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Kernel lock.\n\nPatient dose.\n\nKernel lock.\n\nKernel lock.\n", encoding="utf-8")
    task = write_task(tmp_path / "task.csv", ["kernel"])
    task.write_text("text\nkernel lock\n", encoding="utf-8")
    first, record = select(tmp_path, task, corpus, "a.txt", tokens=2)
    second, _ = select(tmp_path, task, corpus, "b.txt", tokens=2)
    assert first.read_bytes() == second.read_bytes()
    assert record["kept_document_indices"] == [0]


def round_robin_reference(scores: np.ndarray, words: list[int], budget: int, turns: list[int]) -> list[int]:
    """The selection spelled out: full rankings (score down, index up), each query in turn adds its best untaken."""
    rankings = [[d for d in sorted(range(len(words)), key=lambda d: (-row[d], d)) if row[d] > 0] for row in scores.T]
    taken: list[int] = []
    while sum(words[d] for d in taken) < budget and any(rankings):
        for ranking in (rankings[query] for query in turns):
            while ranking and ranking[0] in taken:
                ranking.pop(0)
            if ranking and sum(words[d] for d in taken) < budget:
                taken.append(ranking.pop(0))
    return sorted(taken)


def test_selection_equals_round_robin_over_full_rankings_even_when_ranked_lists_are_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topics = ["kernel", "clinic", "court"] * 30
    corpus = write_corpus(tmp_path / "corpus.txt", topics)
    # Short first lists, and nine kernel queries sharing neighbours: their lists run dry, forcing deeper rescoring.
    monkeypatch.setattr(corpus_selection, "LIST_SLACK", 1)
    monkeypatch.setattr(corpus_selection, "LIST_EXTRA", 1)
    task = write_task(tmp_path / "task.csv", ["kernel"] * 9 + ["court"])
    _, record = select(tmp_path, task, corpus, tokens=1500)
    texts = [document.decode().replace("\n", " ") for document in raw_documents(corpus.read_bytes())]
    queries = [line.split(",")[0] for line in task.read_text().splitlines()[1:]]
    scorer = BM25Scorer.for_queries(queries, k1=1.2, b=0.75, keep_stopwords=False)
    frequency, terms = scorer.count_batch(texts)
    scorer.set_corpus_statistics(frequency, len(texts), terms)
    turns = list(query_turns(len(queries), seed=0))
    expected = round_robin_reference(scorer.score(texts), [len(text.split()) for text in texts], 1500, turns)
    assert record["scoring_passes"] > 1
    assert record["kept_document_indices"] == expected


def reference_bm25(query: list[str], documents: list[list[str]], k1: float, b: float) -> list[float]:
    average = sum(map(len, documents)) / len(documents)
    scores = []
    for document in documents:
        counts, score = Counter(document), 0.0
        for term in query:
            having = sum(term in other for other in documents)
            idf = math.log(1 + (len(documents) - having + 0.5) / (having + 0.5))
            tf = counts[term]
            score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(document) / average))
        scores.append(score)
    return scores


def test_bm25_scores_equal_the_textbook_formula() -> None:
    rng = random.Random(3)
    vocabulary = TOPICS["kernel"] + TOPICS["court"]
    documents = [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 30))) for _ in range(25)]
    queries = [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 6))) for _ in range(7)]
    scorer = BM25Scorer.for_queries(queries, k1=1.5, b=0.6, keep_stopwords=True)
    frequency, terms = scorer.count_batch(documents)
    scorer.set_corpus_statistics(frequency, len(documents), terms)
    expected = [reference_bm25(query.split(), [d.split() for d in documents], 1.5, 0.6) for query in queries]
    np.testing.assert_allclose(scorer.score(documents), np.array(expected).T, rtol=1e-12)


def test_stopwords_do_not_make_neighbours() -> None:
    scorer = BM25Scorer.for_queries(["the kernel of it"], k1=1.2, b=0.75, keep_stopwords=False)
    assert set(scorer.vocabulary) == {"kernel"} and "the" in STOPWORDS


MEMORY_PROBE = """
import sys, tracemalloc
from pathlib import Path
from bert_domain_ft.corpus import selection as corpus_selection
from bert_domain_ft.corpus.selection import query_turns, select_documents
from bert_domain_ft.corpus.config import SelectConfig
corpus_selection.BATCH_CHARACTERS = 20_000  # many batches at both sizes: what grows with the corpus shows
tracemalloc.start()
select_documents(SelectConfig(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), tokens=2000,
                              show_progress=False))
print(tracemalloc.get_traced_memory()[1])
assert "torch" not in sys.modules and "transformers" not in sys.modules, "torch imported"
"""


def test_memory_stays_flat_when_the_corpus_grows_four_times_and_bm25_needs_no_torch(tmp_path: Path) -> None:
    task = write_task(tmp_path / "task.csv", ["kernel", "clinic", "court"] * 10)
    peaks = []
    for copies in (1, 4):
        corpus = write_corpus(tmp_path / f"corpus{copies}.txt", ["kernel", "clinic", "court"] * 500 * copies)
        probe = [sys.executable, "-c", MEMORY_PROBE, str(task), str(corpus), str(tmp_path / f"out{copies}.txt")]
        result = subprocess.run(probe, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        peaks.append(int(result.stdout.split()[-1]))
    added_bytes = (tmp_path / "corpus4.txt").stat().st_size - (tmp_path / "corpus1.txt").stat().st_size
    assert peaks[1] - peaks[0] < added_bytes / 20, (peaks, added_bytes)  # holding the corpus would add it all


def test_embedding_method_keeps_a_task_texts_own_document(tmp_path: Path, tiny_encoder_dir: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt", ["kernel", "clinic", "court"] * 10)
    inputs = raw_documents(corpus.read_bytes())
    task = tmp_path / "task.jsonl"
    task.write_text(json.dumps({"text": inputs[7].decode().replace("\n", " ")}) + "\n", encoding="utf-8")
    output, record = select(tmp_path, task, corpus, tokens=1, method="embedding", bert_model=str(tiny_encoder_dir))
    assert record["kept_document_indices"] == [7]
    assert raw_documents(output.read_bytes()) == [inputs[7]]


def test_cli_prints_a_summary_and_writes_the_record(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt", ["kernel", "clinic"] * 10)
    task = write_task(tmp_path / "task.csv", ["kernel"] * 2)
    output = tmp_path / "selected.txt"
    arguments = ["select", "--task_data", str(task), "--corpus", str(corpus), "--output", str(output)]
    assert main([*arguments, "--fraction", "0.3", "--no_progress"]) == 0
    assert "documents kept" in capsys.readouterr().out
    record = json.loads((tmp_path / "selected.txt.json").read_text(encoding="utf-8"))
    assert record["method"] == "bm25" and record["fraction"] == 0.3 and record["kept_document_indices"]
    assert main([*arguments, "--tokens", "10", "--no_progress"]) == 2  # the output exists
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    "options, message",
    [
        ({"tokens": 10, "fraction": 0.5}, "exactly one budget"),
        ({}, "exactly one budget"),
        ({"fraction": 1.5}, r"--fraction must be in \(0, 1\]"),
        ({"tokens": 10, "method": "embedding"}, "needs --bert_model"),
        ({"tokens": 10, "method": "tfidf"}, "--method must be one of"),
    ],
)
def test_invalid_settings_are_refused_up_front(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SelectConfig(tmp_path / "t.csv", tmp_path / "c.txt", tmp_path / "o.txt", **options)


def test_a_corpus_line_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"Kernel lock.\n\nCaf\xe9 kernel.\n")
    task = write_task(tmp_path / "task.csv", ["kernel"])
    with pytest.raises(UserError, match=r"corpus\.txt:3: byte 4 of this line is not valid UTF-8"):
        select(tmp_path, task, corpus, tokens=5)
    assert not (tmp_path / "selected.txt").exists()


def test_a_task_file_sorted_by_label_does_not_give_the_budget_to_its_first_class(tmp_path: Path) -> None:
    topics = ["kernel", "court"] * 40
    corpus = write_corpus(tmp_path / "corpus.txt", topics)
    task = write_task(tmp_path / "task.csv", ["kernel"] * 10 + ["court"] * 10)
    _, record = select(tmp_path, task, corpus, tokens=150)  # fewer documents than task texts
    assert record["documents_kept"] < record["queries"]
    assert {topics[index] for index in record["kept_document_indices"]} == {"kernel", "court"}


def select_cli(capsys: pytest.CaptureFixture, task: Path, corpus: Path, output: Path, *more: str):
    arguments = ["select", "--task_data", str(task), "--corpus", str(corpus), "--output", str(output)]
    return run_cli(capsys, [*arguments, "--fraction", "0.3", "--no_progress", *more])


@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink", "record"])
def test_an_output_that_is_the_task_file_is_refused_however_it_is_spelled(
    tmp_path: Path, capsys: pytest.CaptureFixture, spelling: str
) -> None:
    """--output (or its <output>.json record) must never overwrite the labelled task file, even with --overwrite."""
    corpus = write_corpus(tmp_path / "corpus.txt", ["kernel", "clinic"] * 10)
    task = write_task(tmp_path / "task.csv", ["kernel"] * 2)
    before = task.read_bytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.csv").symlink_to(task)
    output = {"same": task, "dotdot": tmp_path / "sub" / ".." / "task.csv", "symlink": tmp_path / "link.csv",
              "record": tmp_path / "task"}[spelling]  # fmt: skip
    if spelling == "record":
        task = task.rename(tmp_path / "task.json")  # a JSON-lines task file named like select's record
        task.write_text('{"text": "kernel module driver"}\n', encoding="utf-8")
        before = task.read_bytes()
    status, error, _ = select_cli(capsys, task, corpus, output, "--overwrite")
    assert status == 2 and "--output would overwrite the --task_data file" in error
    assert task.read_bytes() == before


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_a_bm25_parameter_that_is_not_finite_or_out_of_range_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, value: str
) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt", ["kernel", "clinic"] * 10)
    task = write_task(tmp_path / "task.csv", ["kernel"] * 2)
    for flag in ("--k1", "--b"):
        status, error, _ = select_cli(capsys, task, corpus, tmp_path / "out.txt", flag, value)
        assert status == 2 and "BM25 needs a finite --k1 >= 0" in error
    assert not (tmp_path / "out.txt").exists()


def test_a_task_sharing_no_word_with_the_corpus_is_refused_not_an_empty_selection(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt", ["kernel", "clinic"] * 10)
    task = tmp_path / "task.csv"
    task.write_text("text,label\nzorblat quixit frammis,a\nvelloq snurp,b\n", encoding="utf-8")
    status, error, _ = select_cli(capsys, task, corpus, tmp_path / "out.txt")
    assert status == 2 and "no task text shares a word with the corpus" in error
    assert not (tmp_path / "out.txt").exists() and not (tmp_path / "out.txt.json").exists()
