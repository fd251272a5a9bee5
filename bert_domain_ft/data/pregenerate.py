"""``pregenerate``: corpus → N epochs of masked instances packed to ``max_seq_len`` (format: ``epoch_format``).

Steps: check the inputs and load the tokenizer → take the output directory's lock → write corpora given as
records (parquet, a ``datasets`` directory, JSON lines: ``corpus.records``) and the task's texts as corpus files
(``task_data``, see ``mixing``) → tokenize the corpora into a document store (in RAM, or on disk with
``reduce_memory``) → set documents aside for the held-out set → plan the corpora's mixing → generate every epoch
in shards, in ``num_workers`` processes (``epoch_writer``) → write ``manifest.json`` last. ``resume`` keeps
complete epochs and makes the rest; the result is byte-identical to an uninterrupted run, whatever
``num_workers`` is.

    manifest = pregenerate(PregenerateConfig(train_corpus=Path("c.txt"), output_dir=Path("out"), bert_model="bert"))
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from bert_domain_ft.corpus.reading import open_corpus_checked, sample_lines
from bert_domain_ft.corpus.records import is_dataset_directory
from bert_domain_ft.corpus.task_files import (
    RECORDS_TEXT_FLAG,
    TaskCorpusStats,
    holds_records,
    iter_task_texts,
    write_task_corpus,
)
from bert_domain_ft.data import epoch_writer
from bert_domain_ft.data.config import RECORDS_CORPUS_SUFFIX, TASK_CORPUS_FILE, TASK_CORPUS_NAME, PregenerateConfig
from bert_domain_ft.data.document_store import DocumentStore, build_document_store
from bert_domain_ft.data.epoch_format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    GENERATION_RECORD,
    HOLDOUT_DIRECTORY,
    MANIFEST_NAME,
    array_names,
    check_resume,
    discard_unfinished,
    epoch_directory_name,
    publish,
    remove_stale_epochs,
    working_directory,
)
from bert_domain_ft.data.epoch_writer import GenerationContext, ShardTask
from bert_domain_ft.data.instances import SPECIAL_TOKENS_PER_PAIR, DocumentPool, InstanceRecipe, RowLayout
from bert_domain_ft.data.masking import DynamicMasking, masking_tables
from bert_domain_ft.data.mixing import (
    instances_per_token,
    plan_task_mixing,
    read_task_sample,
    sampling_probabilities,
    task_manifest_entry,
)
from bert_domain_ft.errors import UserError
from bert_domain_ft.files import command_line, hold_output_lock, is_disk_full, write_json_atomic
from bert_domain_ft.model.files import (
    FRESH_NSP_HEAD_NOTE,
    check_model_positions,
    has_trained_nsp_head,
    read_model_config,
)
from bert_domain_ft.model.tokenizer import TokenizerFacts, describe_tokenizer, load_tokenizer, require_tokenizer_fits

logger = logging.getLogger(__name__)

STORE_DIRECTORY = "document_store.partial"
SAMPLE_TEXTS = 1000  # texts of each corpus that the tokenizer check reads
EPOCH_ORDER_KEY = 7  # seed-sequence word for the per-epoch document order of "mlm" packing

_worker_context: GenerationContext | None = None  # what forked workers inherit (``_run_tasks``)


def pregenerate(config: PregenerateConfig) -> dict[str, Any]:
    """Write ``config.epochs_to_generate`` epochs (and the held-out set) to ``config.output_dir``; return the manifest.

    Everything that can refuse the input is checked before anything is written; the writing holds the output
    directory's lock (``output_lock``), so a second run on the same directory is refused, not interleaved."""
    samples = {name: _corpus_sample(path, config.text_field) for name, path in config.named_corpora()}
    task_sample = read_task_sample(config.task_data, config.task_text_column) if config.task_data else []
    check_model_positions(config.bert_model, config.max_seq_len)
    tokenizer_source = config.tokenizer or config.bert_model
    assert tokenizer_source is not None
    tokenizer = load_tokenizer(tokenizer_source, config.do_lower_case)
    for name, path in config.named_corpora():
        require_tokenizer_fits(tokenizer, tokenizer_source, path, samples[name])
    if config.task_data is not None:
        require_tokenizer_fits(tokenizer, tokenizer_source, config.task_data, task_sample)
    facts = describe_tokenizer(tokenizer, tokenizer_source)
    objective = resolve_objective(config.objective, config.bert_model, facts)
    if config.do_whole_word_mask and facts.continuation_prefix is None:
        raise UserError(
            f"{tokenizer_source}: --do_whole_word_mask needs a WordPiece tokenizer (pieces marked '##'); this one is "
            "not, so whole-word masking would do nothing: drop the flag"
        )
    with hold_output_lock(config.output_dir, "pregenerate"):
        return _write_output(config, tokenizer, facts, objective)


def _corpus_sample(path: Path, text_field: str) -> list[str]:
    """The first texts of a corpus (to judge the tokenizer by), after checking it can be read: a corpus file, or
    records (``holds_records``) with a ``text_field`` column."""
    if not holds_records(path):
        open_corpus_checked(path)
        return sample_lines(path)
    if not (path.is_file() or is_dataset_directory(path)):
        raise UserError(f"{path}: not found; check the --train_corpus path")
    return [row.text for row in itertools.islice(iter_task_texts(path, text_field, RECORDS_TEXT_FLAG), SAMPLE_TEXTS)]


def _records_as_corpora(
    corpora: list[tuple[str, Path]], text_field: str, document_field: str | None, output_dir: Path
) -> list[tuple[str, Path]]:
    """The named corpora with records (parquet, a datasets directory, JSON lines) written as corpus files into
    ``output_dir`` (``NAME_corpus.txt``: each row a document, or the rows of one ``document_field`` value)."""
    written = []
    for name, path in corpora:
        if holds_records(path):
            target = output_dir / f"{name}{RECORDS_CORPUS_SUFFIX}"
            stats = write_task_corpus(
                path, text_field, target, document_column=document_field, text_flag=RECORDS_TEXT_FLAG
            )
            logger.info("%s: %d rows (%d empty skipped) → %d documents, %d sentences in %s", path, stats.rows,
                        stats.empty_rows_skipped, stats.documents, stats.sentences, target)  # fmt: skip
            path = target
        written.append((name, path))
    return written


def resolve_objective(requested: str, model: str | None, facts: TokenizerFacts) -> str:
    """ "auto" means NSP for a BERT with a trained NSP head (the only family that has one), MLM for everything
    else: other families, and BERT encoders saved without their pretraining heads (``FRESH_NSP_HEAD_NOTE``)."""
    if requested != "auto":
        return requested
    model_config = read_model_config(model)
    if model_config is not None:
        is_bert = model_config.get("model_type") == "bert"
    else:
        is_bert = facts.continuation_prefix is not None  # no model yet: a WordPiece tokenizer means a BERT
    if not is_bert:
        logger.info("objective: masked LM only (this model has no next-sentence-prediction head)")
        return "mlm"
    if has_trained_nsp_head(model) is False:
        logger.info("objective: masked LM only: %s; --objective nsp trains it anyway", FRESH_NSP_HEAD_NOTE)
        return "mlm"
    return "nsp"


def _write_output(config: PregenerateConfig, tokenizer: Any, facts: TokenizerFacts, objective: str) -> dict[str, Any]:
    """Generate into a working directory (``working_directory``) and publish it; what fails is discarded."""
    inputs = [path for _, path in config.named_corpora()] + [config.task_data]
    work = working_directory(config.output_dir, config.overwrite, config.resume, inputs)
    final_output = config.output_dir
    config = replace(config, output_dir=work)
    record = config.generation_record(facts.vocab_fingerprint)
    if config.resume:
        check_resume(work, record)
    write_json_atomic(work / GENERATION_RECORD, record)
    store_directory = work / STORE_DIRECTORY if config.reduce_memory else None
    if store_directory is not None:
        shutil.rmtree(store_directory, ignore_errors=True)
    # "nsp" places whole sentences; a longer one would be truncated to fit, so it is cut into pieces that fit.
    max_sentence_tokens = config.max_seq_len - SPECIAL_TOKENS_PER_PAIR if objective == "nsp" else None
    try:
        named = _records_as_corpora(config.named_corpora(), config.text_field, config.document_field, work)
        corpora, task_stats = _write_task_corpus(named, config.task_data, config.task_text_column, work)
        paths = [path for _, path in corpora]
        store = build_document_store(
            paths, tokenizer, facts, store_directory, config.show_progress, max_sentence_tokens
        )
        _log_long_lines(corpora, store, max_sentence_tokens)
        split = _split_documents(store, config.holdout_fraction, config.seed, corpora)
        pools = _document_pools(store, *split)
        if objective == "nsp":
            _check_next_sentence_pairs(pools, corpora, config.task_share)
        context = _generation_context(config, objective, store, store_directory, pools, tokenizer, facts)
        manifest = _generate_all(config, corpora, context, split, facts, record, task_stats)
    except BaseException as error:
        written = work / TASK_CORPUS_FILE
        if config.task_data is not None and written.resolve() != config.task_data.resolve():
            written.unlink(missing_ok=True)  # rewritten by every run: it must not block the next one
        discard_unfinished(work, final_output, disk_full=is_disk_full(error))
        raise
    finally:
        if store_directory is not None:
            shutil.rmtree(store_directory, ignore_errors=True)
    if work != final_output:
        publish(work, final_output)
    return manifest


def _write_task_corpus(
    corpora: list[tuple[str, Path]], task_data: Path | None, text_column: str, output_dir: Path
) -> tuple[list[tuple[str, Path]], TaskCorpusStats | None]:
    """The named corpora to generate from: the user's, then the task's texts written into the output directory."""
    if task_data is None:
        return corpora, None
    path = output_dir / TASK_CORPUS_FILE
    stats = write_task_corpus(task_data, text_column, path)
    return [*corpora, (TASK_CORPUS_NAME, path)], stats


def _log_long_lines(corpora: list[tuple[str, Path]], store: DocumentStore, max_sentence_tokens: int | None) -> None:
    for (_, path), long in zip(corpora, store.long_lines):
        if long.lines:
            shown = ", ".join(f"{path}:{number}" for number in long.first_line_numbers)
            more = (
                f" and {long.lines - len(long.first_line_numbers)} more"
                if long.lines > len(long.first_line_numbers)
                else ""
            )
            logger.warning(
                "%s: %d line(s) longer than %d tokens (%s%s; %d tokens in all) were cut into %d sentences of at most "
                "%d tokens rather than truncated to one instance; split long lines into sentences (bert-domain-ft "
                "prepare) for better next-sentence pairs",
                path, long.lines, max_sentence_tokens, shown, more, long.tokens, long.pieces, max_sentence_tokens,
            )  # fmt: skip


def _generation_context(
    config: PregenerateConfig,
    objective: str,
    store: DocumentStore,
    store_directory: Path | None,
    pools: dict[tuple[int, int], DocumentPool],
    tokenizer: Any,
    facts: TokenizerFacts,
) -> GenerationContext:
    """What the workers share: the store and its document pools, and how rows are made and masked."""
    recipe = InstanceRecipe(
        objective=objective,
        layout=RowLayout.of_tokenizer(config.max_seq_len, facts),
        short_seq_prob=config.short_seq_prob,
        cross_document=not config.no_cross_document,
    )
    masking = DynamicMasking(
        tables=masking_tables(facts, tokenizer),
        masked_lm_prob=config.masked_lm_prob,
        max_predictions=config.max_predictions_per_seq,
        whole_word=config.do_whole_word_mask,
        seed=config.seed,
    )
    return GenerationContext(store, store_directory, pools, recipe, masking, config.dynamic_masking)


def _generate_all(
    config: PregenerateConfig,
    corpora: list[tuple[str, Path]],
    context: GenerationContext,
    split: tuple[list[np.ndarray], list[np.ndarray]],
    facts: TokenizerFacts,
    record: dict[str, Any],
    task_stats: TaskCorpusStats | None,
) -> dict[str, Any]:
    """Plan the mixing, make every missing epoch of the ``split`` (training, held-out documents per corpus), and
    write the manifest (last)."""
    store = context.store
    training, held_out = split
    token_counts = store.document_token_counts()
    training_tokens = np.array([token_counts[documents].sum() for documents in training])
    probabilities, copies = _mixing(
        context, training, training_tokens, config.sampling_exponent,
        config.task_share if config.task_data is not None else None,
    )  # fmt: skip
    wanted = [(epoch_directory_name(e), epoch_writer.TRAINING_STREAM, e) for e in range(config.epochs_to_generate)]
    with_holdout = any(len(documents) for documents in held_out)  # corpora too small to hold out give none
    if with_holdout:
        wanted.append((HOLDOUT_DIRECTORY, epoch_writer.HOLDOUT_STREAM, 0))
    statistics = _kept_epochs(config.output_dir, wanted) if config.resume else {}
    jobs = [job for job in wanted if job[0] not in statistics]
    statistics.update(_generate(context, jobs, copies, config.output_dir, config.num_workers, config.show_progress))
    remove_stale_epochs(config.output_dir, config.epochs_to_generate, with_holdout)
    task_entry = None
    if task_stats is not None and config.task_data is not None:
        task_entry = task_manifest_entry(
            config.task_data, config.task_text_column, config.task_share, TASK_CORPUS_FILE,
            copies[len(corpora) - 1], task_stats,
        )  # fmt: skip
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "objective": context.recipe.objective,
        "masking": "dynamic" if config.dynamic_masking else "static",
        "tokenizer": facts.to_json(),
        "max_seq_len": config.max_seq_len,
        "max_predictions_per_seq": config.max_predictions_per_seq,
        "generation": record,
        "corpora": _corpus_entries(corpora, store, training, held_out, training_tokens, probabilities),
        "sampling_exponent": config.sampling_exponent,
        "task_data": task_entry,
        "corpus": _corpus_totals(store, training),
        "epochs": [
            _epoch_entry(name, e, statistics[name])
            for name, stream, e in wanted
            if stream == epoch_writer.TRAINING_STREAM
        ],
        "holdout": None if not with_holdout else _holdout_entry(held_out, statistics[HOLDOUT_DIRECTORY]),
        # How to make the data again, for the model card: the command line as typed (the last one, with --resume),
        # None when pregenerate was called from Python. Absent in data written before it was recorded.
        "command": command_line(),
    }
    write_json_atomic(config.output_dir / MANIFEST_NAME, manifest)
    return manifest


def _split_documents(
    store: DocumentStore, holdout_fraction: float, seed: int, corpora: list[tuple[str, Path]]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per corpus, training and held-out document indices (ascending); held-out ones chosen by seed. The task
    corpus is all training: it is small, and TAPT means training on all of it (it is not the domain to measure)."""
    assert store.corpus_document_offsets is not None
    training, held_out = [], []
    for corpus, (name, path) in enumerate(corpora):
        first, end = (int(value) for value in store.corpus_document_offsets[corpus : corpus + 2])
        everything = np.arange(first, end, dtype=np.int64)
        fraction = 0.0 if name == TASK_CORPUS_NAME else holdout_fraction
        count = int(round(len(everything) * fraction))
        if fraction > 0 and (count < 2 or len(everything) - count < 2):
            logger.warning(
                "%s: %d documents are too few to hold out %s with at least two documents on each side (NSP needs "
                "two): none of them is held out; add documents or change --holdout_fraction", path, len(everything),
                f"{holdout_fraction:.0%}",
            )  # fmt: skip
            count = 0
        rng = np.random.default_rng([seed, epoch_writer.HOLDOUT_STREAM, corpus])
        chosen = np.sort(first + rng.choice(len(everything), size=count, replace=False))
        training.append(np.setdiff1d(everything, chosen))
        held_out.append(chosen)
    return training, held_out


def _document_pools(
    store: DocumentStore, training: list[np.ndarray], held_out: list[np.ndarray]
) -> dict[tuple[int, int], DocumentPool]:
    """The pool of every (stream, corpus): each corpus's training documents, and its held-out ones if any."""
    pools = {}
    for corpus, (training_documents, held_out_documents) in enumerate(zip(training, held_out)):
        pools[(epoch_writer.TRAINING_STREAM, corpus)] = DocumentPool.from_documents(store, training_documents)
        if len(held_out_documents):
            pools[(epoch_writer.HOLDOUT_STREAM, corpus)] = DocumentPool.from_documents(store, held_out_documents)
    return pools


def _check_next_sentence_pairs(
    pools: dict[tuple[int, int], DocumentPool], corpora: list[tuple[str, Path]], task_share: float
) -> None:
    """Under NSP a one-sentence document gives masked-LM instances only (no NSP label). Refuse when no training
    document of any corpus has two sentences: NSP would have nothing to learn, and the fix is a flag or the
    corpus's layout, not a run that trains masked LM under another name. Warn naming a corpus that has none
    beside others that do; say how much of the task text (one-sentence rows are the norm there) has no label."""
    training = [
        (name, path, pools[(epoch_writer.TRAINING_STREAM, index)]) for index, (name, path) in enumerate(corpora)
    ]
    unpaired = {name for name, _, pool in training if pool.num_one_sentence_documents == len(pool.documents)}
    if len(unpaired) == len(training):
        raise UserError(
            f"{', '.join(str(path) for name, path, _ in training if name != TASK_CORPUS_NAME)}: no document has two "
            'sentences, so next-sentence prediction has no "is next" pair to learn from; put one sentence per line '
            "with a blank line only between documents (bert-domain-ft prepare), or pass --objective mlm"
        )
    for name, path, pool in training:
        if name == TASK_CORPUS_NAME:
            only_task_unpaired = task_share >= 1.0 and name in unpaired
            (logger.warning if only_task_unpaired else logger.info)(
                "task text: %d of its %d rows are one sentence: their instances are masked-LM only (no next-sentence "
                "label)%s", pool.num_one_sentence_documents, len(pool.documents),
                "; at --task_share 1 next-sentence prediction is not trained" if only_task_unpaired else "",
            )  # fmt: skip
        elif name in unpaired:
            logger.warning(
                "%s: no document has two sentences: its instances are masked-LM only (no next-sentence label); "
                "keep the sentences of a document together, one per line, for NSP pairs", path,
            )  # fmt: skip


def _mixing(
    context: GenerationContext,
    training: list[np.ndarray],
    training_tokens: np.ndarray,
    sampling_exponent: float,
    task_share: float | None,
) -> tuple[np.ndarray, dict[int, int]]:
    """Sampling probabilities of the corpora, and the copies per epoch of the task corpus (the last), which takes
    ``task_share`` of the draws (None: no task corpus)."""
    if task_share is None:
        return sampling_probabilities(training_tokens, sampling_exponent), {}
    seed = context.masking.seed
    rates = np.array([instances_per_token(context.store, documents, context.recipe, seed) for documents in training])
    probabilities, copies = plan_task_mixing(training_tokens, rates, sampling_exponent, task_share)
    return probabilities, {len(training) - 1: copies}


def _kept_epochs(output_dir: Path, wanted: list[tuple[str, int, int]]) -> dict[str, dict[str, Any]]:
    """Statistics of the wanted epochs an interrupted run completed (``--resume`` keeps them)."""
    kept = {}
    for name, _, _ in wanted:
        done = epoch_writer.read_complete_epoch(output_dir / name)
        if done is not None:
            kept[name] = done
            logger.info("%s: complete from the interrupted run, kept", name)
    return kept


def _generate(
    context: GenerationContext,
    jobs: list[tuple[str, int, int]],
    copies: dict[int, int],
    output_dir: Path,
    num_workers: int,
    show_progress: bool,
) -> dict[str, dict[str, Any]]:
    """Run every (directory name, stream, epoch) job; returns statistics by directory name."""
    tasks_per_job = [_shard_tasks(context, copies, output_dir, *job) for job in jobs]
    statistics: dict[str, dict[str, Any]] = {}
    results = _run_tasks([task for tasks in tasks_per_job for task in tasks], context, num_workers)
    total_tokens = sum(task.num_tokens for tasks in tasks_per_job for task in tasks)
    with tqdm(total=total_tokens, unit="tok", unit_scale=True, disable=not show_progress) as bar:
        for (name, stream, epoch), tasks in zip(jobs, tasks_per_job):
            bar.set_description(f"generating {name}")
            for _ in tasks:
                bar.update(next(results)["tokens"])
            final = output_dir / name
            extra = {"epoch": epoch if stream == epoch_writer.TRAINING_STREAM else None}
            statistics[name] = epoch_writer.assemble_epoch(
                final.with_name(name + ".partial"), final, len(tasks), _array_names(context, stream),
                context.recipe.layout.max_seq_len, extra,
            )  # fmt: skip
            _log_statistics(name, statistics[name])
    return statistics


def _array_names(context: GenerationContext, stream: int) -> tuple[str, ...]:
    """The arrays of an epoch of ``stream``: the held-out set always has its masks stored."""
    static = not context.dynamic_masking or stream == epoch_writer.HOLDOUT_STREAM
    return array_names(context.recipe.objective, "static" if static else "dynamic", context.several_corpora)


def _shard_tasks(
    context: GenerationContext, copies: dict[int, int], output_dir: Path, name: str, stream: int, epoch: int
) -> list[ShardTask]:
    """The shards of one epoch, corpus by corpus. "nsp" walks documents in corpus order (pairs are local to a
    document); "mlm" packs documents in an order drawn per epoch, so sequences differ from epoch to epoch. A
    corpus in ``copies`` (the task) is made that many times in training epochs, each copy from its own random
    streams (shard numbers continue across copies), so every copy has its own pairs and masks."""
    token_counts = context.store.document_token_counts()
    partial = epoch_writer.fresh_partial_directory(output_dir / name)
    tasks: list[ShardTask] = []
    for pool_stream, corpus in context.pools:
        if pool_stream != stream:
            continue
        repeats = copies.get(corpus, 1) if stream == epoch_writer.TRAINING_STREAM else 1
        for copy in range(repeats):
            tasks.extend(_corpus_shards(context, token_counts, partial, (stream, epoch, corpus, copy), len(tasks)))
    return tasks


def _corpus_shards(
    context: GenerationContext,
    token_counts: np.ndarray,
    partial: Path,
    job: tuple[int, int, int, int],
    first_shard: int,
) -> list[ShardTask]:
    """The shards of one copy of one corpus in one epoch, ``job`` = (stream, epoch, corpus, copy), numbered from
    ``first_shard`` in the epoch; copy 0 is exactly what a run without copies makes."""
    stream, epoch, corpus, copy = job
    documents = context.pools[(stream, corpus)].documents
    packed = context.recipe.objective == "mlm"
    if packed:
        order_seed = [context.masking.seed, stream, epoch, corpus, EPOCH_ORDER_KEY] + ([copy] if copy else [])
        documents = np.random.default_rng(order_seed).permutation(documents)
    cuts = epoch_writer.shard_boundaries(context.store, documents)
    per_copy = len(cuts) - 1
    tasks: list[ShardTask] = []
    for index, (first, end) in enumerate(zip(cuts[:-1], cuts[1:])):
        tasks.append(
            ShardTask(
                directory=partial,
                stream=stream,
                epoch=epoch,
                shard=first_shard + index,
                first_position=first,
                end_position=end,
                num_tokens=int(token_counts[documents[first:end]].sum()),
                documents=documents[first:end] if packed else None,
                corpus=corpus,
                corpus_shard=copy * per_copy + index,
            )  # fmt: skip
        )
    return tasks


def _run_tasks(tasks: list[ShardTask], context: GenerationContext, num_workers: int) -> Iterator[dict[str, Any]]:
    """Results in task order; forked workers inherit ``context`` (memmaps included) instead of pickling it."""
    global _worker_context
    _worker_context = context
    if num_workers == 1 or "fork" not in multiprocessing.get_all_start_methods():
        if num_workers > 1:
            logger.warning("this platform cannot fork: generating in one process")
        for task in tasks:
            yield epoch_writer.run_shard(task, context)
        return
    with multiprocessing.get_context("fork").Pool(num_workers) as pool:
        yield from pool.imap(_run_in_worker, tasks)


def _run_in_worker(task: ShardTask) -> dict[str, Any]:
    assert _worker_context is not None
    return epoch_writer.run_shard(task, _worker_context)


def _log_statistics(name: str, statistics: dict[str, Any]) -> None:
    parts = [f"{statistics['num_instances']} instances", f"packing fill {100 * statistics['packing_fill']:.1f}%"]
    if statistics["random_next_fraction"] is not None:
        parts.append(f"random next {100 * statistics['random_next_fraction']:.1f}% of NSP-labelled instances")
    if statistics["mlm_only_instances"]:
        parts.append(f"{statistics['mlm_only_instances']} masked-LM only (no NSP label)")
    if statistics["mean_masked_per_instance"] is not None:
        parts.append(f"{statistics['mean_masked_per_instance']:.1f} masked tokens per instance")
    logger.info("%s: %s", name, ", ".join(parts))


def _corpus_entries(
    corpora: list[tuple[str, Path]],
    store: DocumentStore,
    training: list[np.ndarray],
    held_out: list[np.ndarray],
    training_tokens: np.ndarray,
    probabilities: np.ndarray,
) -> list[dict[str, Any]]:
    """The manifest's ``corpora``: each named corpus's documents, training tokens and sampling probability."""
    return [
        {
            "name": corpus_name,
            "path": TASK_CORPUS_FILE if corpus_name == TASK_CORPUS_NAME else str(path),
            "documents": int(len(training[index]) + len(held_out[index])),
            "training_tokens": int(training_tokens[index]),
            "sampling_probability": float(probabilities[index]),
            "long_lines_split": store.long_lines[index].to_json() if store.long_lines else None,
        }
        for index, (corpus_name, path) in enumerate(corpora)
    ]


def _corpus_totals(store: DocumentStore, training: list[np.ndarray]) -> dict[str, int]:
    """The manifest's ``corpus``: what the store holds over all corpora."""
    return {
        "documents": store.num_documents,
        "sentences": store.num_sentences,
        "tokens": store.num_tokens,
        "dropped_empty_sentences": store.dropped_empty_sentences,
        "dropped_empty_documents": store.dropped_empty_documents,
        "training_documents": int(sum(len(documents) for documents in training)),
    }


def _epoch_entry(name: str, epoch: int, statistics: dict[str, Any]) -> dict[str, Any]:
    return {"index": epoch, "directory": name, "num_instances": statistics["num_instances"], "statistics": statistics}


def _holdout_entry(held_out: list[np.ndarray], statistics: dict[str, Any]) -> dict[str, Any]:
    return {
        "directory": HOLDOUT_DIRECTORY,
        "documents": np.concatenate(held_out).tolist(),
        "num_instances": statistics["num_instances"],
        "statistics": statistics,
    }
