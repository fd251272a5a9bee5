"""Training a new fast tokenizer on the user's corpus: WordPiece (BERT), byte-level BPE (RoBERTa) or Unigram (XLM-R).

The corpus is streamed twice: a first pass counts sentences and characters (for the progress bar and an early
"vocabulary too small" error), the second feeds batches of lines to the ``tokenizers`` trainer. The directory
written loads with ``transformers.AutoTokenizer.from_pretrained`` and with ``model.tokenizer.load_tokenizer``, and
both see the same special tokens. Each kind's pipeline (normaliser, pre-tokenizer, post-processor) is the one the
matching transformers class rebuilds on loading (transformers 5 keeps only the vocabulary of tokenizer.json for
these classes), so the two loaders tokenize identically.

    directory = train_tokenizer(TokenizerTrainingConfig(corpus=Path("corpus.txt"), output=Path("tok"), kind="bpe"))
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from bert_domain_ft.corpus.config import KIND_SPECS, TokenizerTrainingConfig
from bert_domain_ft.corpus.reading import iter_corpus_lines, open_corpus_checked
from bert_domain_ft.errors import UserError, at_location
from bert_domain_ft.files import TEMPORARY_SUFFIX, os_errors_as_user_errors, replace_directory, write_json_atomic

logger = logging.getLogger(__name__)

METASPACE = "\u2581"  # "▁": what the Unigram pre-tokenizer turns spaces into
TRAINING_RECORD = "tokenizer_training.json"
_LINES_PER_BATCH = 1000  # the trainer takes batches of lines: fewer Python → Rust crossings


@dataclass(frozen=True)
class CorpusScan:
    sentences: int
    """Non-blank lines: the trainer's input items."""
    characters: frozenset[str]
    """Distinct characters of the corpus (before the tokenizer's normaliser)."""


def scan_corpus(path: Path, show_progress: bool = True) -> CorpusScan:
    """Count the sentences and collect the characters of the corpus; raises the corpus ``UserError``s early."""
    open_corpus_checked(path)
    sentences = 0
    characters: set[str] = set()
    with tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, desc="reading corpus", disable=not show_progress
    ) as progress:
        for line in iter_corpus_lines(path):
            sentences += 1
            characters.update(line.text)
            progress.update(line.end_byte - progress.n)
    if sentences == 0:
        raise UserError(at_location(path, None, "corpus has no text, only blank lines; put one sentence per line"))
    return CorpusScan(sentences, frozenset(characters))


def _iter_batches(path: Path) -> Iterator[list[str]]:
    batch: list[str] = []
    for line in iter_corpus_lines(path):
        batch.append(line.text)
        if len(batch) == _LINES_PER_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def build_untrained_tokenizer(kind: str, lowercase: bool = False) -> Any:
    """The ``tokenizers.Tokenizer`` pipeline of ``kind`` with an empty model, ready to train."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    if kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        # Exactly what transformers' BertTokenizer builds, so both loaders agree.
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
        )
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##")
    elif kind == "bpe":
        tokenizer = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
    else:
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always")]
        )
        tokenizer.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always")
    return tokenizer


def _special_tokens(kind: str) -> list[Any]:
    from tokenizers import AddedToken

    # RoBERTa and XLM-R let <mask> swallow the space before it ("a <mask>" → ["a", "<mask>"]), as they do.
    absorbs_space = kind != "wordpiece"
    return [
        AddedToken(token, special=True, normalized=False, lstrip=absorbs_space and token == "<mask>")
        for token in KIND_SPECS[kind].special_tokens
    ]


def _trainer(kind: str, vocab_size: int, min_frequency: int, show_progress: bool) -> Any:
    from tokenizers import pre_tokenizers, trainers

    common = {"vocab_size": vocab_size, "special_tokens": _special_tokens(kind), "show_progress": show_progress}
    if kind == "wordpiece":
        return trainers.WordPieceTrainer(min_frequency=min_frequency, continuing_subword_prefix="##", **common)
    if kind == "bpe":
        return trainers.BpeTrainer(
            min_frequency=min_frequency, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), **common
        )
    return trainers.UnigramTrainer(unk_token="<unk>", **common)


def _attach_post_processor(tokenizer: Any, kind: str) -> None:
    """[CLS] A [SEP] B [SEP] for BERT, <s> A </s></s> B </s> for RoBERTa and XLM-R (their transformers classes)."""
    from tokenizers import processors

    def token_id(token: str) -> tuple[str, int]:
        return token, tokenizer.token_to_id(token)

    if kind == "wordpiece":
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0",
            pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[token_id("[CLS]"), token_id("[SEP]")],
        )
    elif kind == "bpe":
        tokenizer.post_processor = processors.RobertaProcessing(
            token_id("</s>"), token_id("<s>"), trim_offsets=True, add_prefix_space=False
        )
    else:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[token_id("<s>"), token_id("</s>")]
        )


def _unigram_minimum(scan: CorpusScan) -> int:
    """The smallest vocabulary the Unigram trainer accepts for this corpus: special tokens plus every character."""
    visible = sum(1 for character in scan.characters if not character.isspace())
    # + "▁", which starts every word, + 1: the trainer needs one spare entry (with none it overshoots vocab_size).
    return len(KIND_SPECS["unigram"].special_tokens) + visible + 2


def _too_small(corpus: Path, vocab_size: int, kind: str, needed: int, exact: bool) -> UserError:
    """The error naming the vocabulary size this corpus needs (``exact``, or about) for a ``kind`` tokenizer."""
    bound = "" if exact else " about"
    return UserError(
        at_location(
            corpus,
            None,
            f"--vocab_size {vocab_size} cannot hold the special tokens and the characters of this corpus; "
            f"{kind} needs{bound} {needed} or more: raise --vocab_size",
        )
    )


def _train(config: TokenizerTrainingConfig, scan: CorpusScan) -> Any:
    tokenizer = build_untrained_tokenizer(config.kind, config.lowercase)
    batches = -(-scan.sentences // _LINES_PER_BATCH)
    logger.info("training a %s tokenizer of %d entries on %d sentences", config.kind, config.vocab_size, scan.sentences)
    try:
        tokenizer.train_from_iterator(
            _iter_batches(config.corpus),
            trainer=_trainer(config.kind, config.vocab_size, config.min_frequency, config.show_progress),
            length=batches,
        )
    except Exception as error:
        if "not large enough" in str(error):  # Unigram: the alphabet alone exceeds vocab_size
            raise _too_small(
                config.corpus, config.vocab_size, config.kind, _unigram_minimum(scan), exact=False
            ) from None
        raise
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > config.vocab_size:  # WordPiece keeps its whole alphabet ('##' forms too) even when it does not fit
        unigram = config.kind == "unigram"
        needed = _unigram_minimum(scan) if unigram else size
        raise _too_small(config.corpus, config.vocab_size, config.kind, needed, exact=not unigram)
    if size < config.vocab_size:
        logger.warning("the corpus supports only %d vocabulary entries (asked for %d)", size, config.vocab_size)
    _attach_post_processor(tokenizer, config.kind)
    return tokenizer


def transformers_files(kind: str, lowercase: bool, model_max_length: int) -> dict[str, dict[str, Any]]:
    """tokenizer_config.json and special_tokens_map.json of a ``kind`` tokenizer as transformers 5 writes them (4
    reads them too)."""
    spec = KIND_SPECS[kind]
    settings: dict[str, Any] = {"backend": "tokenizers", "tokenizer_class": spec.tokenizer_class}
    if kind == "wordpiece":
        # BertTokenizer rebuilds its normaliser from these: without do_lower_case it would lower-case.
        settings.update(do_lower_case=lowercase, strip_accents=None, tokenize_chinese_chars=True)
    elif kind == "bpe":
        settings.update(add_prefix_space=False, trim_offsets=True, errors="replace")
    else:
        settings.update(add_prefix_space=True)
    settings.update(spec.roles)
    settings["model_max_length"] = model_max_length
    return {"tokenizer_config.json": settings, "special_tokens_map.json": dict(spec.roles)}


def _check_output(output: Path, corpus: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise UserError(at_location(output, None, "exists and is not a directory; choose another --output"))
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise UserError(
                at_location(
                    output,
                    None,
                    "already holds files; pass --overwrite to replace the whole directory, or choose another --output",
                )
            )
        if output.resolve() in corpus.resolve().parents:
            raise UserError(at_location(output, None, "holds the corpus, which --overwrite would delete; move it"))


def _write_directory(config: TokenizerTrainingConfig, tokenizer: Any, scan: CorpusScan) -> None:
    partial = config.output.with_name(config.output.name + TEMPORARY_SUFFIX)
    with os_errors_as_user_errors(partial):
        shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted run
        partial.mkdir(parents=True)
    try:
        with os_errors_as_user_errors(partial / "tokenizer.json"):
            tokenizer.save(str(partial / "tokenizer.json"), pretty=True)
            if config.kind != "unigram":  # vocab.txt (BERT) or vocab.json + merges.txt (RoBERTa): for other tools
                tokenizer.model.save(str(partial))
        for name, value in transformers_files(config.kind, config.lowercase, config.model_max_length).items():
            write_json_atomic(partial / name, value)
        record = {key: str(value) if isinstance(value, Path) else value for key, value in asdict(config).items()}
        record.update(sentences=scan.sentences, trained_vocab_size=tokenizer.get_vocab_size(with_added_tokens=True))
        write_json_atomic(partial / TRAINING_RECORD, record)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    replace_directory(partial, config.output)


def train_tokenizer(config: TokenizerTrainingConfig) -> Path:
    """Train the tokenizer ``config`` describes on its corpus and write it to ``config.output``; return that path."""
    _check_output(config.output, config.corpus, config.overwrite)
    scan = scan_corpus(config.corpus, config.show_progress)
    # Byte-level BPE's alphabet is fixed (checked by the config); WordPiece's ('##' forms too) is only known once
    # trained, and training stops right after counting words when it does not fit.
    if config.kind == "unigram" and _unigram_minimum(scan) > config.vocab_size:
        raise _too_small(config.corpus, config.vocab_size, config.kind, _unigram_minimum(scan), exact=False)
    tokenizer = _train(config, scan)
    _write_directory(config, tokenizer, scan)
    logger.info("wrote a %d-entry %s tokenizer to %s", tokenizer.get_vocab_size(), config.kind, config.output)
    return config.output
