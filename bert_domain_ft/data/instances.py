"""Instances from the document store, computed on offsets: BERT's next-sentence pairs and packed masked-LM rows.

``InstanceRecipe`` says which: with objective "nsp" an instance is ``[CLS] A [SEP] B [SEP]``, as BERT's
create_pretraining_data makes it (``create_pair_spans``). Whole sentences of one document are gathered into a
chunk until a target length is reached (the full ``max_seq_len - 3``, or with probability ``short_seq_prob`` a
random shorter one, drawn per chunk so that long documents also yield some short instances); the chunk is split at
a random sentence boundary into A and B. With probability 0.5 B is instead a run of sentences from another
document of the same split, that document chosen with probability proportional to its sentence count and started
at a random sentence; the chunk's unused sentences go back for the next instance. A chunk of one sentence (a
one-sentence document such as a task row, a document's last sentence, a sentence as long as the target) always
takes a random B, as BERT's code does, but no NSP label (``NO_NSP_LABEL``: masked LM only): labelled "random
next" every time, such chunks made 56–100% of the labels "random next" instead of 50%. The longer of A/B is then
cut one token at a time, from the front or back at random, until the pair fits (``truncate_pairs``, closed form).
Because the sentences of a document are contiguous in the store, A and B are each one token range: an instance is
four offsets. The Python loop walks sentences only (its random draws come from ``UniformStream``, blocks of
doubles handed out one at a time: a tenth of ``Generator.random()``'s per-call cost); random documents, B lengths
and truncation are computed vectorised afterwards, and token rows are gathered in one numpy pass
(``assemble_pairs``).

With objective "mlm" contiguous text is packed into full rows with the tokenizer's own specials
(``pack_documents``): a row is ``cls_id + tokens + sep_id`` (``[CLS] … [SEP]`` for BERT, ``<s> … </s>`` for
RoBERTa), filled to the last position. Across documents (the default, as RoBERTa's FULL-SENTENCES), documents
follow each other in the epoch's order with ``sep_id`` between them and a row may run on into the next document
(packing fill ~100%); with ``cross_document=False`` every document is cut into its own rows and the last one of
each is padded.

    recipe = InstanceRecipe("nsp", RowLayout.of_tokenizer(128, facts), short_seq_prob=0.1, cross_document=True)
    arrays = recipe.rows(store, pool, range(0, 50), None, rng)   # input_ids, lengths, segment_a_lengths, …
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bert_domain_ft.data.document_store import DocumentStore, concatenated_ranges
from bert_domain_ft.data.epoch_format import NO_NSP_LABEL
from bert_domain_ft.model.tokenizer import TokenizerFacts

_BLOCK = 1 << 16


class UniformStream:
    def __init__(self, generator: np.random.Generator):
        self.generator = generator
        self._block = generator.random(_BLOCK).tolist()
        self._next = 0

    def uniform(self) -> float:
        """A float in [0, 1)."""
        if self._next == _BLOCK:
            self._block = self.generator.random(_BLOCK).tolist()
            self._next = 0
        value = self._block[self._next]
        self._next += 1
        return value

    def integer(self, low: int, high: int) -> int:
        """An integer in [low, high], both inclusive."""
        return low + int(self.uniform() * (high - low + 1))


SPECIAL_TOKENS_PER_PAIR = 3  # [CLS], [SEP], [SEP]


@dataclass(frozen=True)
class DocumentPool:
    """The documents one split (training or held-out) draws from, with cumulative sentence counts.

    ``sentence_cumsum[k]`` is the number of sentences in ``documents[:k]``; random "next" segments are drawn from
    the pool only, so held-out and training instances never share a document.
    """

    documents: np.ndarray  # (D,) int64 store document indices, ascending
    sentence_cumsum: np.ndarray  # (D + 1,) int64

    @classmethod
    def from_documents(cls, store: DocumentStore, documents: np.ndarray) -> DocumentPool:
        documents = np.asarray(documents, dtype=np.int64)
        counts = store.document_offsets[documents + 1] - store.document_offsets[documents]
        return cls(documents, np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]))

    @property
    def num_sentences(self) -> int:
        return int(self.sentence_cumsum[-1])

    @property
    def num_one_sentence_documents(self) -> int:
        """Documents of one sentence: under NSP they give no "is next" pair, only masked-LM instances."""
        return int(np.count_nonzero(np.diff(self.sentence_cumsum) == 1))


def nsp_labels(is_random_next: np.ndarray, has_nsp_label: np.ndarray | None) -> np.ndarray:
    """(N,) uint8 NSP labels as the epoch format stores them: 0 is next, 1 random next, ``NO_NSP_LABEL`` where
    ``has_nsp_label`` is False (masked LM only; None: every instance is labelled)."""
    labels = np.asarray(is_random_next).astype(np.uint8)
    return labels if has_nsp_label is None else np.where(has_nsp_label, labels, np.uint8(NO_NSP_LABEL))


@dataclass(frozen=True)
class PairSpans:
    """Token ranges ``[start, end)`` into ``store.tokens`` of A and B for N instances (after truncation)."""

    a_start: np.ndarray
    a_end: np.ndarray
    b_start: np.ndarray
    b_end: np.ndarray
    is_random_next: np.ndarray  # (N,) bool: B comes from another document
    has_nsp_label: np.ndarray | None = None  # (N,) bool: False where "is next" was never possible; None: all True

    def __len__(self) -> int:
        return len(self.a_start)

    def nsp_labels(self) -> np.ndarray:
        return nsp_labels(self.is_random_next, self.has_nsp_label)


_RANDOM_B = -1  # B's end sentence in ``_walk_chunks`` when B is drawn from another document
_ONE_SENTENCE = -2  # ... and when, besides, the chunk had one sentence, so that "is next" was never possible


def _walk_chunks(
    sentence_offsets: list[int],
    document_ranges: list[tuple[int, int, int]],
    max_num_tokens: int,
    short_seq_prob: float,
    draws: UniformStream,
) -> tuple[list[int], list[int], list[int], list[int], list[int], list[float]]:
    """The sequential part: chunk boundaries and the random-next decision, sentence by sentence.

    ``document_ranges`` holds (pool position, first sentence, end sentence) in the numbering of
    ``sentence_offsets`` (token offsets of this shard's sentences). Returns per instance: pool position, A's
    sentence range, B's sentence range for "is next" pairs (``_RANDOM_B`` for random ones, ``_ONE_SENTENCE`` for
    one-sentence chunks: random B, no NSP label), and the remaining target length (for random B) and a uniform draw
    locating the random B sentence.
    """
    pool_position, a_first, a_end, b_end, b_target, b_draw = [], [], [], [], [], []
    for position, first, end in document_ranges:
        chunk_first = i = first
        target = draws.integer(2, max_num_tokens) if draws.uniform() < short_seq_prob else max_num_tokens
        while i < end:
            chunk_tokens = sentence_offsets[i + 1] - sentence_offsets[chunk_first]
            if i == end - 1 or chunk_tokens >= target:
                chunk_sentences = i - chunk_first + 1
                split = chunk_first + (1 if chunk_sentences == 1 else draws.integer(1, chunk_sentences - 1))
                pool_position.append(position)
                a_first.append(chunk_first)
                a_end.append(split)
                if chunk_sentences == 1 or draws.uniform() < 0.5:
                    b_end.append(_ONE_SENTENCE if chunk_sentences == 1 else _RANDOM_B)
                    b_target.append(max(1, target - (sentence_offsets[split] - sentence_offsets[chunk_first])))
                    b_draw.append(draws.uniform())
                    i = split - 1  # the chunk's unused sentences start the next chunk
                else:
                    b_end.append(i + 1)
                    b_target.append(0)
                    b_draw.append(0.0)
                chunk_first = i + 1
                target = draws.integer(2, max_num_tokens) if draws.uniform() < short_seq_prob else max_num_tokens
            i += 1
    return pool_position, a_first, a_end, b_end, b_target, b_draw


def _random_b_ranges(
    store: DocumentStore, pool: DocumentPool, positions: np.ndarray, b_target: np.ndarray, b_draw: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Token ranges of random "next" segments: another pool document, proportional to sentences, random start."""
    cumsum = pool.sentence_cumsum
    own_sentences = cumsum[positions + 1] - cumsum[positions]
    # Draw among the pool's sentences except the current document's, then skip over the current document.
    pick = np.minimum(
        (b_draw * (pool.num_sentences - own_sentences)).astype(np.int64), pool.num_sentences - own_sentences - 1
    )
    pick = np.where(pick >= cumsum[positions], pick + own_sentences, pick)
    other = np.searchsorted(cumsum, pick, side="right") - 1
    documents = pool.documents[other]
    start_sentence = store.document_offsets[documents] + (pick - cumsum[other])
    end_sentence_limit = store.document_offsets[documents + 1]
    b_start = store.sentence_offsets[start_sentence]
    # First sentence boundary at or past the target length, but never beyond the document's end. Walked forward
    # from the start (a few sentences) rather than binary-searched over the whole corpus: with the store on disk a
    # global search would touch pages all over the file and make resident memory grow with the corpus.
    end_sentence = start_sentence + 1
    active = np.flatnonzero(end_sentence < end_sentence_limit)
    while len(active):
        reached = store.sentence_offsets[end_sentence[active]] - b_start[active] >= b_target[active]
        active = active[~reached]
        end_sentence[active] += 1
        active = active[end_sentence[active] < end_sentence_limit[active]]
    return b_start, store.sentence_offsets[end_sentence]


def truncate_pairs(
    a_start: np.ndarray,
    a_end: np.ndarray,
    b_start: np.ndarray,
    b_end: np.ndarray,
    max_num_tokens: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """BERT's truncation in closed form: repeatedly drop a token from the longer segment (B on ties), each time
    from its front or back with probability 1/2, until ``len(A) + len(B) <= max_num_tokens``."""
    length_a, length_b = a_end - a_start, b_end - b_start
    excess = np.maximum(0, length_a + length_b - max_num_tokens)
    from_longer = np.minimum(excess, np.abs(length_a - length_b))
    alternating = excess - from_longer  # once equal, removals alternate starting with B
    a_is_longer = length_a > length_b
    remove_a = np.where(a_is_longer, from_longer, 0) + alternating // 2
    remove_b = np.where(a_is_longer, 0, from_longer) + (alternating + 1) // 2
    front_a = rng.binomial(remove_a, 0.5)
    front_b = rng.binomial(remove_b, 0.5)
    return a_start + front_a, a_end - (remove_a - front_a), b_start + front_b, b_end - (remove_b - front_b)


def create_pair_spans(
    store: DocumentStore,
    pool: DocumentPool,
    pool_positions: range,
    max_seq_len: int,
    short_seq_prob: float,
    rng: np.random.Generator,
) -> PairSpans:
    """NSP instances for the pool documents at ``pool_positions`` (one shard), as token spans."""
    max_num_tokens = max_seq_len - SPECIAL_TOKENS_PER_PAIR
    documents = pool.documents[pool_positions.start : pool_positions.stop]
    first_sentences = store.document_offsets[documents]
    end_sentences = store.document_offsets[documents + 1]
    base = int(first_sentences.min()) if len(documents) else 0
    top = int(end_sentences.max()) if len(documents) else 0
    local_offsets = store.sentence_offsets[base : top + 1].tolist()
    ranges = [
        (position, first - base, end - base)
        for position, first, end in zip(pool_positions, first_sentences.tolist(), end_sentences.tolist())
    ]
    positions, a_first, a_end, b_end, b_target, b_draw = (
        np.asarray(values)
        for values in _walk_chunks(local_offsets, ranges, max_num_tokens, short_seq_prob, UniformStream(rng))
    )
    if len(positions) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return PairSpans(empty, empty, empty, empty, np.zeros(0, dtype=bool), np.zeros(0, dtype=bool))
    offsets = store.sentence_offsets
    a_start_tokens = offsets[a_first + base]
    a_end_tokens = offsets[a_end + base]
    is_random = b_end < 0
    b_start_tokens = a_end_tokens.copy()  # "is next": B starts where A ends
    b_end_tokens = offsets[np.where(is_random, a_end, b_end) + base]
    if is_random.any():
        random_start, random_end = _random_b_ranges(
            store, pool, positions[is_random].astype(np.int64), b_target[is_random].astype(np.int64), b_draw[is_random]
        )
        b_start_tokens[is_random] = random_start
        b_end_tokens[is_random] = random_end
    truncated = truncate_pairs(a_start_tokens, a_end_tokens, b_start_tokens, b_end_tokens, max_num_tokens, rng)
    return PairSpans(*truncated, is_random_next=is_random, has_nsp_label=b_end != _ONE_SENTENCE)


def assemble_pairs(
    store: DocumentStore, spans: PairSpans, max_seq_len: int, cls_id: int, sep_id: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token rows ``[CLS] A [SEP] B [SEP] pad…`` (N, max_seq_len), their lengths and segment-A lengths."""
    count = len(spans)
    length_a = spans.a_end - spans.a_start
    length_b = spans.b_end - spans.b_start
    rows = np.full(count * max_seq_len, pad_id, dtype=store.tokens.dtype)
    row_base = np.arange(count, dtype=np.int64) * max_seq_len
    rows[row_base] = cls_id
    rows[concatenated_ranges(row_base + 1, length_a)] = store.read_ranges(spans.a_start, length_a)
    rows[row_base + 1 + length_a] = sep_id
    rows[concatenated_ranges(row_base + 2 + length_a, length_b)] = store.read_ranges(spans.b_start, length_b)
    rows[row_base + 2 + length_a + length_b] = sep_id
    lengths = length_a + length_b + SPECIAL_TOKENS_PER_PAIR
    return rows.reshape(count, max_seq_len), lengths.astype(np.uint16), (length_a + 2).astype(np.uint16)


SPECIAL_TOKENS_PER_ROW = 2  # cls_id at the start, sep_id at the end


def _token_ranges(store: DocumentStore, documents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and end token offsets of each of ``documents``."""
    sentences = store.document_offsets
    return store.sentence_offsets[sentences[documents]], store.sentence_offsets[sentences[documents + 1]]


def _document_stream(store: DocumentStore, documents: np.ndarray, sep_id: int) -> np.ndarray:
    """The tokens of ``documents`` in order, ``sep_id`` after each but the last."""
    first_token, end_token = _token_ranges(store, documents)
    lengths = end_token - first_token
    with_separators = lengths + 1
    destinations = concatenated_ranges(np.cumsum(with_separators) - with_separators, lengths)
    stream = np.full(int(with_separators.sum()), sep_id, dtype=store.tokens.dtype)
    stream[destinations] = store.read_ranges(first_token, lengths)
    return stream[:-1] if len(stream) else stream


def _rows_from_pieces(
    source: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    max_seq_len: int,
    cls_id: int,
    sep_id: int,
    pad_id: int,
) -> tuple[np.ndarray, np.ndarray]:
    count = len(starts)
    rows = np.full(count * max_seq_len, pad_id, dtype=source.dtype)
    row_base = np.arange(count, dtype=np.int64) * max_seq_len
    rows[row_base] = cls_id
    rows[concatenated_ranges(row_base + 1, lengths)] = source[concatenated_ranges(starts, lengths)]
    rows[row_base + 1 + lengths] = sep_id
    return rows.reshape(count, max_seq_len), (lengths + SPECIAL_TOKENS_PER_ROW).astype(np.uint16)


def pack_documents(
    store: DocumentStore,
    documents: np.ndarray,
    max_seq_len: int,
    cross_document: bool,
    cls_id: int,
    sep_id: int,
    pad_id: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows (N, max_seq_len) and their lengths for ``documents`` (store indices, in epoch order)."""
    capacity = max_seq_len - SPECIAL_TOKENS_PER_ROW
    documents = np.asarray(documents, dtype=np.int64)
    if cross_document:
        stream = _document_stream(store, documents, sep_id)
        starts = np.arange(0, len(stream), capacity, dtype=np.int64)
        lengths = np.minimum(capacity, len(stream) - starts)
        return _rows_from_pieces(stream, starts, lengths, max_seq_len, cls_id, sep_id, pad_id)
    first_token, end_token = _token_ranges(store, documents)
    pieces_per_document = -(-(end_token - first_token) // capacity)
    piece_index = concatenated_ranges(np.zeros_like(pieces_per_document), pieces_per_document)
    starts = np.repeat(first_token, pieces_per_document) + piece_index * capacity
    lengths = np.minimum(capacity, np.repeat(end_token, pieces_per_document) - starts)
    source = store.read_ranges(starts, lengths)  # the pieces, back to back
    return _rows_from_pieces(source, np.cumsum(lengths) - lengths, lengths, max_seq_len, cls_id, sep_id, pad_id)


@dataclass(frozen=True)
class RowLayout:
    """How a row is laid out: at most ``max_seq_len`` tokens (special tokens included), then ``pad_id``."""

    max_seq_len: int
    cls_id: int  # [CLS] / <s>: first of every row
    sep_id: int  # [SEP] / </s>: after each segment (and between packed documents)
    pad_id: int

    @classmethod
    def of_tokenizer(cls, max_seq_len: int, facts: TokenizerFacts) -> RowLayout:
        return cls(max_seq_len, facts.cls_token_id, facts.sep_token_id, facts.pad_token_id)


@dataclass(frozen=True)
class InstanceRecipe:
    """How documents become rows: "nsp" pairs (``create_pair_spans``) or "mlm" packed text (``pack_documents``)."""

    objective: str
    layout: RowLayout
    short_seq_prob: float  # "nsp": share of chunks aiming at a random shorter length
    cross_document: bool  # "mlm": a row may run on into the next document

    def rows(
        self,
        store: DocumentStore,
        pool: DocumentPool,
        positions: range,
        documents: np.ndarray | None,
        rng: np.random.Generator,
    ) -> dict[str, np.ndarray]:
        """The unmasked arrays of pool ``positions`` ("nsp") or of ``documents`` in their order ("mlm"):
        input_ids, lengths, segment_a_lengths, and is_random_next for "nsp" (the NSP label, ``nsp_labels``)."""
        layout = self.layout
        if self.objective == "mlm":
            assert documents is not None
            rows, lengths = pack_documents(
                store, documents, layout.max_seq_len, self.cross_document, layout.cls_id, layout.sep_id, layout.pad_id
            )
            return {"input_ids": rows, "lengths": lengths, "segment_a_lengths": lengths}
        spans = create_pair_spans(store, pool, positions, layout.max_seq_len, self.short_seq_prob, rng)
        rows, lengths, segment_a_lengths = assemble_pairs(
            store, spans, layout.max_seq_len, layout.cls_id, layout.sep_id, layout.pad_id
        )
        arrays = {"input_ids": rows, "lengths": lengths, "segment_a_lengths": segment_a_lengths}
        arrays["is_random_next"] = spans.nsp_labels()
        return arrays
