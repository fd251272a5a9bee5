"""The model's tokenizer, and the plain facts about it that later stages need.

Pregeneration records ``TokenizerFacts`` in the manifest; training checks them against the model's tokenizer, so a
mismatch between data and model is caught before the first step rather than as silent garbage.

    tokenizer = load_tokenizer("path/to/bert", do_lower_case=None)
    facts = describe_tokenizer(tokenizer, "path/to/bert")
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bert_domain_ft.errors import UserError, first_line
from bert_domain_ft.model.files import check_model_path, read_json_object

# uint16 halves the size of every token array when every id fits in it (BERT's 30522, RoBERTa's 50265).
UINT16_VOCABULARY_LIMIT = 65536


@dataclass(frozen=True)
class TokenizerFacts:
    """What the data format depends on. Stored verbatim under ``"tokenizer"`` in every manifest."""

    name: str
    vocab_size: int
    vocab_fingerprint: str
    do_lower_case: bool
    cls_token_id: int
    sep_token_id: int
    mask_token_id: int
    pad_token_id: int
    special_token_ids: tuple[int, ...]
    continuation_prefix: str | None  # "##" for WordPiece: what marks a piece that continues a word

    @property
    def token_dtype(self) -> np.dtype:
        return np.dtype(np.uint16) if self.vocab_size <= UINT16_VOCABULARY_LIMIT else np.dtype(np.int32)

    def to_json(self) -> dict[str, Any]:
        value = asdict(self)
        value["special_token_ids"] = list(self.special_token_ids)
        value["token_dtype"] = self.token_dtype.name
        return value

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> TokenizerFacts:
        fields = {key: value[key] for key in cls.__dataclass_fields__}
        fields["special_token_ids"] = tuple(fields["special_token_ids"])
        return cls(**fields)


def _quiet_transformers() -> None:
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    logging.getLogger("transformers").setLevel(logging.ERROR)


_DEFAULT_SPECIAL_TOKENS = {
    # What a tokenizer uses when its config names no special tokens, by tokenizer.json model type.
    "WordPiece": {
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
    },
    "BPE": {
        "cls_token": "<s>",
        "sep_token": "</s>",
        "mask_token": "<mask>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
    },
    "Unigram": {
        "cls_token": "<s>",
        "sep_token": "</s>",
        "mask_token": "<mask>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
    },
}
_SPECIAL_TOKEN_KEYS = ("cls_token", "sep_token", "mask_token", "pad_token", "unk_token", "bos_token", "eos_token")


class FastTokenizer:
    """The Rust tokenizer of a saved model directory, read without importing transformers (and so torch).

    It offers the few attributes the data stages use, with the same names as a transformers fast tokenizer
    (``backend_tokenizer``, ``get_vocab``, ``len``, ``cls_token_id``…, ``all_special_ids``), so either can be
    passed around. Loading this way keeps pregeneration at ~30 MB instead of ~260 MB before any data.
    """

    def __init__(self, directory: Path):
        from tokenizers import Tokenizer

        self.backend_tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        serialized = json.loads(self.backend_tokenizer.to_str())
        names = dict(_DEFAULT_SPECIAL_TOKENS.get(serialized.get("model", {}).get("type"), {}))
        for file_name in ("special_tokens_map.json", "tokenizer_config.json"):
            path = directory / file_name
            if path.exists():
                values = read_json_object(path, "the file saved with the tokenizer")
                for key in _SPECIAL_TOKEN_KEYS:
                    value = values.get(key)
                    if isinstance(value, dict):
                        value = value.get("content")
                    if isinstance(value, str):
                        names[key] = value
        vocabulary = self.backend_tokenizer.get_vocab(with_added_tokens=True)
        self._vocabulary = vocabulary
        for key, token in names.items():
            setattr(self, f"{key}_id", vocabulary.get(token))
        special = {vocabulary[token] for token in names.values() if token in vocabulary}
        special |= {entry["id"] for entry in serialized.get("added_tokens", []) if entry.get("special")}
        self.all_special_ids = sorted(special)
        self.is_fast = True

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocabulary)

    def __len__(self) -> int:
        return len(self._vocabulary)


def load_tokenizer(name_or_path: str, do_lower_case: bool | None = None) -> Any:
    """Load the fast (Rust) tokenizer of ``name_or_path`` (a local directory or a hub id).

    A local directory with ``tokenizer.json`` is read directly (no transformers, no torch); anything else goes
    through ``transformers.AutoTokenizer``. ``do_lower_case=None`` follows the tokenizer; ``True``/``False`` must
    agree with it, or a ``UserError`` says which side differs (the original scripts silently produced
    [UNK]-riddled data in that case).
    """
    check_model_path(name_or_path)  # a path that is no directory: said so, not explained as a bad Hub repo id
    directory = Path(name_or_path)
    if (directory / "tokenizer.json").is_file():
        try:
            tokenizer: Any = FastTokenizer(directory)
        except UserError:
            raise
        except Exception as error:  # a damaged tokenizer.json: say which file
            raise UserError(
                f"{directory / 'tokenizer.json'}: cannot be read ({error}); save the tokenizer again"
            ) from None
    else:
        require_vocabulary_files(directory)
        tokenizer = _load_with_transformers(name_or_path)
    backend = tokenizer.backend_tokenizer
    backend.no_truncation()
    backend.no_padding()
    lowercases = tokenizer_lowercases(tokenizer)
    if do_lower_case is not None and do_lower_case != lowercases:
        if do_lower_case:
            raise UserError(
                f"{name_or_path}: --do_lower_case was given but this tokenizer keeps case; "
                "drop --do_lower_case or use an uncased model"
            )
        raise UserError(
            f"{name_or_path}: this tokenizer lower-cases its input but lower-casing was turned off; "
            "drop that setting or use a cased model"
        )
    return tokenizer


def _is_vocabulary_file(name: str) -> bool:
    return (
        name == "tokenizer.json"
        or name.startswith("vocab")
        or name in ("merges.txt", "bpe.codes")
        or (name.endswith((".model", ".spm")))
    )


def require_vocabulary_files(directory: Path) -> None:
    """Refuse a local directory that holds no tokenizer vocabulary (e.g. only ``config.json``): transformers would
    build a tokenizer of its five special tokens from the config alone and turn every word into [UNK]."""
    if not directory.is_dir():
        return  # a hub id (or a missing path, which the loader reports)
    names = sorted(entry.name for entry in directory.iterdir())
    if not any(_is_vocabulary_file(name) for name in names):
        found = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") if names else "nothing"
        raise UserError(
            f"{directory}: holds no tokenizer vocabulary (no tokenizer.json, vocab.txt, vocab.json or *.model; "
            f"found {found}); give the model directory with its tokenizer files, or a tokenizer with --tokenizer"
        )


def _load_with_transformers(name_or_path: str) -> Any:
    _quiet_transformers()
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, use_fast=True)
    except (OSError, ValueError) as error:
        raise UserError(
            f"{name_or_path}: cannot load a tokenizer ({first_line(error)}); give a local model directory "
            "or a hub id that is available offline"
        ) from None
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"{name_or_path}: only a slow tokenizer is available; save it with tokenizer.json (fast)")
    return tokenizer


def _normalizer_lowercases(normalizer: Any) -> bool:
    if not isinstance(normalizer, dict):
        return False
    kind = normalizer.get("type")
    if kind == "Lowercase":
        return True
    if kind == "BertNormalizer":
        return bool(normalizer.get("lowercase", False))
    if kind == "Sequence":
        return any(_normalizer_lowercases(item) for item in normalizer.get("normalizers", []))
    return False


def tokenizer_lowercases(tokenizer: Any) -> bool:
    """Whether the tokenizer lower-cases text before splitting it (read from its normalizer)."""
    serialized = json.loads(tokenizer.backend_tokenizer.to_str())
    return _normalizer_lowercases(serialized.get("normalizer"))


def _continuation_prefix(tokenizer: Any) -> str | None:
    model = json.loads(tokenizer.backend_tokenizer.to_str()).get("model", {})
    if model.get("type") == "WordPiece":
        return model.get("continuing_subword_prefix") or "##"
    return None


def vocabulary_fingerprint(tokenizer: Any) -> str:
    """A short hash of the id → token mapping: equal fingerprints mean the ids in the data mean the same."""
    ordered = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    digest = hashlib.sha256(json.dumps(ordered, ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()[:16]


def describe_tokenizer(tokenizer: Any, name: str) -> TokenizerFacts:
    def required_id(attribute: str) -> int:
        value = getattr(tokenizer, attribute, None)
        if value is None:
            raise UserError(f"{name}: the tokenizer has no {attribute.replace('_id', '')}; BERT pretraining needs one")
        return int(value)

    return TokenizerFacts(
        name=name,
        vocab_size=max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1),  # ids may have gaps
        vocab_fingerprint=vocabulary_fingerprint(tokenizer),
        do_lower_case=tokenizer_lowercases(tokenizer),
        cls_token_id=required_id("cls_token_id"),
        sep_token_id=required_id("sep_token_id"),
        mask_token_id=required_id("mask_token_id"),
        pad_token_id=required_id("pad_token_id"),
        special_token_ids=tuple(sorted(set(int(i) for i in tokenizer.all_special_ids))),
        continuation_prefix=_continuation_prefix(tokenizer),
    )


def encode_sentences(tokenizer: Any, sentences: Sequence[str]) -> list[list[int]]:
    """Token ids of each sentence, without special tokens, in one batched call to the Rust tokenizer."""
    backend = tokenizer.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return [encoding.ids for encoding in encode(list(sentences), add_special_tokens=False)]


def continuation_table(tokenizer: Any, facts: TokenizerFacts) -> np.ndarray:
    """Boolean table over token ids: true where the piece continues the previous word ("##ing")."""
    table = np.zeros(facts.vocab_size, dtype=bool)
    if facts.continuation_prefix is None:
        return table
    for token, token_id in tokenizer.get_vocab().items():
        if token.startswith(facts.continuation_prefix) and token_id < facts.vocab_size:
            table[token_id] = True
    return table


def special_table(facts: TokenizerFacts) -> np.ndarray:
    """Boolean table over token ids: true for the tokenizer's special tokens (never masked, never a random pick)."""
    table = np.zeros(facts.vocab_size, dtype=bool)
    table[list(facts.special_token_ids)] = True
    return table


# A tokenizer that does not fit the text: more unknown tokens than this fraction of a sample is refused. A model's
# own tokenizer on text in its language stays far below (BERT's on English: ~0.01%).
UNKNOWN_TOKEN_LIMIT = 0.05


def require_tokenizer_fits(tokenizer: Any, tokenizer_name: str, corpus: Path, sample: Sequence[str]) -> None:
    """Refuse a tokenizer that turns more than ``UNKNOWN_TOKEN_LIMIT`` of the tokens of ``sample`` (lines of
    ``corpus``) into its unknown token, or makes nothing but special tokens of it (nothing could be masked)."""
    encoded = encode_sentences(tokenizer, sample) if sample else []
    total = sum(len(ids) for ids in encoded)
    if total == 0:
        return  # nothing to judge by: the document store reports sentences that tokenize to nothing
    flat = np.fromiter((token for ids in encoded for token in ids), dtype=np.int64, count=total)
    unknown_id = getattr(tokenizer, "unk_token_id", None)
    unknown = int(np.count_nonzero(flat == unknown_id)) if unknown_id is not None else 0
    where = f"{corpus}: with the tokenizer of {tokenizer_name}, {{}} of the first {len(sample)} lines"
    advice = (
        "give the model directory with its tokenizer files (tokenizer.json or vocab.txt) or the right --tokenizer, "
        "or train one on this text with `bert-domain-ft tokenizer`"
    )
    if unknown > UNKNOWN_TOKEN_LIMIT * total:
        share = f"{unknown / total:.0%} of the tokens"
        raise UserError(f"{where.format(share)} are unknown tokens (more than {UNKNOWN_TOKEN_LIMIT:.0%}); {advice}")
    if np.isin(flat, np.asarray(sorted(tokenizer.all_special_ids), dtype=np.int64)).all():
        raise UserError(f"{where.format('every token')} is a special token, so nothing could be masked; {advice}")
