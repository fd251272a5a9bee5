"""The finetune stage: continue a model's pretraining on pregenerated epochs and save the adapted model.

``finetune`` is the stage's outline: lock the output directory, load the tokenizer, the data and the model and
check that they fit each other (``setup``), build the held-out evaluation, then ``train_and_save``: the loss,
optimizer, schedule, precision and checkpoints of the run (``_setup_training``), resume, model selection, the
``TrainingLoop``'s head-only steps and main phase, and the final ``save_pretrained`` (safetensors) with the
tokenizer, next to ``training_args.json`` and ``metrics.jsonl``. A run whose checkpoint lacked its masked-LM head
also keeps the base with that head warmed (right after the head-only steps) as ``base/``, the fair "before". The ``simple`` stage, which makes its batches on the fly,
reuses ``seed_everything``, ``prepare_output_dir``, ``setup_tokenizer``, ``load_training_model`` and
``train_and_save``.

    output_dir = finetune(FinetuneConfig(pregenerated_data=Path("epochs"), output_dir=Path("out"), bert_model="bert"))
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bert_domain_ft.data.loader import EpochSource
from bert_domain_ft.errors import UserError
from bert_domain_ft.evaluation.heldout import WARMED_BASE_DIRECTORY
from bert_domain_ft.files import (
    OUTPUT_LEDGER,
    TEMPORARY_SUFFIX,
    claim_directory,
    claim_entries,
    describe_entries,
    fresh_directory,
    honour_umask,
    os_errors_as_user_errors,
    owns_directory,
    remove_entries,
    replace_directory,
    storage_errors_as_os_errors,
    unclaimed_entries,
    write_directory_atomic,
    write_json_atomic,
)
from bert_domain_ft.kernels import release_free_memory, use_cpu_kernels, use_gpu_kernels
from bert_domain_ft.model.loading import check_model_files, usable_positions
from bert_domain_ft.model.optimization import ParameterAnchor
from bert_domain_ft.model.pretraining import MLM_HEAD, LoadedModel, head_parameters, quiet_transformers
from bert_domain_ft.model.saving import SaveFormat
from bert_domain_ft.model.tokenizer import TokenizerFacts, describe_tokenizer, load_tokenizer
from bert_domain_ft.model.vocabulary import fresh_rows
from bert_domain_ft.training import setup as build
from bert_domain_ft.training.budget import HeadWarmupPlan, plan_head_warmup
from bert_domain_ft.training.checkpoints import CHECKPOINT_PREFIX, CheckpointManager, TrainingPosition
from bert_domain_ft.training.config import FinetuneConfig
from bert_domain_ft.training.distributed import DistributedContext, barrier, cleanup, hold_run_lock, init_distributed
from bert_domain_ft.training.loop import (
    Evaluator,
    LoopSettings,
    PretrainingObjective,
    TrainingLoop,
    TrainingSetup,
    ddp_wrapped,
    settings_from,
    total_optimizer_steps,
)
from bert_domain_ft.training.metrics import METRICS_FILE, MetricsLog
from bert_domain_ft.training.precision import check_precision_supported, setup_precision
from bert_domain_ft.training.selection import BEST_DIRECTORY, attach_model_selection, model_writer
from bert_domain_ft.training.throughput import Throughput
from bert_domain_ft.training.trackers import MLFLOW_DIRECTORY, TENSORBOARD_DIRECTORY, WANDB_DIRECTORY, open_trackers

logger = logging.getLogger(__name__)

ARGUMENTS_FILE = "training_args.json"
# Files whose presence means output_dir already holds a run (or a model) that must not be silently overwritten.
_RUN_MARKERS = (METRICS_FILE, ARGUMENTS_FILE, "model.safetensors", "config.json", BEST_DIRECTORY)
# What a run writes into output_dir without recording the name itself (appends, the trackers' libraries): recorded
# in the ledger when the run takes the directory. Atomic writes and renamed-in directories record their own.
_UNRECORDED_OUTPUTS = (METRICS_FILE, TENSORBOARD_DIRECTORY, MLFLOW_DIRECTORY, WANDB_DIRECTORY)
# The FinetuneConfig settings (and world_size, total_steps) a checkpoint records and --resume requires unchanged;
# see ``_run_settings`` for the rest of what is checked and for what may change.
_RESUME_SETTINGS = (
    # the data order and the schedule
    "world_size", "micro_batch_size", "gradient_accumulation_steps", "epochs", "max_steps", "seed", "total_steps",
    "batch_from_one_corpus",
    # the optimizer and what acts on each step (their state comes from the checkpoint: a change would mix two runs)
    "learning_rate", "warmup_proportion", "weight_decay", "adam_epsilon", "max_grad_norm", "layerwise_lr_decay",
    "anchor_weight", "head_warmup_steps", "head_learning_rate", "warmup_steps",
    # the model built from scratch, and the arithmetic: precision, TF32, the CPU kernels' own dropout masks
    "from_scratch", "model_type", "config_overrides", "fp16", "bf16", "loss_scale", "tf32", "cpu_kernels",
)  # fmt: skip


def finetune(config: FinetuneConfig) -> Path:
    """Train as ``config`` says (resuming when asked) and return ``config.output_dir`` holding the model."""
    context = init_distributed(config.no_cuda, config.local_rank)
    try:
        check_precision_supported(context.device, config.fp16, config.bf16)  # before reading (--verify) any data
        seed_everything(config.seed)
        with hold_run_lock(context, config.output_dir, "finetune"):  # one writer: a second run is refused
            inputs = (config.bert_model, config.tokenizer, config.holdout_data, config.general_holdout,
                      config.probe_train, config.probe_test)  # fmt: skip
            prepare_output_dir(context, config.output_dir, config.pregenerated_data, config.resume,
                               config.overwrite_output_dir, inputs)  # fmt: skip
            tokenizer, facts, saveable_tokenizer = setup_tokenizer(config.tokenizer or config.bert_model,
                                                                   config.do_lower_case)  # fmt: skip
            if config.reduce_memory:
                logger.info("--reduce_memory: nothing to do, epochs are always memory-mapped")
            show = config.show_progress
            data_dir, manifest = build.open_training_data(config.pregenerated_data, context, tokenizer, facts, show)
            objective = build.resolve_training_objective(config, manifest["objective"], config.pregenerated_data)
            loaded = load_training_model(config, context, objective, int(manifest["max_seq_len"]))
            _check_model_fits(config, loaded.model.config, facts, data_dir, manifest)
            build.check_epochs(data_dir, manifest, config.epochs, config.verify_checksums and context.is_main)
            source = build.pregenerated_source(data_dir, manifest, config, tokenizer, context.world_size)
            evaluate = build.build_evaluation(config, context, data_dir, tokenizer)
            identity = build.resume_identity(config, data_dir, manifest)  # what --resume checks the data by
            train_and_save(config, context, loaded, source, saveable_tokenizer, objective == "nsp", evaluate,
                           data_settings=identity)  # fmt: skip
        return config.output_dir
    finally:
        cleanup(context)


def _check_model_fits(
    config: FinetuneConfig, model_config: Any, facts: TokenizerFacts, data_dir: Path, manifest: dict[str, Any]
) -> None:
    """--tokenizer against the model's embeddings (not with --from_scratch), then the data against both."""
    if not config.from_scratch:
        build.check_tokenizer_matches_model(facts, config.bert_model, model_config.vocab_size, config.tokenizer)
    build.check_data_matches_model(data_dir, manifest, facts, usable_positions(model_config), model_config.vocab_size)


def train_and_save(
    config: FinetuneConfig,
    context: DistributedContext,
    loaded: LoadedModel,
    source: EpochSource,
    tokenizer: Any,
    with_nsp: bool,
    evaluate: Evaluator | None = None,
    arguments: dict[str, Any] | None = None,
    data_settings: dict[str, Any] | None = None,
) -> TrainingPosition:
    """The training half of the recipe for any ``EpochSource``: optimizer, schedule, precision, checkpoints,
    resume, the loop, and the final ``save_pretrained`` (+ tokenizer) when the last epoch is done.

    Call it after ``init_distributed``, ``seed_everything``, ``prepare_output_dir`` and loading the model onto
    its device (e.g. ``load_training_model``). ``arguments`` is what ``training_args.json`` records (default:
    ``config.to_json()``; a stage with settings of its own passes all of them); ``data_settings`` what the
    checkpoints record of the data beside the run's settings, for ``--resume`` to check (see ``_run_settings``).
    """
    settings = settings_from(LoopSettings, config)
    arguments = arguments or config.to_json()
    setup = _setup_training(config, context, loaded, source, tokenizer, with_nsp, settings, arguments,
                            data_settings or {})  # fmt: skip
    try:  # the trackers' runs end with this call, whatever happens in it
        return _train_and_save(config, context, loaded, setup, settings, tokenizer, with_nsp, evaluate, arguments)
    finally:
        setup.metrics.close()


def _train_and_save(
    config: FinetuneConfig,
    context: DistributedContext,
    loaded: LoadedModel,
    setup: TrainingSetup,
    settings: LoopSettings,
    tokenizer: Any,
    with_nsp: bool,
    evaluate: Evaluator | None,
    arguments: dict[str, Any],
) -> TrainingPosition:
    setup.evaluate = evaluate
    start = _resume_position(setup, config.resume, config.output_dir)
    keeps_base = keeps_warmed_base(setup.head_warmup)
    if context.is_main:
        warmed = {"warmed_base": WARMED_BASE_DIRECTORY} if keeps_base else {}
        write_json_atomic(config.output_dir / ARGUMENTS_FILE, {**arguments, **warmed})
    selection = attach_model_selection(config, context, setup, tokenizer, start)  # --save_best, --probe_*
    loop = TrainingLoop(setup, settings)
    loop.log_plan()  # one line: the run's steps, head-only and main, and its evaluations
    loop.warm_up_heads(start, with_nsp)  # fresh heads first train alone, in the run's first steps
    if keeps_base and start.global_step == 0:
        save_warmed_base(context, setup, tokenizer, config.output_dir)  # the fair "before": base/
    selection.score_starting_model(start)  # step 0 is a candidate: the encoder as loaded (a warm pooler)
    position = loop.run(start)
    selection.report()  # which model won the probe, in one line
    release_free_memory()  # what the steps kept for reuse goes back before saving and evaluating
    if loop.finished(position):
        _save_final(context, loaded.model, tokenizer, config.output_dir, setup.checkpoints.save_format)
        if context.is_main:
            from bert_domain_ft.evaluation.heldout import print_run_before_after
            from bert_domain_ft.evaluation.model_card import command_line, write_model_card
            from bert_domain_ft.evaluation.plots import plot_run_if_possible

            print_run_before_after(config.output_dir)
            plot_run_if_possible(config.output_dir)
            write_model_card(config.output_dir, command_line())  # README.md: what the model is, how it scored
    return position


def keeps_warmed_base(head_warmup: HeadWarmupPlan) -> bool:
    """Whether a run keeps its warmed base: its head-only steps train a fresh masked-LM head."""
    return head_warmup.steps > 0 and MLM_HEAD in head_warmup.heads


def save_warmed_base(context: DistributedContext, setup: TrainingSetup, tokenizer: Any, output_dir: Path) -> None:
    """``output_dir/base/``: the model right after its head-only steps (step 0) with the tokenizer, a loadable
    model. It is the base with trained heads, the fair "before" of ``evaluate`` and ``fill-mask`` (the base as
    saved has random ones, whose guesses are noise). Written whole (``base.partial`` renamed, like ``best/``) by
    the main process, and logged as a ``"kind": "warmed_base"`` record."""
    if context.is_main:
        final = output_dir / WARMED_BASE_DIRECTORY
        write_directory_atomic(final, model_writer(setup.model, tokenizer, setup.checkpoints.save_format))
        steps = setup.head_warmup.steps
        setup.metrics.append({"kind": "warmed_base", "step": 0, "directory": WARMED_BASE_DIRECTORY,
                              "head_only_steps": steps})  # fmt: skip
        logger.info("saved the base with its heads trained in the %d head-only steps to %s: the fair 'before' of "
                    "evaluate and fill-mask", steps, final)  # fmt: skip
    barrier(context)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices); fresh heads and dropout then start reproducibly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_output_dir(
    context: DistributedContext,
    output_dir: Path,
    data_dir: Path,
    resume: bool,
    overwrite: bool,
    inputs: Sequence[str | Path | None] = (),
) -> None:
    """Take ``output_dir`` for this run (its ledger records what the run writes, ``files.claim_directory``).

    Refused, naming them, when it holds entries this tool did not write (the user's README.md, say) or another run
    (unless --resume continues it); --overwrite_output_dir (``overwrite``) deletes every entry instead, naming each,
    but never one holding the training data ``data_dir`` or another of the run's ``inputs`` (the model, held-out
    files), nor the current directory. ``checkpoint-*`` entries are the run's by their name; a run directory of an
    older version (checkpoints, no ledger) is adopted by --resume. Never written into the training data either (paths compared resolved: symlinks, ``..``)."""
    _refuse_output_inside_data(output_dir, data_dir)
    listing = sorted(path.name for path in output_dir.iterdir()) if output_dir.is_dir() else []
    entries = [name for name in listing if name != OUTPUT_LEDGER]
    checkpoints = [name for name in entries if name.startswith(CHECKPOINT_PREFIX)]  # the run's by their name
    occupied = checkpoints + [name for name in entries if name in _RUN_MARKERS]
    legacy = resume and bool(checkpoints) and not owns_directory(output_dir)  # a run from before the ledger
    unclaimed = [] if legacy or overwrite else unclaimed_entries(output_dir)
    foreign = [name for name in unclaimed if name not in checkpoints]
    if foreign:
        raise UserError(
            f"{output_dir}: holds {describe_entries(foreign)}, which bert_domain_ft did not write; move them out, "
            "choose another --output_dir, or pass --overwrite_output_dir to delete them"
        )
    if occupied and not (resume or overwrite):
        raise UserError(
            f"{output_dir}: already holds a run or a model ({', '.join(occupied[:3])}); pass --resume to "
            "continue it, --overwrite_output_dir to start over, or choose another --output_dir"
        )
    if overwrite and entries:
        reads = [(data_dir, "the pregenerated data"), *((path, "this run's input") for path in inputs)]
        _refuse_deleting_inputs(output_dir, reads)
    if context.is_main:
        with os_errors_as_user_errors(output_dir / ARGUMENTS_FILE):
            if overwrite:
                remove_entries(output_dir, entries, "--overwrite_output_dir")
            claim_directory(output_dir, _UNRECORDED_OUTPUTS + tuple(entries if legacy else ()))
    barrier(context)


def _refuse_output_inside_data(output_dir: Path, data_dir: Path) -> None:
    data = Path(data_dir).resolve()
    if data.is_dir() and output_dir.resolve().is_relative_to(data):
        raise UserError(
            f"{output_dir}: is {'' if output_dir.resolve() == data else 'inside '}the pregenerated data "
            f"directory {data_dir}; checkpoints and the model would be written among the data's "
            "files, choose an --output_dir outside it"
        )


def _refuse_deleting_inputs(output_dir: Path, inputs: list[tuple[str | Path | None, str]]) -> None:
    """--overwrite_output_dir deletes every entry of ``output_dir``: refuse when one holds a path the run reads
    (resolved, so an input reached through a link inside is not affected: a link is unlinked, not followed), or
    the current directory."""
    root = output_dir.resolve()
    for path, what in [*inputs, (Path.cwd(), "the current directory")]:
        if path is None or not Path(path).exists() or not Path(path).resolve().is_relative_to(root):
            continue
        inside = Path(path).resolve().relative_to(root).parts
        doomed = output_dir / inside[0] if inside else output_dir
        raise UserError(
            f"{doomed}: --overwrite_output_dir would delete it, and {what} {path} is "
            f"{'inside it' if inside else 'this directory'}; move it out of {output_dir} or choose another --output_dir"
        )


def setup_tokenizer(name: str | None, do_lower_case: bool | None) -> tuple[Any, TokenizerFacts, Any]:
    """(tokenizer, its facts, the transformers tokenizer that is saved next to the model) of ``name`` (--tokenizer,
    or the model's own)."""
    assert name is not None  # the config requires --tokenizer or --bert_model
    check_model_files(name)  # a config.json that is not JSON: one line, not a traceback from AutoTokenizer
    tokenizer = load_tokenizer(name, do_lower_case)
    facts = describe_tokenizer(tokenizer, name)
    from transformers import AutoTokenizer

    with quiet_transformers():
        saveable = AutoTokenizer.from_pretrained(name)
    return tokenizer, facts, saveable


def load_training_model(
    config: FinetuneConfig, context: DistributedContext, objective: str = "nsp", max_seq_len: int = 512
) -> LoadedModel:
    """The model to train on this process's device, with the CPU kernels when on a CPU: ``BertForPreTraining``
    of --bert_model for "nsp" (and for a BERT on "mlm"), any other ``AutoModelForMaskedLM`` for "mlm", or, with
    --from_scratch, a new --model_type model for --tokenizer and sequences of ``max_seq_len``."""
    check_precision_supported(context.device, config.fp16, config.bf16)  # stages calling this before their data
    loaded = build.build_training_model(config, objective, max_seq_len)
    loaded.model.to(context.device)
    if config.cpu_kernels:
        use_cpu_kernels(loaded.model, config.bf16)
    use_gpu_kernels(loaded.model, config.compile, config.tf32, config.deterministic)  # no-op off CUDA
    return loaded


def _setup_objective(loaded: LoadedModel, context: DistributedContext, with_nsp: bool) -> torch.nn.Module:
    """The loss module, DDP-wrapped when there are several processes."""
    if not with_nsp:
        # MLM-only data leaves the NSP head unused; freezing it keeps it out of the optimizer and of DDP.
        for parameter in head_parameters(loaded.model, ("nsp",)):
            parameter.requires_grad_(False)
    return ddp_wrapped(PretrainingObjective(loaded.model, with_nsp=with_nsp), context)


def _setup_anchor(model: torch.nn.Module, fresh_heads: tuple[str, ...], weight: float, device: torch.device):
    """The starting weights θ₀ (fresh heads left out), taken before --resume loads a checkpoint: always the model
    of bert_model. The pull reads θ₀ every step, so it lives beside the weights; kept only for the logged drift
    (λ = 0), it waits in host memory and the accelerator's memory stays the model's."""
    fresh = head_parameters(model, fresh_heads)
    device = device if weight > 0 else torch.device("cpu")
    anchor = ParameterAnchor.from_model(model, exclude=fresh, device=device)
    logger.info("starting weights kept for --anchor_weight %g and the drift: %d parameters, %.0f MB on %s",
                weight, anchor.num_elements, anchor.memory_bytes / 1e6, device)  # fmt: skip
    return anchor


def _run_settings(
    config: FinetuneConfig, context: DistributedContext, steps: tuple[int, int], with_nsp: bool, data: dict[str, Any]
) -> dict[str, Any]:
    """What a checkpoint records and ``--resume`` requires unchanged (``CheckpointManager.check_settings``): the
    ``_RESUME_SETTINGS``, ``steps`` (the run's optimizer steps and how many of them are head-only), the objective
    trained ("nsp" or "mlm", as resolved), the device type, and the stage's
    ``data``: fingerprints of what it trains and evaluates on and the settings that shape its batches (finetune:
    ``setup.resume_identity``; simple: ``simple.resume_identity``).

    Everything else may change on resume, because it changes neither the weights nor what is measured: how often
    and where the run logs, saves and reports (logging_steps, save_steps, save_total_limit, stop_after_steps,
    report_to, show_progress), when and in what batches it evaluates (eval_steps, eval_batch_size), save_best,
    verify_checksums, reduce_memory and simple's on_memory, and the GPU's speed settings compile and deterministic
    (the same arithmetic, other kernels: a resumed run continues the same run, not bit for bit)."""
    run_values = {"world_size": context.world_size, "total_steps": steps[0]}
    settings = {name: run_values[name] if name in run_values else getattr(config, name) for name in _RESUME_SETTINGS}
    settings["head_only_steps"] = steps[1]
    return {**settings, "objective": "nsp" if with_nsp else "mlm", "device": context.device.type, **data}


def _setup_training(
    config: FinetuneConfig,
    context: DistributedContext,
    loaded: LoadedModel,
    source: EpochSource,
    tokenizer: Any,
    with_nsp: bool,
    settings: LoopSettings,
    arguments: dict[str, Any],
    data_settings: dict[str, Any],
) -> TrainingSetup:
    objective = _setup_objective(loaded, context, with_nsp)
    total_steps = total_optimizer_steps(source, settings, context.world_size)  # head-only steps included
    rows = fresh_rows(config.bert_model)
    head_only = plan_head_warmup(settings.head_warmup_steps, loaded.fresh_heads, with_nsp, total_steps, len(rows),
                                 "--max_steps" if settings.max_steps else "--epochs")  # fmt: skip
    optimization = settings_from(build.OptimizationSettings, config)  # the main schedule spans the rest:
    main_steps = total_steps - head_only.steps
    optimizer, scheduler = build.build_optimization(loaded.model, optimization, main_steps, context.device)
    precision = setup_precision(context.device, config.fp16, config.bf16, config.loss_scale)
    logger.info("%d sequences per step on %d process(es), %s on %s", config.train_batch_size * context.world_size,
                context.world_size, precision.name, context.device)  # fmt: skip
    run_settings = _run_settings(config, context, (total_steps, head_only.steps), with_nsp, data_settings)
    checkpoints = CheckpointManager(
        config.output_dir, context, loaded.model, optimizer, scheduler, precision.scaler, run_settings,
        config.save_total_limit, tokenizer, save_format=SaveFormat(with_nsp, config.bert_model),
    )  # fmt: skip
    run_name = config.output_dir.resolve().name  # --report_to: only the main process reports
    trackers = open_trackers(config.report_to, config.output_dir, run_name, arguments) if context.is_main else []
    metrics = MetricsLog(config.output_dir / METRICS_FILE, enabled=context.is_main, trackers=trackers)
    anchor = None  # a model from scratch has no starting point worth keeping
    if not config.from_scratch:
        anchor = _setup_anchor(loaded.model, loaded.fresh_heads, config.anchor_weight, context.device)
    return TrainingSetup(
        objective, loaded.model, optimizer, scheduler, precision, context, source, checkpoints, metrics,
        fresh_heads=loaded.fresh_heads, fresh_rows=rows, anchor=anchor,
        throughput=Throughput.for_training(loaded.model, context.device), head_warmup=head_only,
    )  # fmt: skip


def _resume_position(setup: TrainingSetup, resume: bool, output_dir: Path) -> TrainingPosition:
    if not resume:
        return TrainingPosition()
    resumed = setup.checkpoints.resume()  # the newest intact checkpoint; damaged newer ones are named
    if resumed is None:
        logger.warning("--resume: no checkpoint in %s, starting from the beginning", output_dir)
        setup.metrics.clear()  # a run killed before its first checkpoint: its records are not this run's
        return TrainingPosition()
    checkpoint, position = resumed
    setup.metrics.truncate_after(position.global_step)
    logger.info("resuming from %s: step %d, epoch %d, micro-batch %d", checkpoint.name, position.global_step,
                position.epoch + 1, position.batch_in_epoch)  # fmt: skip
    return position


def _save_final(
    context: DistributedContext, model: torch.nn.Module, tokenizer: Any, output_dir: Path, save_format: SaveFormat
) -> None:
    """The model and tokenizer into ``output_dir`` in the run's ``save_format``, written as ``best/`` is
    (``selection.model_writer``); each file appears whole (temp dir + rename), with the umask's mode, its name
    recorded in the ledger first; a folder (sentence-transformers' ``1_Pooling/``) replaces the earlier one whole."""
    if context.is_main:
        temporary = output_dir / (".final-model" + TEMPORARY_SUFFIX)
        try:
            with os_errors_as_user_errors(temporary), storage_errors_as_os_errors():
                fresh_directory(temporary)  # a link planted at the name is removed, not followed
                model_writer(model, tokenizer, save_format)(temporary)  # safetensors
                honour_umask(temporary)  # safetensors writes 0600
                claim_entries(output_dir, [path.name for path in temporary.iterdir()])
                for path in temporary.iterdir():
                    if path.is_dir():
                        replace_directory(path, output_dir / path.name)
                    else:
                        os.replace(path, output_dir / path.name)
                temporary.rmdir()
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)  # the checkpoints of the run are intact: --resume saves again
            raise
        logger.info("saved the adapted model to %s", output_dir)
    barrier(context)
