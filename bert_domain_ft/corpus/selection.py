r"""``select``: the domain documents nearest to a task's texts (kNN-TAPT, Gururangan et al. 2020), streamed.

Every task text (``task_files.iter_task_texts``) is a query. Each query ranks the corpus's documents; documents are then taken
round-robin over the queries (in a fixed random order), each query adding its best document not yet taken,
until the kept documents' words reach the budget (the last one may cross it). So every task text gets
neighbours, not only the majority topic. Whole documents are kept, byte for byte, in corpus order, so NSP pairs stay within real documents.

Bounded memory, for corpora larger than RAM: the corpus is streamed (one batch of documents in memory) and only
the ranked candidates are kept, ``(score, document index, byte offset, byte length, words)`` for each query's
``k`` best, ``k`` sized from the budget (about four times the documents it takes, shared over the queries). If a
query runs out of candidates before the budget is filled, scoring is redone with a 4× larger ``k``; the result is
exactly that of unlimited lists (up to ``MAX_CANDIDATES`` entries in all, beyond which a warning says the budget
may stay unfilled). The chosen documents are then copied by offset. The task texts themselves
(queries) are held in memory: a task's labelled data is small.

Methods (a scorer turns a batch of document texts into a ``(documents, queries)`` float64 matrix, higher is
nearer; at or below its ``minimum_score`` means "no neighbour"):

* ``bm25``: Okapi BM25 (``k1``, ``b``) with the always-positive idf ``log(1 + (N - n + 0.5) / (n + 0.5))``, over
  lower-cased ``\w+`` words, a small built-in stopword list dropped. Two streaming passes: document frequencies
  of the queries' terms and the average document length, then scores (a sparse term-id batch times the queries'
  postings, in numpy). Libraries such as ``bm25s`` index the whole corpus in memory, which is what must not
  happen here. No torch.
* ``embedding``: cosine similarity of the base model's mean-pooled last hidden states (the first 256 tokens of a
  document, from its first 4,096 characters), exact: each batch of documents times all query vectors. For a few
  thousand queries a matmul is fast; an approximate index (faiss) would only add a dependency.

The budget counts whitespace-separated words for both methods (the model's tokenizer is not used for it: the
unit must not depend on the method; WordPiece makes about 1.3 tokens of an English word). Ties are broken by
document index, so the selection is deterministic. ``<output>.json`` records the method, budget and kept indices.
``BM25Scorer`` and the streaming are numpy only; ``EmbeddingScorer`` imports torch and transformers when built.

    report = select_documents(SelectConfig(Path("train.csv"), Path("corpus.txt"), Path("selected.txt"), tokens=10**6))
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from bert_domain_ft.corpus.config import SelectConfig, selection_record_path
from bert_domain_ft.corpus.reading import bounded_lines, open_corpus_checked
from bert_domain_ft.corpus.task_files import SELECT_TEXT_FLAG, iter_task_texts
from bert_domain_ft.errors import UserError, at_location, first_line
from bert_domain_ft.files import atomic_output, write_json_atomic

logger = logging.getLogger(__name__)

SCORES_PER_BATCH = 2_000_000  # documents × queries scored at once: 16 MB of float64
EMBEDDING_BATCH_DOCUMENTS = 256
COUNTING_BATCH_DOCUMENTS = 4096
BATCH_CHARACTERS = 2_000_000  # a batch also ends when its texts reach this: long documents stay bounded too
MAX_CANDIDATES = 10_000_000  # queries × k entries of the ranked lists (40 bytes each): deeper lists are refused
COPY_CHUNK_BYTES = 1 << 20
# First ranked lists hold LIST_SLACK × (documents the budget takes) / queries + LIST_EXTRA entries per query:
# generous, as memory is cheap here and another scoring pass (an embedding pass above all) is not.
LIST_SLACK = 4
LIST_EXTRA = 16


EMBEDDED_TOKENS = 256  # of a document's start; fewer if the model has fewer positions
EMBEDDED_CHARACTERS = 16 * EMBEDDED_TOKENS  # text handed to the tokenizer: always more than 256 tokens' worth
EMBEDDING_BATCH_TEXTS = 16  # 16 × 256 tokens: attention scores of ~50 MB per layer for a 12-head model
_WORD = re.compile(r"\w+")
STOPWORDS = frozenset(
    "a about after all also am an and any are as at be been being but by can could did do does for from had has "
    "have he her here him his how i if in into is it its just may me more most my no not of on once only or other "
    "our out over she should so some such than that the their them then there these they this those through to "
    "too under up very was we were what when where which while who why will with would you your".split()
)


@dataclass
class SelectionReport:
    """What ``select`` kept; ``queries_*`` describe how many documents each task text added."""

    method: str
    budget_words: int
    documents_total: int = 0
    documents_kept: int = 0
    words_total: int = 0
    words_kept: int = 0
    queries: int = 0
    queries_with_neighbours: int = 0
    queries_without_match: int = 0  # BM25: no word in common with any document
    documents_per_query: tuple[int, int, float] = (0, 0, 0.0)  # min, max, mean added by one query
    candidates_per_query: int = 0  # the k each query's ranked list was cut at
    scoring_passes: int = 0
    seconds: float = 0.0
    kept_document_indices: list[int] = field(default_factory=list)  # 0-based, in corpus order

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        low, high, mean = self.documents_per_query
        rows = [
            ("documents kept", f"{self.documents_kept:,} / {self.documents_total:,}"),
            ("words kept", f"{self.words_kept:,} (budget {self.budget_words:,} of {self.words_total:,})"),
            ("task texts with neighbours", f"{self.queries_with_neighbours:,} / {self.queries:,}"),
            ("documents per task text", f"min {low}, mean {mean:.1f}, max {high}"),
            ("task texts without any match", f"{self.queries_without_match:,}"),
            ("seconds", f"{self.seconds:.1f} ({self.scoring_passes} scoring pass(es))"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def select_documents(config: SelectConfig) -> SelectionReport:
    """Write the corpus documents nearest to the task's texts to ``config.output``; see the module docstring."""
    started = time.perf_counter()
    _check_output_free(config.output, config.overwrite)
    open_corpus_checked(config.corpus)
    queries = [row.text for row in iter_task_texts(config.task_data, config.text_column, SELECT_TEXT_FLAG)]
    if config.method == "bm25":
        scorer: Scorer = BM25Scorer.for_queries(queries, config.k1, config.b, config.keep_stopwords)
    else:
        assert config.bert_model is not None
        scorer = EmbeddingScorer(config.bert_model, queries)
    totals = _count_corpus(config.corpus, scorer, config.show_progress)
    if totals.documents == 0:
        raise UserError(at_location(config.corpus, None, "holds no document with text; nothing to select from"))
    budget_words = config.tokens or math.ceil((config.fraction or 1.0) * totals.words)
    expected_documents = budget_words / max(totals.words / max(totals.documents, 1), 1.0)
    k = min(totals.documents, math.ceil(LIST_SLACK * expected_documents / len(queries)) + LIST_EXTRA)
    lists, choice, k, passes = _choose(
        config.corpus, scorer, len(queries), totals.documents, budget_words, k, config.seed, config.show_progress
    )
    if not choice.taken:  # only BM25 can find no neighbour at all: embeddings make every document one
        raise UserError(
            at_location(config.task_data, None, "no task text shares a word with the corpus (common words aside), so "
                        "nothing is selected; check --corpus and --text_column, or use --method embedding")
        )  # fmt: skip
    _write_documents(config.corpus, config.output, choice)
    added = choice.added_per_query
    report = SelectionReport(
        method=config.method,
        budget_words=budget_words,
        documents_total=totals.documents,
        documents_kept=len(choice.taken),
        words_total=totals.words,
        words_kept=choice.words,
        queries=len(queries),
        queries_with_neighbours=int((added > 0).sum()),
        queries_without_match=int((lists.entries[:, 0, 0] < 0).sum()),
        documents_per_query=(int(added.min()), int(added.max()), float(added.mean())),
        candidates_per_query=k,
        scoring_passes=passes,
        kept_document_indices=sorted(choice.taken),
    )
    report.seconds = time.perf_counter() - started
    settings = {"task_data": str(config.task_data), "corpus": str(config.corpus), "tokens": config.tokens}
    settings |= {"fraction": config.fraction, "bert_model": config.bert_model, "k1": config.k1, "b": config.b}
    settings |= {"keep_stopwords": config.keep_stopwords, "seed": config.seed}
    write_json_atomic(selection_record_path(config.output), {"method": config.method, **settings, **report.to_json()})
    return report


def _check_output_free(output: Path, overwrite: bool) -> None:
    if overwrite:
        return
    for path in (output, selection_record_path(output)):
        if path.exists():
            raise UserError(at_location(path, None, "already exists; pass --overwrite or choose another --output"))


@dataclass
class _CorpusTotals:
    documents: int = 0
    words: int = 0


def _count_corpus(corpus: Path, scorer: Scorer, show_progress: bool) -> _CorpusTotals:
    """Pass 1: documents and words; for BM25 also the queries' document frequencies and the mean length."""
    totals = _CorpusTotals()
    frequency, terms = None, 0
    batches = _iter_batches(corpus, COUNTING_BATCH_DOCUMENTS, "counting", show_progress)
    for batch in batches:
        totals.documents += len(batch.texts)
        totals.words += int(batch.words.sum())
        if isinstance(scorer, BM25Scorer):
            batch_frequency, batch_terms = scorer.count_batch(batch.texts)
            frequency = batch_frequency if frequency is None else frequency + batch_frequency
            terms += batch_terms
    if isinstance(scorer, BM25Scorer) and frequency is not None:
        scorer.set_corpus_statistics(frequency, totals.documents, terms)
    return totals


def _choose(
    corpus: Path,
    scorer: Scorer,
    queries: int,
    documents: int,
    budget_words: int,
    k: int,
    seed: int,
    show_progress: bool,
) -> tuple[_RankedLists, _Choice, int, int]:
    """Rank with ``k`` candidates per task text, deepening the lists until the round robin fills the budget (or
    the memory bound stops it); returns the lists, the choice, the final k and the number of scoring passes."""
    passes = 0
    while True:
        lists = _rank(corpus, scorer, queries, k, show_progress)
        passes += 1
        deeper = min(4 * k, documents)
        exact = deeper > k and queries * deeper <= MAX_CANDIDATES
        choice = _round_robin(lists, budget_words, query_turns(queries, seed), exact)
        if choice is not None:
            break
        logger.info("a task text ran out of its %d candidates before the budget was filled: k=%d", k, deeper)
        k = deeper
    if queries * 4 * k > MAX_CANDIDATES and choice.words < budget_words:
        logger.warning("ranked lists cut at %d documents per task text (memory bound); the budget may be unfilled", k)
    return lists, choice, k, passes


def _rank(corpus: Path, scorer: Scorer, num_queries: int, k: int, show_progress: bool) -> _RankedLists:
    """Pass 2: score every document against every query, keeping each query's ``k`` best."""
    lists = _RankedLists(num_queries, k)
    if isinstance(scorer, BM25Scorer):
        batch_documents = max(16, min(4096, SCORES_PER_BATCH // num_queries))
    else:
        batch_documents = EMBEDDING_BATCH_DOCUMENTS
    for batch in _iter_batches(corpus, batch_documents, f"scoring (k={k})", show_progress):
        lists.add(batch, scorer.score(batch.texts), scorer.minimum_score)
    return lists


class _RankedLists:
    """Each query's ``k`` best documents so far, best first (ties: lower document index first); -1 pads."""

    def __init__(self, num_queries: int, k: int):
        self.k = k
        self.scores = np.full((num_queries, k), -np.inf)
        # document index, byte offset, byte length, words: one (Q, k, 4) table so they move together
        self.entries = np.full((num_queries, k, 4), -1, dtype=np.int64)

    def add(self, batch: _Batch, scores: np.ndarray, minimum_score: float) -> None:
        """Merge a batch's (documents, queries) ``scores`` in; only rows that gain a document are touched."""
        by_query = scores.T  # (Q, B)
        gains = (by_query > self.scores[:, -1:]) & (by_query > minimum_score)
        rows = np.flatnonzero(gains.any(axis=1))
        if len(rows) == 0:
            return
        size = len(batch.texts)
        indices = np.arange(batch.first_index, batch.first_index + size)
        batch_entries = np.stack([indices, batch.offsets, batch.lengths, batch.words], axis=1)  # (B, 4)
        merged_scores = np.concatenate([self.scores[rows], np.where(gains[rows], by_query[rows], -np.inf)], axis=1)
        merged = np.concatenate([self.entries[rows], np.broadcast_to(batch_entries, (len(rows), size, 4))], axis=1)
        order = np.lexsort((merged[:, :, 0], -merged_scores), axis=-1)[:, : self.k]
        self.scores[rows] = np.take_along_axis(merged_scores, order, axis=1)
        kept = np.take_along_axis(merged, order[:, :, None], axis=1)
        kept[~np.isfinite(self.scores[rows])] = -1
        self.entries[rows] = kept


def query_turns(num_queries: int, seed: int) -> np.ndarray:
    """The order in which task texts take their turn in every round: a fixed random permutation, so that a task
    file sorted by label does not let its first class take the whole budget."""
    return np.random.default_rng(seed).permutation(num_queries)


@dataclass
class _Choice:
    taken: dict[int, tuple[int, int, int]]  # document index → (byte offset, byte length, words)
    words: int
    added_per_query: np.ndarray  # (Q,) documents each query added


def _round_robin(lists: _RankedLists, budget_words: int, turns: np.ndarray, exact: bool) -> _Choice | None:
    """In rounds, each query (in ``turns`` order) takes its best untaken document, until the budget is reached.

    None when ``exact`` and a query's cut list ran dry before that: its later neighbours are unknown.
    """
    documents = lists.entries[:, :, 0]
    taken: dict[int, tuple[int, int, int]] = {}
    added = np.zeros(len(documents), dtype=np.int64)
    cursors = np.zeros(len(documents), dtype=np.int64)
    words = 0
    active = [int(query) for query in turns if documents[query, 0] >= 0]
    while active and words < budget_words:
        still_active = []
        for query in active:
            if words >= budget_words:
                break
            row, cursor = documents[query], int(cursors[query])
            while cursor < lists.k and row[cursor] >= 0 and int(row[cursor]) in taken:
                cursor += 1
            if cursor == lists.k or row[cursor] < 0:
                if exact and cursor == lists.k:
                    return None
                continue
            _, offset, length, document_words = (int(value) for value in lists.entries[query, cursor])
            taken[int(row[cursor])] = (offset, length, document_words)
            words += document_words
            added[query] += 1
            cursors[query] = cursor + 1
            still_active.append(query)
        active = still_active
    return _Choice(taken, words, added)


def _write_documents(corpus: Path, output: Path, choice: _Choice) -> None:
    """Copy the chosen documents by offset, in corpus order, a blank line between them, atomically."""
    with atomic_output(output) as target, open(corpus, "rb") as source:
        for number, index in enumerate(sorted(choice.taken)):
            offset, remaining, _ = choice.taken[index]
            target.write(b"\n" if number else b"")
            source.seek(offset)
            last = b""
            while remaining > 0:
                chunk = source.read(min(COPY_CHUNK_BYTES, remaining))
                if not chunk:
                    raise UserError(at_location(corpus, None, "changed while documents were selected; run again"))
                target.write(chunk)
                remaining -= len(chunk)
                last = chunk[-1:]
            target.write(b"" if last == b"\n" else b"\n")  # the corpus's last line may lack its line end


@dataclass(frozen=True)
class _Batch:
    """Consecutive corpus documents: their byte spans (first line start to last line end), words and text."""

    first_index: int
    offsets: np.ndarray  # (B,) int64
    lengths: np.ndarray  # (B,) int64 bytes
    words: np.ndarray  # (B,) int64 whitespace-separated words
    texts: list[str]


def _iter_batches(path: Path, batch_documents: int, description: str, show_progress: bool) -> Iterator[_Batch]:
    """The corpus in batches of whole documents, streamed, with a progress bar over bytes."""
    open_corpus_checked(path)
    spans: list[tuple[int, int, int]] = []
    texts: list[str] = []
    lines: list[str] = []
    start = end = position = first_index = batch_characters = 0
    progress = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=description, disable=not show_progress)
    with progress, open(path, "rb") as handle:
        for number, raw in enumerate(bounded_lines(handle, path), start=1):
            line_start, position = position, position + len(raw)
            progress.update(len(raw))
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw, line_start = raw[3:], 3
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError as error:
                problem = f"byte {error.start + 1} of this line is not valid UTF-8; re-encode the corpus as UTF-8"
                raise UserError(at_location(path, number, problem)) from None
            if text:
                start = start if lines else line_start
                lines.append(text)
                end = position
            elif lines:
                joined = " ".join(lines)
                spans.append((start, end - start, len(joined.split())))
                texts.append(joined)
                lines = []
                batch_characters += len(joined)
                if len(texts) == batch_documents or batch_characters >= BATCH_CHARACTERS:
                    yield _make_batch(first_index, spans, texts)
                    first_index += len(texts)
                    spans, texts, batch_characters = [], [], 0
        if lines:
            joined = " ".join(lines)
            spans.append((start, end - start, len(joined.split())))
            texts.append(joined)
        if texts:
            yield _make_batch(first_index, spans, texts)


def _make_batch(first_index: int, spans: list[tuple[int, int, int]], texts: list[str]) -> _Batch:
    offsets, lengths, words = np.array(spans, dtype=np.int64).reshape(-1, 3).T
    return _Batch(first_index, offsets, lengths, words, texts)


class Scorer(Protocol):
    minimum_score: float  # a document scoring at most this is no neighbour of the query

    def score(self, texts: list[str]) -> np.ndarray:
        """(documents, queries) float64 similarity of each text to each query."""
        ...


def words_for_bm25(text: str, keep_stopwords: bool) -> list[str]:
    """Lower-cased runs of letters, digits and underscores, the built-in stopwords dropped unless kept."""
    words = _WORD.findall(text.lower())
    return words if keep_stopwords else [word for word in words if word not in STOPWORDS]


class BM25Scorer:
    """Okapi BM25 of documents against fixed queries, through the queries' postings (term id → query, count)."""

    minimum_score = 0.0  # no word in common

    def __init__(self, vocabulary: dict[str, int], postings: np.ndarray, num_queries: int, settings: dict[str, Any]):
        self.vocabulary = vocabulary  # the queries' terms only: nothing else can score
        # postings: (P, 3) int64 rows (term id, query, count) sorted by term; term_starts is its CSR index.
        self.term_starts = np.searchsorted(postings[:, 0], np.arange(len(vocabulary) + 1))
        self.posting_queries = postings[:, 1]
        self.posting_counts = postings[:, 2].astype(np.float64)
        self.num_queries = num_queries
        self.k1, self.b, self.keep_stopwords = settings["k1"], settings["b"], settings["keep_stopwords"]
        self.idf = np.zeros(len(vocabulary))
        self.average_length = 1.0

    @classmethod
    def for_queries(cls, queries: Sequence[str], k1: float, b: float, keep_stopwords: bool) -> BM25Scorer:
        vocabulary: dict[str, int] = {}
        postings = []
        for query, text in enumerate(queries):
            for term, count in Counter(words_for_bm25(text, keep_stopwords)).items():
                postings.append((vocabulary.setdefault(term, len(vocabulary)), query, count))
        table = np.array(sorted(postings), dtype=np.int64).reshape(-1, 3)
        return cls(vocabulary, table, len(queries), {"k1": k1, "b": b, "keep_stopwords": keep_stopwords})

    def _term_counts(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(document, term id, count) of the query terms in ``texts``, and every text's length in terms."""
        rows, term_ids, counts, lengths = [], [], [], []
        for row, text in enumerate(texts):
            terms = words_for_bm25(text, self.keep_stopwords)
            lengths.append(len(terms))
            for term, count in Counter(terms).items():
                term_id = self.vocabulary.get(term)
                if term_id is not None:
                    rows.append(row)
                    term_ids.append(term_id)
                    counts.append(count)
        return (
            np.array(rows, np.int64),
            np.array(term_ids, np.int64),
            np.array(counts, np.float64),
            np.array(lengths, np.float64),
        )

    def count_batch(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """Pass 1: for each query term, how many of ``texts`` hold it; and the texts' total length in terms."""
        _, term_ids, _, lengths = self._term_counts(texts)
        return np.bincount(term_ids, minlength=len(self.vocabulary)), int(lengths.sum())

    def set_corpus_statistics(self, document_frequency: np.ndarray, num_documents: int, num_terms: int) -> None:
        # The "+1 inside the log" idf stays positive for terms in over half the documents (Okapi's may go negative).
        self.idf = np.log1p((num_documents - document_frequency + 0.5) / (document_frequency + 0.5))
        self.average_length = max(num_terms / max(num_documents, 1), 1e-9)

    def score(self, texts: list[str]) -> np.ndarray:
        rows, term_ids, counts, lengths = self._term_counts(texts)
        norm = self.k1 * (1 - self.b + self.b * lengths[rows] / self.average_length)
        weights = self.idf[term_ids] * counts * (self.k1 + 1) / (counts + norm)
        # Each (document, term) meets every query holding the term: expand it along the term's postings.
        starts = self.term_starts[term_ids]
        repeats = self.term_starts[term_ids + 1] - starts
        first_output = np.cumsum(repeats) - repeats
        positions = np.arange(int(repeats.sum())) + np.repeat(starts - first_output, repeats)
        cells = np.repeat(rows, repeats) * self.num_queries + self.posting_queries[positions]
        values = np.repeat(weights, repeats) * self.posting_counts[positions]
        scores = np.bincount(cells, weights=values, minlength=len(texts) * self.num_queries)
        return scores.reshape(len(texts), self.num_queries)


class EmbeddingScorer:
    """Cosine similarity of mean-pooled last hidden states (``transformers.AutoModel``), exact (one matmul)."""

    minimum_score = -math.inf  # every document is someone's neighbour

    def __init__(self, bert_model: str, queries: Sequence[str]):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from bert_domain_ft.model.loading import check_model_files, usable_positions
        from bert_domain_ft.model.pretraining import quiet_transformers

        check_model_files(bert_model)  # a missing directory, damaged or unsafe weights: one line
        try:
            with quiet_transformers():
                self.tokenizer = AutoTokenizer.from_pretrained(bert_model)
                self.model = AutoModel.from_pretrained(bert_model)
        except (OSError, ValueError, KeyError) as error:
            raise UserError(f"{bert_model}: cannot load the model and tokenizer ({first_line(error)})") from None
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.eval().to(self.device)
        self.max_tokens = min(EMBEDDED_TOKENS, usable_positions(self.model.config))
        self.queries = self.embed(list(queries))  # (Q, H) float32, unit length

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), hidden) unit vectors; texts are embedded shortest first to pad little."""
        import torch

        order = np.argsort([len(text) for text in texts], kind="stable")
        vectors = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        for start in range(0, len(texts), EMBEDDING_BATCH_TEXTS):
            chosen = order[start : start + EMBEDDING_BATCH_TEXTS]
            batch = [texts[index][:EMBEDDED_CHARACTERS] for index in chosen]
            encoded = self.tokenizer(
                batch, truncation=True, max_length=self.max_tokens, padding=True, return_tensors="pt"
            ).to(self.device)
            with torch.inference_mode():
                hidden = self.model(**encoded).last_hidden_state.float()  # (B, L, H)
            mask = encoded["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            vectors[chosen] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return vectors

    def score(self, texts: list[str]) -> np.ndarray:
        return (self.embed(texts) @ self.queries.T).astype(np.float64)
