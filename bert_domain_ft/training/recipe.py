"""The finetune stage: continue a BERT's pretraining on pregenerated epochs and save the adapted model.

A recipe: ``finetune`` builds each piece with a private ``_setup_*`` function (tokenizer and data, model,
optimizer and schedule, precision, checkpoints, evaluation), runs ``TrainingLoop`` and saves the result with
``save_pretrained`` (safetensors) plus the tokenizer, ``training_args.json`` and ``metrics.jsonl``. Stages with
another source of batches reuse the public half: ``seed_everything``, ``prepare_output_dir``, ``setup_tokenizer``,
``load_training_model`` and ``train_and_save(config, context, loaded, source, tokenizer, with_nsp)``.

    output_dir = finetune(FinetuneConfig(pregenerated_data=Path("epochs"), output_dir=Path("out"), bert_model="bert"))
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from bert_domain_ft.data.epoch_format import MANIFEST_NAME, open_epoch, open_holdout, read_manifest
from bert_domain_ft.data.legacy_format import convert_legacy_directory, is_legacy_directory
from bert_domain_ft.data.loader import CorpusMixing, EpochSource, PregeneratedSource
from bert_domain_ft.data.masking import DynamicMasking
from bert_domain_ft.errors import UserError
from bert_domain_ft.evaluation.evaluate import general_holdout_directory, open_general_holdout, prepare_general_holdout
from bert_domain_ft.files import (
    TEMPORARY_SUFFIX,
    os_errors_as_user_errors,
    storage_errors_as_os_errors,
    write_json_atomic,
)
from bert_domain_ft.kernels import keep_freed_memory, release_free_memory
from bert_domain_ft.kernels.attention import enable_light_attention, stock_attention, use_fast_dropout
from bert_domain_ft.kernels.feed_forward import use_recomputed_activation, use_recomputed_feed_forward
from bert_domain_ft.model.loading import check_model_files, usable_positions
from bert_domain_ft.model.losses import PretrainingObjective
from bert_domain_ft.model.optimization import (
    ParameterAnchor,
    build_optimizer,
    build_scheduler,
    layerwise_lr_multiplier,
    parameter_groups,
    warmup_steps_for,
)
from bert_domain_ft.model.pretraining import LoadedModel, head_parameters, quiet_transformers
from bert_domain_ft.model.tokenizer import TokenizerFacts, describe_tokenizer, load_tokenizer
from bert_domain_ft.training.checkpoints import CHECKPOINT_PREFIX, CheckpointManager, TrainingPosition
from bert_domain_ft.training.config import FinetuneConfig
from bert_domain_ft.training.distributed import DistributedContext, barrier, cleanup, hold_run_lock, init_distributed
from bert_domain_ft.training.loop import (
    Evaluator,
    LoopSettings,
    TrainingLoop,
    TrainingSetup,
    run_finished,
    total_optimizer_steps,
    warm_up_fresh_heads,
)
from bert_domain_ft.training.metrics import METRICS_FILE, MetricsLog
from bert_domain_ft.training.precision import check_precision_supported, setup_precision
from bert_domain_ft.training.selection import attach_model_selection
from bert_domain_ft.training.setup import (
    build_training_model,
    check_data_matches_model,
    check_tokenizer_matches_model,
    resolve_training_objective,
)

logger = logging.getLogger(__name__)

ARGUMENTS_FILE = "training_args.json"
# Files whose presence means output_dir already holds a run (or a model) that must not be silently overwritten.
_RUN_MARKERS = (METRICS_FILE, ARGUMENTS_FILE, "model.safetensors", "config.json")


def finetune(config: FinetuneConfig) -> Path:
    """Train as ``config`` says (resuming when asked) and return ``config.output_dir`` holding the model."""
    context = init_distributed(config.no_cuda, config.local_rank)
    try:
        check_precision_supported(context.device, config.fp16, config.bf16)  # before reading (--verify) any data
        seed_everything(config.seed)
        with hold_run_lock(context, config.output_dir, "finetune"):  # one writer: a second run is refused
            prepare_output_dir(config, context)
            tokenizer, facts, saveable_tokenizer = setup_tokenizer(config)
            data_dir, manifest = _setup_data(config, context, tokenizer, facts)
            objective = resolve_training_objective(config, manifest)
            loaded = load_training_model(config, context, objective, int(manifest["max_seq_len"]))
            model_config = loaded.model.config
            if not config.from_scratch:
                check_tokenizer_matches_model(facts, config.bert_model, model_config.vocab_size, config.tokenizer)
            check_data_matches_model(data_dir, manifest, facts, usable_positions(model_config), model_config.vocab_size)
            _check_epochs(config, context, data_dir, manifest)
            masking = None
            if manifest["masking"] == "dynamic":  # masked per batch, from the seed: resumable, fresh every epoch
                masking = DynamicMasking.from_manifest(manifest, seed=config.seed, tokenizer=tokenizer)
            # Several corpora: drawn by their sampling probabilities, per optimizer step of all processes.
            global_batch_size = config.train_batch_size * context.world_size
            mixing = CorpusMixing(config.seed, global_batch_size, config.batch_from_one_corpus)
            source = PregeneratedSource(data_dir, manifest, config.epochs, masking=masking, mixing=mixing)
            evaluate = _setup_evaluation(config, context, data_dir, tokenizer)
            with_nsp = objective == "nsp"
            train_and_save(config, context, loaded, source, saveable_tokenizer, with_nsp, evaluate)
        return config.output_dir
    finally:
        cleanup(context)


def train_and_save(
    config: FinetuneConfig,
    context: DistributedContext,
    loaded: LoadedModel,
    source: EpochSource,
    tokenizer: Any,
    with_nsp: bool,
    evaluate: Evaluator | None = None,
    arguments: dict[str, Any] | None = None,
) -> TrainingPosition:
    """The training half of the recipe for any ``EpochSource``: optimizer, schedule, precision, checkpoints,
    resume, the loop, and the final ``save_pretrained`` (+ tokenizer) when the last epoch is done.

    Call it after ``init_distributed``, ``seed_everything``, ``prepare_output_dir`` and loading the model onto
    its device (e.g. ``load_training_model``). ``arguments`` is what ``training_args.json`` records (default:
    ``config.to_json()``; a stage with settings of its own passes all of them).
    """
    settings = _loop_settings(config)
    setup = _setup_training(config, context, loaded, source, tokenizer, with_nsp, settings)
    setup.evaluate = evaluate
    start = _resume_position(config, setup)
    if context.is_main:
        write_json_atomic(config.output_dir / ARGUMENTS_FILE, arguments or config.to_json())
    selection = attach_model_selection(config, context, setup, tokenizer, start)  # --save_best, --probe_*
    warm_up_fresh_heads(setup, settings, config, with_nsp, start)  # fresh heads first train alone
    selection.score_starting_model(start)  # step 0 is a candidate: the encoder as loaded (a warm pooler)
    position = TrainingLoop(setup, settings).run(start)
    selection.report()  # which model won the probe, in one line
    release_free_memory()  # what the steps kept for reuse goes back before saving and evaluating
    if run_finished(position, config.epochs, config.max_steps):
        _save_final(config, context, loaded.model, tokenizer)
        if context.is_main:
            from bert_domain_ft.evaluation.heldout import print_run_before_after
            from bert_domain_ft.evaluation.plots import plot_run_if_possible

            print_run_before_after(config.output_dir)
            plot_run_if_possible(config.output_dir)
    return position


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices); fresh heads and dropout then start reproducibly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_output_dir(config: FinetuneConfig, context: DistributedContext) -> None:
    """Refuse to mix runs in one directory unless --resume or --overwrite_output_dir says what to do, and to
    write into the training data or delete it (directories compared resolved: symlinks, ``..``)."""
    output_dir = config.output_dir
    data_dir = Path(config.pregenerated_data).resolve()
    if data_dir.is_dir() and output_dir.resolve().is_relative_to(data_dir):
        raise UserError(
            f"{output_dir}: is {'' if output_dir.resolve() == data_dir else 'inside '}the pregenerated data "
            f"directory {config.pregenerated_data}; checkpoints and the model would be written among the data's "
            "files, choose an --output_dir outside it"
        )
    previous = [path.name for path in output_dir.iterdir()] if output_dir.is_dir() else []
    checkpoints = [name for name in previous if name.startswith(CHECKPOINT_PREFIX)]
    occupied = checkpoints + [name for name in previous if name in _RUN_MARKERS]
    if occupied and not (config.resume or config.overwrite_output_dir):
        raise UserError(
            f"{output_dir}: already holds a run or a model ({', '.join(sorted(occupied)[:3])}); pass --resume to "
            "continue it, --overwrite_output_dir to start over, or choose another --output_dir"
        )
    doomed = [name for name in occupied if data_dir.is_relative_to((output_dir / name).resolve())]
    if config.overwrite_output_dir and doomed:
        raise UserError(
            f"{output_dir / doomed[0]}: --overwrite_output_dir would delete it, and the pregenerated data "
            f"{config.pregenerated_data} is inside it; move the data out of {output_dir} or choose another --output_dir"
        )
    if context.is_main:
        if config.overwrite_output_dir and occupied:
            logger.warning("--overwrite_output_dir: deleting %s from %s", ", ".join(sorted(occupied)), output_dir)
            for name in occupied:
                path = output_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        with os_errors_as_user_errors(output_dir / ARGUMENTS_FILE):
            output_dir.mkdir(parents=True, exist_ok=True)
    barrier(context)


def setup_tokenizer(config: FinetuneConfig) -> tuple[Any, TokenizerFacts, Any]:
    """(tokenizer, its facts, the transformers tokenizer that is saved next to the model): --tokenizer's, or the
    model's own."""
    name = config.tokenizer or config.bert_model
    assert name is not None  # the config requires one of them
    check_model_files(name)  # a config.json that is not JSON: one line, not a traceback from AutoTokenizer
    tokenizer = load_tokenizer(name, config.do_lower_case)
    facts = describe_tokenizer(tokenizer, name)
    from transformers import AutoTokenizer

    with quiet_transformers():
        saveable = AutoTokenizer.from_pretrained(name)
    return tokenizer, facts, saveable


def _setup_data(
    config: FinetuneConfig, context: DistributedContext, tokenizer: Any, facts: TokenizerFacts
) -> tuple[Path, dict[str, Any]]:
    """The memmap data directory and its manifest; data in the original JSON format is converted first (once)."""
    if config.reduce_memory:
        logger.info("--reduce_memory: nothing to do, epochs are always memory-mapped")
    data_dir = config.pregenerated_data
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: no such directory; give the output directory of `bert-domain-ft pregenerate`")
    if is_legacy_directory(data_dir):
        if context.is_main:
            convert_legacy_directory(data_dir, tokenizer, facts, show_progress=config.show_progress)
        barrier(context)
        data_dir = convert_legacy_directory(data_dir, tokenizer, facts, show_progress=False)
    return data_dir, read_manifest(data_dir)


def _check_epochs(
    config: FinetuneConfig, context: DistributedContext, data_dir: Path, manifest: dict[str, Any]
) -> None:
    """Every epoch gets the fast size/shape/dtype/value-range check up front (a truncated or altered file is refused
    before training); --verify also compares each array's SHA-256 with its epoch.json (reads all the data once).
    Called after the manifest was checked against the model, whose message says more about data made for another
    model than an array/manifest mismatch would."""
    verify = config.verify_checksums and context.is_main
    for index in range(min(len(manifest["epochs"]), config.epochs)):
        open_epoch(data_dir, manifest, index, verify_checksum=verify)
    if verify:
        logger.info("%s: checksums verified", data_dir / MANIFEST_NAME)


def load_training_model(
    config: FinetuneConfig, context: DistributedContext, objective: str = "nsp", max_seq_len: int = 512
) -> LoadedModel:
    """The model to train on this process's device, with the CPU kernels when on a CPU: ``BertForPreTraining``
    of --bert_model for "nsp" (and for a BERT on "mlm"), any other ``AutoModelForMaskedLM`` for "mlm", or, with
    --from_scratch, a new --model_type model for --tokenizer and sequences of ``max_seq_len``."""
    check_precision_supported(context.device, config.fp16, config.bf16)  # stages calling this before their data
    loaded = build_training_model(config, objective, max_seq_len)
    loaded.model.to(context.device)
    if config.cpu_kernels and context.device.type == "cpu":
        use_cpu_kernels(loaded.model, config.bf16)
        keep_freed_memory()  # each step reuses the memory the last one freed (see allocator.py)
    return loaded


def use_cpu_kernels(model: torch.nn.Module, bf16: bool) -> None:
    """The CPU training kernels: memory-light attention, fast dropout masks and, for the feed-forward blocks,
    the recomputed pre-activation in float32 (less memory) or the recomputed activation in bf16 (where the
    pre-activation is half the size and the extra matmul costs relatively more)."""
    # The light attention plugs into transformers' attention interface, which not every model type uses.
    supported = getattr(model, "_supports_attention_backend", False)
    if not supported or not enable_light_attention(model):
        logger.info("this transformers version cannot plug in the memory-light attention; using its own")
    use_fast_dropout(model)
    (use_recomputed_activation if bf16 else use_recomputed_feed_forward)(model)


def _loop_settings(config: FinetuneConfig) -> LoopSettings:
    return LoopSettings(
        epochs=config.epochs,
        max_steps=config.max_steps,
        micro_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        logging_steps=config.logging_steps,
        save_steps=config.save_steps,
        eval_steps=config.eval_steps,
        stop_after_steps=config.stop_after_steps,
        show_progress=config.show_progress,
        anchor_weight=config.anchor_weight,
    )


def _setup_objective(loaded: LoadedModel, context: DistributedContext, with_nsp: bool) -> torch.nn.Module:
    """The loss module, DDP-wrapped when there are several processes."""
    if not with_nsp:
        # MLM-only data leaves the NSP head unused; freezing it keeps it out of the optimizer and of DDP.
        for parameter in head_parameters(loaded.model, ("nsp",)):
            parameter.requires_grad_(False)
    objective = PretrainingObjective(loaded.model, with_nsp=with_nsp)
    if context.is_distributed:
        device_ids = [context.device.index] if context.device.type == "cuda" else None
        objective = DistributedDataParallel(objective, device_ids=device_ids)
    return objective


def _setup_optimization(
    config: FinetuneConfig, model: torch.nn.Module, total_steps: int, device: torch.device
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over the decay / no-decay groups and the warm-up + linear-decay schedule over ``total_steps``."""
    multiplier = None
    if config.layerwise_lr_decay < 1.0:
        multiplier = layerwise_lr_multiplier(model, config.layerwise_lr_decay)
        logger.info("layer-wise learning rates: × %g per layer below the top (embeddings × %.3g)",
                    config.layerwise_lr_decay, multiplier("bert.embeddings.word_embeddings.weight"))  # fmt: skip
    groups = parameter_groups(model, config.learning_rate, config.weight_decay, lr_multiplier=multiplier)
    optimizer = build_optimizer(groups, config.learning_rate, config.adam_epsilon, device)
    warmup_steps = warmup_steps_for(total_steps, config.warmup_proportion)
    logger.info("%d optimizer steps, the first %d warming up", total_steps, warmup_steps)
    return optimizer, build_scheduler(optimizer, total_steps, warmup_steps)


def _setup_training(
    config: FinetuneConfig,
    context: DistributedContext,
    loaded: LoadedModel,
    source: EpochSource,
    tokenizer: Any,
    with_nsp: bool,
    settings: LoopSettings,
) -> TrainingSetup:
    objective = _setup_objective(loaded, context, with_nsp)
    total_steps = total_optimizer_steps(source, settings, context.world_size)
    optimizer, scheduler = _setup_optimization(config, loaded.model, total_steps, context.device)
    precision = setup_precision(context.device, config.fp16, config.bf16, config.loss_scale)
    logger.info(
        "%d sequences per step on %d process(es), %s on %s",
        config.train_batch_size * context.world_size,
        context.world_size,
        precision.name,
        context.device,
    )
    # What must not change between a checkpoint and its resumption (the data order and schedule depend on it).
    run_settings = {
        "world_size": context.world_size,
        "micro_batch_size": config.micro_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "epochs": config.epochs,
        "seed": config.seed,
        "total_steps": total_steps,
        "batch_from_one_corpus": config.batch_from_one_corpus,
        # The schedule and optimizer state come from the checkpoint: a changed rate would be silently ignored.
        "learning_rate": config.learning_rate,
        "warmup_proportion": config.warmup_proportion,
        "weight_decay": config.weight_decay,
        "layerwise_lr_decay": config.layerwise_lr_decay,
        "anchor_weight": config.anchor_weight,
    }
    checkpoints = CheckpointManager(
        config.output_dir, context, loaded.model, optimizer, scheduler, precision, run_settings,
        config.save_total_limit, tokenizer,
    )  # fmt: skip
    metrics = MetricsLog(config.output_dir / METRICS_FILE, enabled=context.is_main)
    anchor = None  # a model from scratch has no starting point worth keeping
    if not config.from_scratch:  # taken before --resume loads a checkpoint: θ₀ is always the model of bert_model
        fresh = head_parameters(loaded.model, loaded.fresh_heads)
        # The pull reads θ₀ every step, so it lives beside the weights; kept only for the logged drift (λ = 0),
        # it waits in host memory and the accelerator's memory stays the model's.
        device = context.device if config.anchor_weight > 0 else torch.device("cpu")
        anchor = ParameterAnchor.from_model(loaded.model, exclude=fresh, device=device)
        logger.info("starting weights kept for --anchor_weight %g and the drift: %d parameters, %.0f MB on %s",
                    config.anchor_weight, anchor.num_elements, anchor.memory_bytes / 1e6, device)  # fmt: skip
    return TrainingSetup(
        objective, loaded.model, optimizer, scheduler, precision, context, source, checkpoints, metrics,
        fresh_heads=loaded.fresh_heads, anchor=anchor,
    )  # fmt: skip


def _setup_evaluation(
    config: FinetuneConfig, context: DistributedContext, data_dir: Path, tokenizer: Any
) -> Evaluator | None:
    """The evaluator called by the loop before the first step, every --eval_steps and at the end, or None.

    The held-out set is the pregenerated ``holdout/`` (or ``--holdout_data``); with --general_holdout, general
    text is evaluated too (``general_*`` keys). Logits only at masked positions.
    """
    if not config.do_eval:
        return None
    from bert_domain_ft.evaluation.heldout import build_evaluator, corpus_names, with_general

    autocast_dtype = torch.bfloat16 if config.bf16 else torch.float16 if config.fp16 else None
    evaluate = None
    holdout = open_holdout(config.holdout_data or data_dir, verify_checksum=config.verify_checksums)
    if holdout is not None:
        names = corpus_names(read_manifest(config.holdout_data or data_dir), 0) or None  # several corpora: per corpus
        evaluate = build_evaluator(holdout, config.eval_batch_size, context.device, autocast_dtype, names=names)
    if config.general_holdout is None:
        return evaluate
    if context.is_main:  # a corpus file is pregenerated once, by rank 0; the others wait for it
        prepare_general_holdout(config.general_holdout, config.output_dir, read_manifest(data_dir),
                                config.bert_model, tokenizer, config.tokenizer)  # fmt: skip
    barrier(context)
    directory = general_holdout_directory(config.general_holdout, config.output_dir)
    fingerprint = describe_tokenizer(tokenizer, str(config.tokenizer or config.bert_model)).vocab_fingerprint
    general = open_general_holdout(directory, fingerprint, verify_checksum=config.verify_checksums)
    names = corpus_names(read_manifest(directory), 0) or None
    general_evaluate = build_evaluator(general, config.eval_batch_size, context.device, autocast_dtype, names=names)
    return with_general(evaluate, general_evaluate)


def _resume_position(config: FinetuneConfig, setup: TrainingSetup) -> TrainingPosition:
    if not config.resume:
        return TrainingPosition()
    resumed = setup.checkpoints.resume()  # the newest intact checkpoint; damaged newer ones are named
    if resumed is None:
        logger.warning("--resume: no checkpoint in %s, starting from the beginning", config.output_dir)
        return TrainingPosition()
    checkpoint, position = resumed
    setup.metrics.truncate_after(position.global_step)
    logger.info(
        "resuming from %s: step %d, epoch %d, micro-batch %d",
        checkpoint.name,
        position.global_step,
        position.epoch + 1,
        position.batch_in_epoch,
    )
    return position


def _save_final(config: FinetuneConfig, context: DistributedContext, model: torch.nn.Module, tokenizer: Any) -> None:
    """``save_pretrained`` model and tokenizer into output_dir; each file appears whole (temp dir + rename)."""
    if context.is_main:
        temporary = config.output_dir / (".final-model" + TEMPORARY_SUFFIX)
        try:
            with os_errors_as_user_errors(temporary), storage_errors_as_os_errors():
                shutil.rmtree(temporary, ignore_errors=True)
                temporary.mkdir()
                with quiet_transformers(), stock_attention(model):
                    model.save_pretrained(str(temporary))  # safetensors (the default since transformers 4.35)
                    tokenizer.save_pretrained(str(temporary))
                for path in temporary.iterdir():
                    os.replace(path, config.output_dir / path.name)
                temporary.rmdir()
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)  # the checkpoints of the run are intact: --resume saves again
            raise
        logger.info("saved the adapted model to %s", config.output_dir)
    barrier(context)
