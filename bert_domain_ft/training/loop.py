"""The training loop: epochs of micro-batches → accumulated, clipped, scheduled optimizer steps.

It knows nothing about where batches come from (any ``EpochSource``), which loss is trained (any module whose
``forward(batch)`` returns a ``PretrainingOutput``), or how the optimizer was built; ``finetune`` assembles those.
Per optimizer step it may log (``metrics.jsonl`` + progress bar), evaluate, checkpoint and stop.

    position = TrainingLoop(setup, LoopSettings(epochs=3, micro_batch_size=32)).run(TrainingPosition())
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..pretraining_model import PretrainingOutput
from .anchor import ParameterAnchor
from .checkpoints import CheckpointManager, TrainingPosition, capture_rng_state, restore_rng_state
from .data import Batch, EpochSource, micro_batches_per_epoch, optimizer_steps_per_epoch, plan_epoch, source_order
from .distributed import DistributedContext, barrier
from .metrics import MetricsLog, MetricsWindow
from .precision import Precision
from .prefetch import BatchPrefetcher
from .step_health import StepHealth

logger = logging.getLogger(__name__)

Evaluator = Callable[[nn.Module], dict[str, float]]


@dataclass(frozen=True)
class LoopSettings:
    """How the loop iterates; all step counts are optimizer steps (0 turns the action off)."""

    epochs: int
    micro_batch_size: int  # sequences per forward pass in this process
    max_steps: int = 0  # train exactly this many steps, looping over the epochs as needed (0: all of `epochs`)
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0  # 0: no clipping
    seed: int = 42  # data order of epoch e is a function of (seed, e)
    logging_steps: int = 10
    save_steps: int = 0  # checkpoints are also written at the end of every epoch
    eval_steps: int = 0  # evaluation also runs before the first step and at the end
    stop_after_steps: int = 0  # stop early, with a checkpoint, after this many steps in total
    show_progress: bool = True
    prefetch_depth: int = 2  # batches built ahead in a background thread
    anchor_weight: float = 0.0  # λ of the pull towards the starting weights after each step (0: none)


@dataclass
class TrainingSetup:
    """The pieces the loop drives; ``objective`` may be DDP-wrapped, ``model`` is the plain model inside it."""

    objective: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: Precision
    context: DistributedContext
    source: EpochSource
    checkpoints: CheckpointManager
    metrics: MetricsLog
    evaluate: Evaluator | None = None
    fresh_heads: tuple[str, ...] = ()  # heads initialised at random (for a heads-only warm-up phase)
    # The starting weights: pulled towards with settings.anchor_weight, their distance logged at logging steps.
    anchor: ParameterAnchor | None = None
    # Called on the main process after each evaluation with (global step, its metrics), e.g. to keep the best model.
    on_evaluated: Callable[[int, dict[str, float]], None] | None = None
    # Called on every process after each checkpoint with (its directory, global step), e.g. to probe it.
    on_checkpoint: Callable[[Path, int], None] | None = None


def total_optimizer_steps(source: EpochSource, settings: LoopSettings, world_size: int) -> int:
    """Optimizer steps of the whole run (epochs may differ in size): ``max_steps`` when set."""
    if settings.max_steps:
        return settings.max_steps
    return sum(
        optimizer_steps_per_epoch(
            micro_batches_per_epoch(source.epoch_size(epoch), settings.micro_batch_size, world_size),
            settings.gradient_accumulation_steps,
        )
        for epoch in range(settings.epochs)
    )


def run_finished(position: TrainingPosition, epochs: int, max_steps: int) -> bool:
    """Every step done: ``max_steps`` of them when set, else the last step of the last of ``epochs``."""
    if max_steps:
        return position.global_step >= max_steps
    return position.epoch >= epochs


class TrainingLoop:
    """Runs ``settings.epochs`` epochs from a ``TrainingPosition``, exactly resumable at any checkpoint."""

    def __init__(self, setup: TrainingSetup, settings: LoopSettings):
        self.setup = setup
        self.settings = settings
        self.context = setup.context
        self.total_steps = total_optimizer_steps(setup.source, settings, setup.context.world_size)
        self.window = MetricsWindow(setup.context.device)
        self.position = TrainingPosition()
        self.last_saved_step = -1
        self.last_evaluated_step = -1
        self.last_grad_norm: torch.Tensor | None = None
        self.last_learning_rate = 0.0  # of the step just taken (the scheduler has already moved on)
        self.health = StepHealth(setup.precision, setup.checkpoints)  # NaN stop, fp16 skipped steps
        self.progress: tqdm | None = None

    def run(self, start: TrainingPosition) -> TrainingPosition:
        """Train from ``start`` to the end (or to ``stop_after_steps``); returns the final position."""
        self.position = start
        self.last_saved_step = start.global_step if start.global_step > 0 else -1
        if self.settings.stop_after_steps and start.global_step >= self.settings.stop_after_steps:
            logger.info("already at step %d, --stop_after_steps %d: nothing to do", start.global_step,
                        self.settings.stop_after_steps)  # fmt: skip
            return start
        self.progress = tqdm(
            total=self.total_steps,
            initial=start.global_step,
            desc="finetune",
            unit="step",
            dynamic_ncols=True,
            disable=not (self.settings.show_progress and self.context.is_main),
        )
        self.setup.model.train()
        try:
            if start.global_step == 0:
                self._evaluate()
            stopped = False
            while not self._finished() and not stopped:
                stopped = self._run_epoch(self.position.epoch, self.position.batch_in_epoch)
            if not stopped or self._finished():  # the end, not --stop_after_steps: evaluate the final model
                self._evaluate()
        finally:
            self.progress.close()
        return self.position

    def _finished(self) -> bool:
        return run_finished(self.position, self.settings.epochs, self.settings.max_steps)

    def _run_epoch(self, epoch: int, first_batch: int) -> bool:
        """Train epoch ``epoch`` from micro-batch ``first_batch``; ``True`` when asked to stop early."""
        settings, context = self.settings, self.context
        size = self.setup.source.epoch_size(epoch)
        order = source_order(self.setup.source, epoch)  # None: the usual shuffle of (seed, epoch)
        plan = plan_epoch(
            size, settings.micro_batch_size, settings.seed, epoch, context.rank, context.world_size, order
        )
        accumulation = settings.gradient_accumulation_steps
        of_epochs = "" if settings.max_steps else f"/{settings.epochs}"
        self.progress.set_description(f"epoch {epoch + 1}{of_epochs}")
        fetch = self.setup.source.open_epoch(epoch)
        with BatchPrefetcher(fetch, plan[first_batch:], context.device, settings.prefetch_depth) as batches:
            waited = 0.0
            for index, batch in enumerate(batches, start=first_batch):
                self.window.data_wait_seconds += batches.wait_seconds - waited
                waited = batches.wait_seconds
                group_start = index - index % accumulation
                group_size = min(accumulation, len(plan) - group_start)
                last_of_group = index == group_start + group_size - 1
                self._forward_backward(batch, group_size, synchronise=last_of_group)
                if last_of_group:
                    self._optimizer_step()
                    self.position = TrainingPosition(self.position.global_step + 1, epoch, index + 1)
                    if self._after_step(epoch_finished=index + 1 == len(plan)):
                        return True
        self.position = TrainingPosition(self.position.global_step, epoch + 1, 0)
        if self.last_saved_step != self.position.global_step:
            self._save()
        return False

    def _forward_backward(self, batch: Batch, group_size: int, synchronise: bool) -> PretrainingOutput:
        objective = self.setup.objective
        # Gradients are all-reduced only on the last micro-batch of an accumulation group.
        no_sync = isinstance(objective, DistributedDataParallel) and not synchronise
        with objective.no_sync() if no_sync else contextlib.nullcontext():  # type: ignore[operator]
            with self.setup.precision.autocast():
                output = objective(batch)
            self.setup.precision.backward(output.loss / group_size)
        self.window.add(output, sequences=int(batch["input_ids"].shape[0]))
        self.health.add_loss(output.loss)
        return output

    def _optimizer_step(self) -> None:
        setup = self.setup
        setup.precision.unscale(setup.optimizer)
        if self.settings.max_grad_norm > 0:
            parameters = [p for group in setup.optimizer.param_groups for p in group["params"]]
            self.last_grad_norm = torch.nn.utils.clip_grad_norm_(parameters, self.settings.max_grad_norm)
        step = self.position.global_step + 1
        self.health.check_before_step(step, self.last_grad_norm if self.settings.max_grad_norm > 0 else None)
        taken = setup.precision.step(setup.optimizer)
        if taken and setup.anchor is not None:  # decoupled like weight decay: at this step's rate, skipped with it
            setup.anchor.pull(setup.optimizer.param_groups, self.settings.anchor_weight)
        self.health.after_step(step, taken=taken)
        # The peak rate (with --layerwise_lr_decay the lower layers' groups run at a fraction of it).
        self.last_learning_rate = max(float(group["lr"]) for group in setup.optimizer.param_groups)
        setup.scheduler.step()
        setup.optimizer.zero_grad(set_to_none=True)

    def _after_step(self, epoch_finished: bool) -> bool:
        """Log, evaluate, checkpoint as scheduled; ``True`` when the run should stop here."""
        settings, step = self.settings, self.position.global_step
        self.progress.update(1)
        asked_to_stop = bool(settings.stop_after_steps) and step >= settings.stop_after_steps
        at_max_steps = bool(settings.max_steps) and step >= settings.max_steps  # the end, possibly mid-epoch
        stop = asked_to_stop or at_max_steps
        if step % settings.logging_steps == 0 or step == self.total_steps or stop:
            self._report()
        if settings.eval_steps and step % settings.eval_steps == 0 and not at_max_steps:  # the end evaluates
            self._evaluate()
        # The end-of-epoch checkpoint follows right away, so a scheduled save there would be written twice.
        if (settings.save_steps and step % settings.save_steps == 0 and not epoch_finished) or stop:
            self._save()
        if asked_to_stop and not at_max_steps:
            logger.info("stopping after step %d as asked (--stop_after_steps); continue with --resume", step)
        return stop

    def _epoch_progress(self) -> float:
        epoch = self.position.epoch if self.settings.max_steps else min(self.position.epoch, self.settings.epochs - 1)
        size = self.setup.source.epoch_size(epoch)
        batches = micro_batches_per_epoch(size, self.settings.micro_batch_size, self.context.world_size)
        return round(self.position.epoch + self.position.batch_in_epoch / max(batches, 1), 4)

    def _report(self) -> None:
        summary = self.window.summary(self.context)  # a collective call: every process gets here
        learning_rate = self.last_learning_rate
        record = {"kind": "train", "step": self.position.global_step, "epoch": self._epoch_progress()}
        record.update({"lr": learning_rate, **summary})
        if self.last_grad_norm is not None:
            record["grad_norm"] = float(self.last_grad_norm)
        if self.setup.precision.scaler is not None:  # fp16: steps the scaler skipped since the previous record
            record["skipped_steps"] = self.health.take_window_skips()
        if self.setup.anchor is not None and self.context.is_main:  # one pass over the weights: logging steps only
            record.update(self.setup.anchor.distance(self.settings.anchor_weight))
        self.setup.metrics.append(record)
        postfix = {"mlm": f"{summary['mlm_loss']:.3f}", "lr": f"{learning_rate:.2e}"}
        if "nsp_loss" in summary:
            postfix["nsp"] = f"{summary['nsp_loss']:.3f}"
        postfix["seq/s"] = f"{summary['sequences_per_second']:.1f}"
        self.progress.set_postfix(postfix, refresh=False)
        self.window.reset()

    def _evaluate(self) -> None:
        """Run the evaluator on the main process (the others wait); it does not disturb training randomness."""
        if self.setup.evaluate is None or self.last_evaluated_step == self.position.global_step:
            return
        self.last_evaluated_step = self.position.global_step
        started = time.perf_counter()
        if self.context.is_main:
            model = self.setup.model
            rng_state = capture_rng_state()
            model.eval()
            try:
                results = self.setup.evaluate(model)
            finally:
                model.train()
                restore_rng_state(rng_state)
            step = self.position.global_step
            self.setup.metrics.append({"kind": "eval", "step": step, "epoch": self._epoch_progress(), **results})
            if self.setup.on_evaluated is not None:
                self.setup.on_evaluated(step, results)
            logger.info("evaluation at step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
        barrier(self.context)
        self.window.started += time.perf_counter() - started  # keep sequences/s about training only

    def _save(self) -> None:
        started = time.perf_counter()
        directory = self.setup.checkpoints.save(self.position)
        if self.setup.on_checkpoint is not None:  # timed with the save: not counted as training time
            self.setup.on_checkpoint(directory, self.position.global_step)
        self.last_saved_step = self.position.global_step
        self.window.started += time.perf_counter() - started
