"""``vocab extend``: give a domain's costliest words tokens of their own, in the tokenizer and in the model.

The words (``vocabulary.choose_words``: frequent, split into at least ``min_pieces`` pieces, not yet tokens, ranked
by the tokens they save; or a word list) become whole-word WordPiece entries. They take BERT's ``[unusedX]`` slots
first, in id order, so that up to the 994 slots of bert-base-uncased neither the vocabulary nor the parameter count
changes; only the words beyond the slots grow the vocabulary. The model's new rows start as the mean of their old
pieces' rows (``model.vocabulary``). The result is a directory that ``from_pretrained`` and every command load
like any model, plus ``vocabulary_extension.json`` that lists the new rows so that training warms them up first.

A new entry is an ordinary vocabulary word, not an "added token": it only matches a whole pre-token or the start
of one (WordPiece is greedy, longest match first: ``asyncio`` also serves ``asyncio's`` and ``asyncioxyz`` →
``asyncio ##xy ##z``), and text is pre-tokenised exactly as before. Words joined by punctuation
(``pthread_mutex_lock``) stay several pre-tokens; their parts are candidates on their own (``pthread``,
``mutex``), the joined form is never one token. A new entry that would turn some corpus word into ``[UNK]``
(its remainder has no continuation pieces) is passed over for the next candidate.

    report = extend_vocabulary(VocabExtendConfig(corpus=Path("docs.txt"), bert_model="bert/", add=994,
                                                 output=Path("bert-docs/")))
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bert_domain_ft.corpus.config import VocabExtendConfig
from bert_domain_ft.corpus.reading import decoded_lines, require_regular_file
from bert_domain_ft.corpus.vocabulary import (
    FragmentedWord,
    WordCounts,
    choose_words,
    count_words,
    format_words,
    split_words,
)
from bert_domain_ft.errors import UserError, at_location
from bert_domain_ft.files import TEMPORARY_SUFFIX, os_errors_as_user_errors, replace_directory, write_text_atomic
from bert_domain_ft.model.files import read_model_config
from bert_domain_ft.model.saving import copy_entries
from bert_domain_ft.model.tokenizer import load_tokenizer

UNUSED_SLOT = re.compile(r"\[unused\d+\]")
TOKENIZER_FILE = "tokenizer.json"
VOCABULARY_FILE = "vocab.txt"
REWRITTEN = {TOKENIZER_FILE, VOCABULARY_FILE, "config.json"}  # written anew; weights are left out of the copy
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".h5", ".msgpack", ".ckpt", ".pt")
MAX_ROUNDS = 20  # rounds of passing over candidates that would make corpus words unknown
WORDS_SHOWN = 20


@dataclass(frozen=True)
class VocabularyPlan:
    """The chosen words, the id each takes, and the tokenizer's vocabulary (token → id) afterwards."""

    words: tuple[FragmentedWord, ...]
    ids: tuple[int, ...]
    vocabulary: dict[str, int]
    slots_used: int
    slots_free: int


def read_wordpiece(directory: str) -> dict[str, Any]:
    """The parsed ``tokenizer.json`` of a local model directory whose subword model is WordPiece."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise UserError(f"{path}: not found; vocab extend needs a local model directory with a fast tokenizer "
                        "(save it with AutoTokenizer.from_pretrained(...).save_pretrained(DIR))")  # fmt: skip
    try:
        serialized = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: cannot be read ({error}); save the tokenizer again") from None
    kind = serialized.get("model", {}).get("type")
    if kind != "WordPiece":
        raise UserError(f"{path}: a {kind} tokenizer; vocab extend adds whole-word entries to WordPiece "
                        "vocabularies (BERT) only")  # fmt: skip
    return serialized


def free_slots(serialized: Mapping[str, Any]) -> list[int]:
    """Ids of the ``[unusedX]`` entries (in id order) that no added token claims."""
    claimed = {entry["id"] for entry in serialized.get("added_tokens", [])}
    vocabulary = serialized["model"]["vocab"]
    return sorted(i for token, i in vocabulary.items() if UNUSED_SLOT.fullmatch(token) and i not in claimed)


def planned_vocabulary(
    vocabulary: Mapping[str, int], words: Sequence[str], slots: Sequence[int]
) -> tuple[list[int], dict[str, int]]:
    """(the id of each word, the vocabulary with them): slots first in order, then ids past the vocabulary."""
    first_new = max(vocabulary.values()) + 1
    ids = list(slots[: len(words)]) + list(range(first_new, first_new + max(0, len(words) - len(slots))))
    replaced = set(ids)
    updated = {token: i for token, i in vocabulary.items() if i not in replaced}
    updated.update(zip(words, ids))
    return ids, updated


def wordpiece_splitter(serialized: Mapping[str, Any], vocabulary: dict[str, int]) -> Any:
    """A WordPiece model like the serialized one, over ``vocabulary``."""
    from tokenizers.models import WordPiece

    model = serialized["model"]
    return WordPiece(
        vocabulary,
        unk_token=model["unk_token"],
        continuing_subword_prefix=model.get("continuing_subword_prefix", "##"),
        max_input_chars_per_word=model.get("max_input_chars_per_word", 100),
    )


def words_made_unknown(
    counts: WordCounts, splits: Mapping[str, tuple[str, ...]], splitter: Any, unk: str, new_words: Sequence[str]
) -> dict[str, str]:
    """New word → a corpus word that it would turn into ``unk`` (the longest new word the corpus word starts with)."""
    culprits: dict[str, str] = {}
    by_length = sorted(new_words, key=len, reverse=True)
    for word in counts.words:
        if unk in splits[word]:
            continue
        pieces = [token.value for token in splitter.tokenize(word)]
        if unk in pieces:
            culprit = next((new for new in by_length if word.startswith(new)), None)
            if culprit is not None:
                culprits.setdefault(culprit, word)
    return culprits


def plan_from_ranking(
    ranked: Sequence[FragmentedWord], number: int, serialized: Mapping[str, Any], counts: WordCounts,
    splits: Mapping[str, tuple[str, ...]], fixed: bool, where: str,
) -> VocabularyPlan:  # fmt: skip
    """The first ``number`` words of ``ranked`` that make no corpus word unknown (``fixed``: the list is the
    user's, so such a word is an error instead of being passed over)."""
    vocabulary, slots = serialized["model"]["vocab"], free_slots(serialized)
    unk = serialized["model"]["unk_token"]
    passed_over: set[str] = set()
    for _ in range(MAX_ROUNDS):
        chosen = [word for word in ranked if word.word not in passed_over][:number]
        ids, updated = planned_vocabulary(vocabulary, [word.word for word in chosen], slots)
        splitter = wordpiece_splitter(serialized, updated)
        culprits = words_made_unknown(counts, splits, splitter, unk, [word.word for word in chosen])
        if fixed and culprits:
            new, victim = next(iter(culprits.items()))
            raise UserError(f"{where}: adding {new!r} would turn the corpus word {victim!r} into {unk} (no "
                            "continuation pieces for its rest); remove it from the list")  # fmt: skip
        if not culprits:
            if len(chosen) < number:
                raise UserError(too_few_message(where, len(chosen), number))
            return VocabularyPlan(tuple(chosen), tuple(ids), updated, min(len(chosen), len(slots)), len(slots))
        passed_over |= set(culprits)
    raise UserError(f"{where}: too many candidates would turn corpus words into {unk}; lower --add")


def too_few_message(where: str, available: int, number: int) -> str:
    return (f"{where}: only {available} words qualify but --add asks for {number}; lower --add to {available} or "
            "fewer (or lower --min_count / --min_pieces, or give more text)")  # fmt: skip


def words_from_list(
    path: Path, tokenizer: Any, counts: WordCounts, vocabulary: Mapping[str, int]
) -> list[FragmentedWord]:
    """The user's words, normalised as the tokenizer does; a repeat, an existing token, a word the pre-tokenizer
    splits or one the tokenizer cannot spell is a ``UserError`` naming the line."""
    backend = tokenizer.backend_tokenizer
    seen: dict[str, int] = {}
    words = []
    require_regular_file(path)
    if not path.is_file():
        raise UserError(at_location(path, None, "word list not found; give a file of words, one a line"))
    for number, line in decoded_lines(path, advice="one word a line"):
        if not line.strip():
            continue
        normalized = backend.normalizer.normalize_str(line.strip()) if backend.normalizer else line.strip()
        pre_tokens = (
            backend.pre_tokenizer.pre_tokenize_str(normalized) if backend.pre_tokenizer else [(normalized, None)]
        )
        parts = [part for part, _ in pre_tokens]
        if len(parts) != 1:
            problem = (
                f"{line.strip()!r} is {len(parts)} pre-tokens ({' '.join(parts)}): the tokenizer splits it at "
                "punctuation or spaces before any vocabulary entry can match; list its parts instead"
            )
        elif normalized in seen:
            problem = f"{normalized!r} repeats line {seen[normalized]}; keep one"
        elif normalized in vocabulary:
            problem = f"{normalized!r} is a token of the vocabulary already; remove it"
        else:
            problem = None
        if problem:
            raise UserError(at_location(path, number, problem))
        seen[normalized] = number
        words.append(normalized)
    splits = split_words(tokenizer, words)
    return [FragmentedWord(word, counts.words.get(word, 0), splits[word]) for word in words]


def _copy_model_files(source: Path, target: Path) -> None:
    """Every file of ``source`` but its weights and the files written anew (tokenizer_config.json, the special
    tokens map, sentence-transformers' modules… stay as they were)."""
    names = [name for name in (path.name for path in source.iterdir())
             if not (name in REWRITTEN or name.endswith(WEIGHT_SUFFIXES) or name.startswith("."))]  # fmt: skip
    copy_entries(source, target, names)


def write_tokenizer(source: Path, target: Path, serialized: dict[str, Any], vocabulary: dict[str, int]) -> None:
    """``tokenizer.json`` (and ``vocab.txt`` when the source has one) with ``vocabulary``."""
    updated = {**serialized, "model": {**serialized["model"], "vocab": vocabulary}}
    write_text_atomic(target / TOKENIZER_FILE, json.dumps(updated, ensure_ascii=False, indent=2) + "\n")
    if (source / VOCABULARY_FILE).is_file():
        tokens = sorted(vocabulary, key=vocabulary.__getitem__)
        write_text_atomic(target / VOCABULARY_FILE, "".join(token + "\n" for token in tokens))


@dataclass(frozen=True)
class ExtensionReport:
    """What ``vocab extend`` did."""

    base_model: str
    output: str
    words: tuple[FragmentedWord, ...]
    ids: tuple[int, ...]
    slots_used: int
    slots_free: int
    vocab_size_before: int
    vocab_size: int
    parameters_before: int
    parameters: int
    corpus_tokens_before: int
    corpus_tokens: int

    def to_json(self) -> dict[str, Any]:
        return {
            "base_model": self.base_model, "output": self.output, "added": len(self.words),
            "unused_slots_used": self.slots_used, "unused_slots_free_before": self.slots_free,
            "vocab_size_before": self.vocab_size_before, "vocab_size": self.vocab_size,
            "parameters_before": self.parameters_before, "parameters": self.parameters,
            "corpus_tokens_before": self.corpus_tokens_before, "corpus_tokens": self.corpus_tokens,
            "words": [{**word.to_json(), "id": i} for word, i in zip(self.words, self.ids)],
        }  # fmt: skip

    def format(self) -> str:
        change = self.corpus_tokens / max(self.corpus_tokens_before, 1) - 1
        rows = [
            ("extended model", self.output),
            (
                "words added",
                f"{len(self.words)}: {self.slots_used} into [unused] slots (of {self.slots_free} free), "
                f"{len(self.words) - self.slots_used} past the vocabulary",
            ),  # fmt: skip
            ("vocabulary", f"{self.vocab_size_before} → {self.vocab_size}"),
            ("parameters", f"{self.parameters_before:,} → {self.parameters:,}"),
            ("corpus tokens", f"{self.corpus_tokens_before} → {self.corpus_tokens} ({100 * change:+.1f}%)"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        shown = self.words[:WORDS_SHOWN]
        return "\n".join([*lines, "", f"first {len(shown)} words added (now one token each):", format_words(shown)])


def _choose(
    config: VocabExtendConfig, tokenizer: Any, serialized: dict[str, Any], counts: WordCounts
) -> VocabularyPlan:
    """The plan for the user's word list, or for the best candidates of the corpus."""
    vocabulary = serialized["model"]["vocab"]
    splits = split_words(tokenizer, counts.words)
    if config.words is not None:
        listed = words_from_list(config.words, tokenizer, counts, vocabulary)
        if config.add > len(listed):
            raise UserError(f"{config.words}: lists {len(listed)} words but --add asks for {config.add}; lower --add")
        return plan_from_ranking(listed, config.add, serialized, counts, splits, True, str(config.words))
    unk = serialized["model"]["unk_token"]
    ranked = choose_words(counts, splits, vocabulary, config.min_pieces, config.min_count, unk)
    if config.add > len(ranked):
        raise UserError(too_few_message(str(config.corpus), len(ranked), config.add))
    return plan_from_ranking(ranked, config.add, serialized, counts, splits, False, str(config.corpus))


def _check_output(config: VocabExtendConfig) -> None:
    if config.output.exists() and not config.overwrite:
        raise UserError(f"{config.output}: exists already; choose a new --output or add --overwrite")
    if not Path(config.bert_model).is_dir():
        raise UserError(f"{config.bert_model}: not a local model directory; download it first (save_pretrained)")


def extend_vocabulary(config: VocabExtendConfig) -> ExtensionReport:
    """``vocab extend``: the extended model, tokenizer and record in ``config.output`` (complete, or not at all)."""
    from bert_domain_ft.model.vocabulary import NewRow, extend_model_weights, read_record, write_record

    _check_output(config)
    source = Path(config.bert_model)
    serialized = read_wordpiece(config.bert_model)
    tokenizer = load_tokenizer(config.bert_model)
    counts = count_words(config.corpus, tokenizer, config.show_progress)
    plan = _choose(config, tokenizer, serialized, counts)
    old_vocabulary = serialized["model"]["vocab"]
    rows = [NewRow(i, tuple(old_vocabulary[piece] for piece in word.pieces)) for word, i in zip(plan.words, plan.ids)]
    model_rows = int((read_model_config(source) or {}).get("vocab_size", len(old_vocabulary)))
    vocab_size = max(model_rows, max(plan.vocabulary.values()) + 1)
    temporary = config.output.with_name(config.output.name + TEMPORARY_SUFFIX)
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        with os_errors_as_user_errors(temporary):
            temporary.mkdir(parents=True)
            _copy_model_files(source, temporary)
        before, after = extend_model_weights(config.bert_model, temporary, rows, vocab_size)
        write_tokenizer(source, temporary, serialized, plan.vocabulary)
        slot_names = {i: token for token, i in old_vocabulary.items()}
        added = [{"token": word.word, "id": i, "pieces": list(row.piece_ids), "slot": slot_names.get(i),
                  "count": word.count} for word, i, row in zip(plan.words, plan.ids, rows)]  # fmt: skip
        base = str(source.resolve())  # the record is read from anywhere: never a path relative to here
        write_record(temporary, base, model_rows, added, earlier=read_record(source))
        _verify(temporary, plan)
        replace_directory(temporary, config.output)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    tokens_before = count_tokens(counts, tokenizer.backend_tokenizer.model)
    tokens_after = count_tokens(counts, wordpiece_splitter(serialized, plan.vocabulary))
    return ExtensionReport(
        config.bert_model, str(config.output), plan.words, plan.ids, plan.slots_used, plan.slots_free,
        model_rows, vocab_size, before, after, tokens_before, tokens_after,
    )  # fmt: skip


def count_tokens(counts: WordCounts, splitter: Any) -> int:
    """Tokens of every word occurrence in ``counts`` under a subword model (``splitter.tokenize``)."""
    return sum(count * len(splitter.tokenize(word)) for word, count in counts.words.items())


def _verify(directory: Path, plan: VocabularyPlan) -> None:
    """Every new word is now one token, with its planned id, through the whole saved tokenizer."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    for word, i in zip(plan.words, plan.ids):
        ids = tokenizer.encode(word.word, add_special_tokens=False).ids
        if ids != [i]:
            raise UserError(f"{directory}: {word.word!r} encodes as {ids}, not [{i}]; please report this")
