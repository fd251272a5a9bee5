"""The simple stage: one command from a corpus to an adapted BERT, two-sentence pairs made on the fly.

The corpus is tokenized once into a document store (in RAM with ``on_memory``, else on disk under
``output_dir/tokenized_corpus``, removed when the run ends) and served to finetune's own training loop by
``SentencePairSource``: the pairs of epoch ``e`` are drawn from ``(seed, e)`` and masked when a batch is built.
Model loading, optimizer, schedule, precision, checkpoints, resume and saving are finetune's recipe builders, and
the objective is decided as finetune decides it (``setup.resolve_training_objective``; the pairs can always carry
next-sentence labels): masked LM only for a model without a trained NSP head, each pair then a sentence and its
successor.
A ``train_corpus`` of records (parquet, a ``datasets`` directory, JSON lines) is first written as a corpus to
``output_dir/train_corpus.txt`` (rank 0). With ``task_data`` the task's texts are written to
``output_dir/task_corpus.txt`` (rank 0) and tokenized after the corpus into the same store, as its last corpus;
``simple_pairs`` adds their pairs at ``task_share`` of each epoch. The checkpoints record the corpus's and the
task file's content fingerprints and the pair settings (``resume_identity``): ``--resume`` refuses an edited corpus.

    output_dir = simple_finetune(SimpleConfig.create(train_corpus=Path("corpus.txt"), output_dir=Path("out"),
                                                     bert_model="bert-base-uncased"))
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bert_domain_ft.corpus.records import input_fingerprint, is_dataset_directory
from bert_domain_ft.corpus.task_files import RECORDS_TEXT_FLAG, holds_records, write_task_corpus
from bert_domain_ft.data.document_store import DocumentStore, build_document_store, open_document_store
from bert_domain_ft.data.instances import RowLayout
from bert_domain_ft.data.loader import Batch, BatchFetcher
from bert_domain_ft.data.masking import DynamicMasking, masking_tables
from bert_domain_ft.data.simple_pairs import (
    EpochPairs,
    PairIndex,
    assemble_batch,
    length_grouped_order,
    pair_lengths,
    sample_epoch_pairs,
)
from bert_domain_ft.errors import UserError
from bert_domain_ft.files import TEMPORARY_SUFFIX, os_errors_as_user_errors, replace_directory
from bert_domain_ft.model.tokenizer import TokenizerFacts
from bert_domain_ft.training.checkpoints import data_identity
from bert_domain_ft.training.config import SimpleConfig
from bert_domain_ft.training.distributed import DistributedContext, barrier, cleanup, hold_run_lock, init_distributed
from bert_domain_ft.training.recipe import (
    load_training_model,
    prepare_output_dir,
    seed_everything,
    setup_tokenizer,
    train_and_save,
)
from bert_domain_ft.training.setup import check_tokenizer_matches_model, resolve_training_objective

logger = logging.getLogger(__name__)

STORE_DIRECTORY = "tokenized_corpus"
TASK_CORPUS_FILE = "task_corpus.txt"  # --task_data's texts in the corpus format, in output_dir
RECORDS_CORPUS_FILE = "train_corpus.txt"  # a train_corpus of records in the corpus format, in output_dir


class SentencePairSource:
    """An ``EpochSource`` of two-sentence NSP pairs: epoch ``e``'s pairs from ``(seed, e)``, masks per batch.

    With ``group_by_length`` it also offers ``epoch_order(e)``: the order in which the loop cuts the epoch into
    global batches of ``global_batch_size``, so that each batch holds pairs of similar length. Without
    ``with_nsp`` (objective "mlm") a pair is a sentence and its successor, one stretch of text: its token types
    are all 0, as in masked-LM-only pregenerated data, and its NSP label goes unused.
    """

    def __init__(
        self,
        store: DocumentStore,
        layout: RowLayout,
        masking: DynamicMasking,
        global_batch_size: int,
        group_by_length: bool = False,
        task_share: float | None = None,
        with_nsp: bool = True,
    ):
        self.store = store
        self.index = PairIndex.from_store(store, task_share)
        self.layout = layout
        self.masking = masking
        self.seed = masking.seed  # pairs, order and masks all derive from the run's seed
        self.global_batch_size = global_batch_size
        self.group_by_length = group_by_length
        self.with_nsp = with_nsp
        self._cached: tuple[int, EpochPairs] | None = None

    def pairs(self, epoch: int) -> EpochPairs:
        """Epoch ``epoch``'s pairs (the last epoch's are kept: the loop asks for the order, then the batches)."""
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, sample_epoch_pairs(self.index, self.seed, epoch, self.with_nsp))
        return self._cached[1]

    def epoch_size(self, epoch: int) -> int:
        return self.index.num_instances  # the corpus's sentences that have a successor, plus the task's pairs

    def epoch_order(self, epoch: int) -> np.ndarray | None:
        """The instance order of epoch ``epoch`` when grouping by length; None lets the loop shuffle as usual."""
        if not self.group_by_length:
            return None
        lengths = pair_lengths(self.index, self.pairs(epoch), self.layout.max_seq_len)
        return length_grouped_order(lengths, self.global_batch_size, self.seed, epoch)

    def open_epoch(self, epoch: int) -> BatchFetcher:
        pairs = self.pairs(epoch)

        def fetch(instances: np.ndarray) -> Batch:
            arrays = assemble_batch(self.store, self.index, pairs, instances, self.layout, self.masking, epoch)
            if not self.with_nsp:
                arrays["token_type_ids"] = np.zeros_like(arrays["token_type_ids"])
            return {name: torch.from_numpy(value) for name, value in arrays.items()}

        return fetch


def pair_settings(config: SimpleConfig, tokenizer: Any, facts: TokenizerFacts) -> tuple[RowLayout, DynamicMasking]:
    """How rows are laid out and masked: pregeneration's rules, masks drawn per batch from the run's seed."""
    if config.do_whole_word_mask and facts.continuation_prefix is None:
        raise UserError(f"{facts.name}: --do_whole_word_mask needs a WordPiece tokenizer ('##' pieces); drop the flag")
    layout = RowLayout(config.max_seq_len, facts.cls_token_id, facts.sep_token_id, facts.pad_token_id)
    masking = DynamicMasking(
        tables=masking_tables(facts, tokenizer),
        masked_lm_prob=config.masked_lm_prob,
        max_predictions=config.max_predictions_per_seq,
        whole_word=config.do_whole_word_mask,
        seed=config.training.seed,
    )
    return layout, masking


def write_task_corpus_file(config: SimpleConfig, context: DistributedContext) -> Path | None:
    """Rank 0 writes ``task_data``'s texts as a corpus into output_dir (every process then reads it); None without
    task data. A bad task file is a one-line ``UserError`` naming file:line."""
    if config.task_data is None:
        return None
    path = config.output_dir / TASK_CORPUS_FILE
    if context.is_main:
        stats = write_task_corpus(config.task_data, config.task_text_column, path)
        logger.info(
            "task text: %d rows of %s (%d empty skipped), %d sentences, %.0f%% of each epoch's pairs",
            stats.documents, config.task_data, stats.empty_rows_skipped, stats.sentences, 100 * config.task_share,
        )  # fmt: skip
    barrier(context)
    return path


def write_records_corpus_file(config: SimpleConfig, context: DistributedContext) -> Path:
    """The corpus file to tokenize: ``train_corpus`` itself, or, when it holds records (parquet, a datasets
    directory, JSON lines), those written by rank 0 as ``output_dir/train_corpus.txt`` (each row a document)."""
    if not holds_records(config.train_corpus):
        return config.train_corpus
    if not (config.train_corpus.is_file() or is_dataset_directory(config.train_corpus)):
        raise UserError(f"{config.train_corpus}: not found; check the --train_corpus path")
    path = config.output_dir / RECORDS_CORPUS_FILE
    if context.is_main:
        stats = write_task_corpus(config.train_corpus, config.text_field, path, document_column=config.document_field,
                                  text_flag=RECORDS_TEXT_FLAG)  # fmt: skip
        logger.info("%s: %d rows (%d empty skipped) → %d documents, %d sentences in %s", config.train_corpus,
                    stats.rows, stats.empty_rows_skipped, stats.documents, stats.sentences, path)  # fmt: skip
    barrier(context)
    return path


def load_store(
    config: SimpleConfig, context: DistributedContext, tokenizer: Any, facts: TokenizerFacts
) -> DocumentStore:
    """Tokenize the corpus (and the task text after it): in RAM per process with ``on_memory``, else once on disk
    by rank 0 (others open it)."""
    show = config.training.show_progress and context.is_main
    corpus = write_records_corpus_file(config, context)
    task_corpus = write_task_corpus_file(config, context)
    paths = [corpus] if task_corpus is None else [corpus, task_corpus]
    if config.on_memory:
        return build_document_store(paths, tokenizer, facts, directory=None, show_progress=show)
    final = config.output_dir / STORE_DIRECTORY
    if context.is_main:
        temporary = final.with_name(final.name + TEMPORARY_SUFFIX)
        with os_errors_as_user_errors(temporary):
            shutil.rmtree(temporary, ignore_errors=True)
        build_document_store(paths, tokenizer, facts, directory=temporary, show_progress=show)
        replace_directory(temporary, final)
    barrier(context)
    return open_document_store(final)


def remove_store(context: DistributedContext, output_dir: Path, on_memory: bool) -> None:
    """Delete the on-disk store (rank 0; none ``on_memory``). Every process is past its last read: the run ends
    with a barrier."""
    if context.is_main and not on_memory:
        shutil.rmtree(output_dir / STORE_DIRECTORY, ignore_errors=True)


def check_model_fits(config: SimpleConfig, model_config: Any, facts: TokenizerFacts) -> None:
    training = config.training
    if not training.from_scratch:
        check_tokenizer_matches_model(facts, training.bert_model, model_config.vocab_size, training.tokenizer)
    if config.max_seq_len > model_config.max_position_embeddings:
        raise UserError(
            f"{config.training.bert_model}: has only {model_config.max_position_embeddings} positions "
            f"(max_position_embeddings) but --max_seq_length is {config.max_seq_len}; "
            f"use --max_seq_length {model_config.max_position_embeddings} or less"
        )
    if facts.vocab_size > model_config.vocab_size:
        raise UserError(
            f"{config.training.bert_model}: its tokenizer has {facts.vocab_size} tokens but the model's embedding "
            f"matrix only {model_config.vocab_size}; resize the model's embeddings to the tokenizer and save it again"
        )


def simple_finetune(config: SimpleConfig) -> Path:
    """Train as ``config`` says (resuming when asked) and return the output directory holding the model."""
    training = config.training
    context = init_distributed(training.no_cuda, training.local_rank)
    try:
        seed_everything(training.seed)
        with hold_run_lock(context, config.output_dir, "simple"):  # one writer: a second run is refused
            prepare_output_dir(context, training.output_dir, training.pregenerated_data, training.resume,
                               training.overwrite_output_dir)  # fmt: skip
            tokenizer, facts, saveable_tokenizer = setup_tokenizer(training.tokenizer or training.bert_model,
                                                                   training.do_lower_case)  # fmt: skip
            # The pairs made on the fly can always carry next-sentence labels: the model's heads decide.
            objective = resolve_training_objective(training, "nsp", config.train_corpus)
            loaded = load_training_model(training, context, objective)
            check_model_fits(config, loaded.model.config, facts)
            try:
                source = _pair_source(config, context, tokenizer, facts, with_nsp=objective == "nsp")
                arguments, identity = config.to_json(), resume_identity(config, facts)
                train_and_save(training, context, loaded, source, saveable_tokenizer, with_nsp=objective == "nsp",
                               arguments=arguments, data_settings=identity)  # fmt: skip
            finally:
                remove_store(context, config.output_dir, config.on_memory)
        return config.output_dir
    finally:
        cleanup(context)


def resume_identity(config: SimpleConfig, facts: TokenizerFacts) -> dict[str, Any]:
    """What a simple checkpoint records of the data for ``--resume`` to compare: the corpus and the task file by
    content (``input_fingerprint``, one more read of each), the tokenizer by vocabulary, and the settings that
    shape the pairs (those of records and task text only when there are any)."""
    task, records = config.task_data, holds_records(config.train_corpus)
    return {
        "train_corpus": data_identity(config.train_corpus.absolute(), input_fingerprint(config.train_corpus)),
        "task_data": None if task is None else data_identity(task.absolute(), input_fingerprint(task)),
        "vocabulary": data_identity(facts.name, facts.vocab_fingerprint),
        "max_seq_len": config.max_seq_len,
        "masked_lm_prob": config.masked_lm_prob,
        "max_predictions_per_seq": config.max_predictions_per_seq,
        "do_whole_word_mask": config.do_whole_word_mask,
        "group_by_length": config.group_by_length,
        "task_share": None if task is None else config.task_share,
        "task_text_column": None if task is None else config.task_text_column,
        "text_field": config.text_field if records else None,
        "document_field": config.document_field if records else None,
    }


def _pair_source(
    config: SimpleConfig, context: DistributedContext, tokenizer: Any, facts: TokenizerFacts, with_nsp: bool
) -> SentencePairSource:
    layout, masking = pair_settings(config, tokenizer, facts)  # refuses bad flags before tokenizing the corpus
    store = load_store(config, context, tokenizer, facts)
    global_batch_size = config.training.micro_batch_size * context.world_size  # what the loop cuts epochs into
    task_share = config.task_share if config.task_data is not None else None
    source = SentencePairSource(store, layout, masking, global_batch_size, config.group_by_length, task_share, with_nsp)
    logger.info(
        "%d documents, %d sentences: %d sentence pairs per epoch%s (tokens %s)",
        store.num_documents,
        store.num_sentences,
        source.epoch_size(0),
        f", {source.index.num_task_instances} of them from the task text" if task_share is not None else "",
        "in RAM" if config.on_memory else f"on disk in {config.output_dir / STORE_DIRECTORY}",
    )
    return source
