"""How ``selection`` scores a batch of documents against every task text: BM25 or embedding cosine.

A scorer turns a list of document texts into a ``(documents, queries)`` float64 matrix; higher is nearer, and a
score at or below ``minimum_score`` means "no neighbour". ``BM25Scorer`` is numpy only (no torch) and needs the
corpus's document frequencies first (``count_batch`` on every batch, then ``set_corpus_statistics``);
``EmbeddingScorer`` imports torch and transformers when it is built.

    scorer = BM25Scorer.for_queries(task_texts, k1=1.2, b=0.75, keep_stopwords=False)
    scores = scorer.score(["first document text", "second document text"])  # (2, len(task_texts))
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from bert_domain_ft.errors import UserError, first_line

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

        from bert_domain_ft.model.loading import usable_positions
        from bert_domain_ft.model.pretraining import quiet_transformers

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
