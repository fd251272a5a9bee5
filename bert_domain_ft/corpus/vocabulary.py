"""``vocab analyse``: how a tokenizer splits a domain's words, and which words deserve a token of their own.

A *word* here is one pre-token: what the tokenizer's own normaliser and pre-tokenizer make of the text before its
subword model runs (BERT: lower-cased, split at whitespace and at every punctuation character, so
``pthread_mutex_lock`` is the five words ``pthread _ mutex _ lock``). A vocabulary entry can only ever match
inside one pre-token, so these are the units a new token can replace. Each distinct word is split by the subword
model once; counts multiply. Nothing here imports torch.

Fragmentation figures (``FragmentationReport``): pieces per word, the share of pieces that continue a word, the
most fragmented frequent words ranked by frequency × pieces (the tokens they cost), and training sequences per MB
of text (tokens per MB over the text places of a ``max_seq_len`` sequence). ``choose_words`` ranks candidates for
new tokens by the tokens they would save, frequency × (pieces − 1).

    counts = count_words(Path("corpus.txt"), tokenizer)
    report = measure_fragmentation(counts, split_words(tokenizer, counts.words), "corpus.txt", "bert", 128)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from bert_domain_ft.corpus.config import VocabAnalyseConfig
from bert_domain_ft.corpus.reading import iter_corpus_lines
from bert_domain_ft.errors import UserError
from bert_domain_ft.model.tokenizer import load_tokenizer

# [CLS] A [SEP] B [SEP]: the places of a training sequence that hold no text (as in ``check``).
SPECIAL_TOKENS_PER_SEQUENCE = 3
BYTES_PER_MB = 1_000_000


@dataclass(frozen=True)
class WordCounts:
    """The pre-tokens of a text and how often each occurs, and the text's size in UTF-8 bytes."""

    words: Counter[str]
    num_bytes: int


def count_words(path: Path, tokenizer: Any, show_progress: bool = False) -> WordCounts:
    """Occurrences of every pre-token of the non-blank lines of ``path``, after ``tokenizer``'s normaliser."""
    backend = tokenizer.backend_tokenizer
    normalizer, pre_tokenizer = backend.normalizer, backend.pre_tokenizer
    counts: Counter[str] = Counter()
    end = 0
    with tqdm(total=Path(path).stat().st_size if Path(path).is_file() else None, unit="B", unit_scale=True,
              desc="counting words", disable=not show_progress) as bar:  # fmt: skip
        for line in iter_corpus_lines(path, read_once=True):  # a pipe will do
            text = normalizer.normalize_str(line.text) if normalizer is not None else line.text
            words = pre_tokenizer.pre_tokenize_str(text) if pre_tokenizer is not None else [(text, None)]
            counts.update(word for word, _ in words)
            bar.update(line.end_byte - end)
            end = line.end_byte
    return WordCounts(counts, end)


def split_words(tokenizer: Any, words: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Each word → the pieces the tokenizer's subword model splits it into."""
    model = tokenizer.backend_tokenizer.model
    return {word: tuple(token.value for token in model.tokenize(word)) for word in words}


def unknown_token(tokenizer: Any) -> str | None:
    """The subword model's unknown token ("[UNK]" for BERT), None when it has none (byte-level BPE)."""
    return getattr(tokenizer.backend_tokenizer.model, "unk_token", None)


@dataclass(frozen=True)
class FragmentedWord:
    """A word, how often it occurs, and the pieces the tokenizer splits it into."""

    word: str
    count: int
    pieces: tuple[str, ...]

    @property
    def tokens_saved(self) -> int:
        """Tokens the corpus would lose if this word were one token: count × (pieces − 1)."""
        return self.count * (len(self.pieces) - 1)

    def to_json(self) -> dict[str, Any]:
        return {"word": self.word, "count": self.count, "pieces": list(self.pieces)}


@dataclass(frozen=True)
class FragmentationReport:
    """How a tokenizer splits a text: totals over every word occurrence, and the costliest words."""

    corpus: str
    tokenizer: str
    num_bytes: int
    words: int  # word occurrences (pre-tokens)
    distinct_words: int
    tokens: int  # pieces of all occurrences
    unknown_words: int  # occurrences that became the unknown token
    max_seq_len: int
    fragmented: tuple[FragmentedWord, ...]  # most fragmented frequent words, by count × pieces

    @property
    def pieces_per_word(self) -> float:
        return self.tokens / max(self.words, 1)

    @property
    def continuation_share(self) -> float:
        """Share of the pieces that continue a word (all but each word's first)."""
        return (self.tokens - self.words) / max(self.tokens, 1)

    @property
    def sequences_per_mb(self) -> float:
        """Training sequences of ``max_seq_len`` (full, special tokens aside) per 1 MB of UTF-8 text."""
        tokens_per_mb = self.tokens * BYTES_PER_MB / max(self.num_bytes, 1)
        return tokens_per_mb / (self.max_seq_len - SPECIAL_TOKENS_PER_SEQUENCE)

    def to_json(self) -> dict[str, Any]:
        return {
            "corpus": self.corpus, "tokenizer": self.tokenizer, "bytes": self.num_bytes, "words": self.words,
            "distinct_words": self.distinct_words, "tokens": self.tokens, "unknown_words": self.unknown_words,
            "pieces_per_word": round(self.pieces_per_word, 4), "continuation_share": round(self.continuation_share, 4),
            "max_seq_len": self.max_seq_len, "sequences_per_mb": round(self.sequences_per_mb, 2),
            "most_fragmented": [word.to_json() for word in self.fragmented],
        }  # fmt: skip

    def format(self) -> str:
        rows = [
            ("corpus", self.corpus),
            ("tokenizer", self.tokenizer),
            ("text", f"{self.num_bytes / BYTES_PER_MB:.2f} MB"),
            ("words (pre-tokens)", f"{self.words} ({self.distinct_words} distinct)"),
            ("tokens", str(self.tokens)),
            ("pieces per word", f"{self.pieces_per_word:.3f}"),
            ("continuation pieces", f"{100 * self.continuation_share:.1f}% of the tokens"),
            ("words that became unknown", str(self.unknown_words)),
            (f"sequences of {self.max_seq_len} per MB", f"{self.sequences_per_mb:.1f}"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        if self.fragmented:
            lines += ["", "most fragmented frequent words (count × pieces):", format_words(self.fragmented)]
        return "\n".join(lines)


def format_words(words: Sequence[FragmentedWord]) -> str:
    """A table of words: count, pieces, count × pieces and the split itself."""
    rows = [("word", "count", "pieces", "count×pieces", "split")]
    rows += [
        (w.word, str(w.count), str(len(w.pieces)), str(w.count * len(w.pieces)), " ".join(w.pieces)) for w in words
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:4], widths[1:])]
        lines.append("  ".join([*cells, row[4]]))
    return "\n".join(lines)


def measure_fragmentation(
    counts: WordCounts,
    splits: Mapping[str, tuple[str, ...]],
    corpus: str,
    tokenizer_name: str,
    max_seq_len: int,
    top: int = 25,
    unk: str | None = None,
) -> FragmentationReport:
    """The fragmentation figures of ``counts`` split as ``splits`` says (every counted word must be in it)."""
    words = counts.words
    tokens = sum(count * len(splits[word]) for word, count in words.items())
    unknown = sum(count for word, count in words.items() if unk is not None and unk in splits[word])
    costly = sorted(
        (FragmentedWord(word, count, splits[word]) for word, count in words.items() if len(splits[word]) > 1),
        key=lambda item: (-item.count * len(item.pieces), item.word),
    )
    return FragmentationReport(
        corpus, tokenizer_name, counts.num_bytes, sum(words.values()), len(words), tokens, unknown, max_seq_len,
        tuple(costly[:top]),
    )  # fmt: skip


def choose_words(
    counts: WordCounts,
    splits: Mapping[str, tuple[str, ...]],
    vocabulary: Mapping[str, int],
    min_pieces: int,
    min_count: int,
    unk: str | None,
) -> list[FragmentedWord]:
    """Every candidate for a token of its own, best first: words that occur at least ``min_count`` times, split
    into at least ``min_pieces`` pieces, are no token yet and hold no unknown piece, ranked by the tokens they would
    save (count × (pieces − 1)), then by count, then alphabetically (a stable order)."""
    eligible = [
        FragmentedWord(word, count, splits[word])
        for word, count in counts.words.items()
        if count >= min_count and len(splits[word]) >= min_pieces and word not in vocabulary
        and (unk is None or unk not in splits[word])
    ]  # fmt: skip
    return sorted(eligible, key=lambda item: (-item.tokens_saved, -item.count, item.word))


def analyse_vocabulary(config: VocabAnalyseConfig) -> FragmentationReport:
    """``vocab analyse``: the fragmentation report of ``config.corpus`` under ``config.bert_model``'s tokenizer."""
    tokenizer = load_tokenizer(config.bert_model)
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise UserError(f"{config.bert_model}: no fast tokenizer (tokenizer.json); save it with a recent transformers")
    counts = count_words(config.corpus, tokenizer, config.show_progress)
    if not counts.words:
        raise UserError(f"{config.corpus}: no text to measure; give a corpus with at least one non-blank line")
    splits = split_words(tokenizer, counts.words)
    return measure_fragmentation(
        counts, splits, str(config.corpus), config.bert_model, config.max_seq_len, config.top, unknown_token(tokenizer)
    )
