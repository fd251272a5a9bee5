"""The training loop: phases of accumulated, clipped, scheduled optimizer steps, all run by the same step code.

The loop knows nothing about where batches come from (any ``EpochSource``) or how the main optimizer was built;
``recipe.finetune`` assembles those. A phase (``Phase``) is what trains and how: the loss module (DDP-wrapped
under several processes), the optimizer over its parameters, its learning-rate schedule. Two phases exist:

- the head warm-up: the head-only steps (``TrainingLoop.warm_up_heads``). A checkpoint without its masked-LM or
  NSP head (an encoder saved alone, a fine-tuned BERT) gets randomly initialised heads; training everything at once
  would send their random gradients into the encoder (ULMFiT's gradual unfreezing answers the same problem). So a
  fresh run first trains only ``head_parameters(model, fresh_heads)`` at ``--head_learning_rate`` (linear ramp
  over its first 10%, then constant), the encoder frozen and run under ``torch.no_grad()``: no activations kept,
  no backward through it, about half the cost of a full step. The head-only steps are part of the run's steps
  (``--max_steps``, or the epochs'), never added to them (``plan_head_warmup``; the recipe decides it with the
  main schedule, which spans the rest): they read the run's first micro-batches and the main phase reads on from
  there (``budget``). Their steps do not count in ``global_step`` (the main phase's); they are logged as ``"kind":
  "head_warmup"`` records (``"step": 0``, ``"warmup_step": k``) after a ``"kind": "head_warmup_eval"`` of the
  fresh heads. No checkpoint is written during them: a resumed run (from a checkpoint, taken after them) does not
  repeat them, one killed before its first checkpoint starts again. A checkpoint that has its heads skips them. The
  rows a ``vocab extend`` added (``TrainingSetup.fresh_rows``) are fresh too: they train in the same phase, alone
  of their matrices (``model.vocabulary.only_rows_change``), the encoder then run with gradients so they reach the
  input rows.
- the main phase (``TrainingLoop.run``): epochs of micro-batches from a ``TrainingPosition``, exactly resumable
  at any checkpoint; per optimizer step it may log (``metrics.jsonl`` + progress bar), evaluate, checkpoint
  and stop. Its learning-rate ramp (``--warmup_proportion``) is the schedule's, nothing to do with the head-only
  steps.

Before the first step one ``plan:`` line says the run's steps, how many are head-only and main, and when the
held-out set is evaluated; once the first main steps are timed a second one says how long the rest will take.
Log lines go through the progress bars' writer (``metrics.log_through_progress_bars``), never into a bar.

    loop = TrainingLoop(setup, LoopSettings(epochs=3, micro_batch_size=32))
    loop.log_plan()
    loop.warm_up_heads(TrainingPosition(), with_nsp=True)
    position = loop.run(TrainingPosition())
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from bert_domain_ft.data.loader import (
    Batch,
    BatchFetcher,
    BatchPrefetcher,
    EpochSource,
    micro_batches_per_epoch,
    optimizer_steps_per_epoch,
    plan_epoch,
    source_order,
)
from bert_domain_ft.model.optimization import ParameterAnchor, build_optimizer, parameter_groups
from bert_domain_ft.model.pretraining import (
    PretrainingOutput,
    head_parameters,
    masked_lm_head,
    pretraining_losses,
)
from bert_domain_ft.model.vocabulary import only_rows_change, partly_trained
from bert_domain_ft.training.budget import (
    NO_HEAD_WARMUP,
    HeadWarmupPlan,
    budget_words,
    describe_plan,
    evaluation_steps,
    head_only_batches,
    main_phase_start,
)
from bert_domain_ft.training.checkpoints import (
    CheckpointManager,
    TrainingPosition,
    capture_rng_state,
    restore_rng_state,
)
from bert_domain_ft.training.distributed import DistributedContext, barrier
from bert_domain_ft.training.metrics import MetricsLog, MetricsWindow, log_through_progress_bars
from bert_domain_ft.training.precision import Precision, StepHealth
from bert_domain_ft.training.throughput import StepTimer, Throughput

logger = logging.getLogger(__name__)

Evaluator = Callable[[nn.Module], dict[str, float]]


Settings = TypeVar("Settings")


def settings_from(kind: type[Settings], source: Any) -> Settings:
    """The dataclass ``kind`` filled from the same-named attributes of ``source`` (a ``FinetuneConfig``): each part
    of a run declares the values it uses, and none is copied by hand. Fields ``source`` lacks keep their defaults."""
    names = [field.name for field in dataclasses.fields(kind)]  # type: ignore[arg-type]
    return kind(**{name: getattr(source, name) for name in names if hasattr(source, name)})


@dataclass(frozen=True)
class LoopSettings:
    """How the loop iterates; all step counts are optimizer steps (0 turns the action off)."""

    epochs: int
    micro_batch_size: int  # sequences per forward pass in this process
    max_steps: int = 0  # exactly this many steps in all, head-only ones included, looping over the epochs (0: epochs)
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
    head_warmup_steps: int | None = None  # head-only steps of fresh heads (None: automatic, see plan_head_warmup)
    head_learning_rate: float = 3e-3  # the warm-up's peak learning rate
    learning_rate: float = 3e-5  # the main phase's peak rate: fresh vocabulary rows warm up at it (see _warmup_phase)
    weight_decay: float = 0.01  # of the warm-up's optimizer (the main one is built by the recipe)
    adam_epsilon: float = 1e-8


class PretrainingObjective(nn.Module):
    """``pretraining_losses`` as a module, so that DistributedDataParallel sees (and synchronises) the whole pass.

    DDP only averages gradients of computations that go through its own ``forward``. With ``frozen_encoder``
    (the head warm-up) the encoder runs without gradients and the heads train on the logits of the masked rows:
    the fused projection saves memory at the peak of a full backward pass, which such a step never reaches.
    """

    def __init__(self, model: nn.Module, with_nsp: bool = True, frozen_encoder: bool = False):
        super().__init__()
        self.model = model
        self.with_nsp = with_nsp
        self.frozen_encoder = frozen_encoder
        masked_lm_head(model)  # recognised (and checked) now, so a fallback notice comes before training

    def forward(self, batch: dict[str, torch.Tensor]) -> PretrainingOutput:
        frozen = self.frozen_encoder
        return pretraining_losses(self.model, batch, self.with_nsp, fused=not frozen, frozen_encoder=frozen)


def ddp_wrapped(module: nn.Module, context: DistributedContext) -> nn.Module:
    """``module`` DDP-wrapped when there are several processes (over the parameters that require gradients now)."""
    if not context.is_distributed:
        return module
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


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
    fresh_rows: tuple[int, ...] = ()  # vocabulary rows added by `vocab extend`: they warm up with the heads
    # The starting weights: pulled towards with settings.anchor_weight, their distance logged at logging steps.
    anchor: ParameterAnchor | None = None
    # Called on the main process after each evaluation with (global step, its metrics), e.g. to keep the best model.
    on_evaluated: Callable[[int, dict[str, float]], None] | None = None
    # Called on every process after each checkpoint with (its directory, global step), e.g. to probe it.
    on_checkpoint: Callable[[Path, int], None] | None = None
    throughput: Throughput | None = None  # the FLOP count and measured GPU peak behind the logged MFU
    # The head-only steps, decided with the main schedule (which spans the rest of the run's steps).
    head_warmup: HeadWarmupPlan = NO_HEAD_WARMUP


@dataclass
class Phase:
    """What one phase trains and how; the loop's step code runs every phase alike."""

    objective: nn.Module  # forward(batch) -> PretrainingOutput; DDP-wrapped under several processes
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    clipped: list[nn.Parameter]  # clipped together to settings.max_grad_norm
    window: MetricsWindow  # sums since the phase's last record
    health: StepHealth | None = None  # the NaN stop and the fp16 skipped-step accounting (main phase)
    anchor: ParameterAnchor | None = None  # pulled towards after each step taken
    grad_norm: torch.Tensor | None = None  # of the step just taken (None without clipping)
    learning_rate: float = 0.0  # of the step just taken (the scheduler has already moved on)


def total_optimizer_steps(source: EpochSource, settings: LoopSettings, world_size: int) -> int:
    """Optimizer steps of the whole run, head-only ones included (epochs may differ in size): ``max_steps`` when
    set."""
    if settings.max_steps:
        return settings.max_steps
    return sum(
        optimizer_steps_per_epoch(
            micro_batches_per_epoch(source.epoch_size(epoch), settings.micro_batch_size, world_size),
            settings.gradient_accumulation_steps,
        )
        for epoch in range(settings.epochs)
    )


def run_finished(position: TrainingPosition, epochs: int, main_steps: int) -> bool:
    """Every step done: ``main_steps`` main-phase steps when the run has a step budget (0: none), else the last
    step of the last of ``epochs``."""
    if main_steps:
        return position.global_step >= main_steps
    return position.epoch >= epochs


RAMP_FRACTION = 0.1  # share of the head-only steps over which their learning rate rises linearly; then constant


def warmup_learning_rate(step: int, steps: int, peak: float) -> float:
    """Learning rate of 0-based warm-up step ``step``: a linear ramp over ``RAMP_FRACTION`` of it, then ``peak``."""
    ramp = max(1, round(RAMP_FRACTION * steps))
    return peak * min(1.0, (step + 1) / ramp)


@contextmanager
def only_trainable(model: nn.Module, parameters: list[nn.Parameter]) -> Iterator[None]:
    """Freeze every parameter of ``model`` except ``parameters``; restore each flag afterwards."""
    keep = {id(parameter) for parameter in parameters}
    previous = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in keep)
    try:
        yield
    finally:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(previous[name])


class TrainingLoop:
    """Runs the phases of a run on a ``TrainingSetup``: the head warm-up, then the main epochs."""

    def __init__(self, setup: TrainingSetup, settings: LoopSettings):
        self.setup = setup
        self.settings = settings
        self.context = setup.context
        world_size = setup.context.world_size
        self.total_steps = total_optimizer_steps(setup.source, settings, world_size)  # head-only ones included
        self.main_steps = self.total_steps - setup.head_warmup.steps
        self.head_only_span = head_only_batches(setup.source, setup.head_warmup.steps, settings.micro_batch_size,
                                                settings.gradient_accumulation_steps, world_size)  # fmt: skip
        self.main_start = main_phase_start(self.head_only_span, setup.source, settings.micro_batch_size, world_size)
        self.timer = StepTimer()
        parameters = [p for group in setup.optimizer.param_groups for p in group["params"]]
        self.main = Phase(
            setup.objective, setup.optimizer, setup.scheduler, parameters,
            MetricsWindow(setup.context.device, setup.throughput),
            StepHealth(setup.precision, setup.checkpoints), setup.anchor,
        )  # fmt: skip
        self.position = TrainingPosition()
        self.last_saved_step = -1
        self.last_evaluated_step = -1
        self.progress: tqdm | None = None

    # ------------------------------------------------------------------------------------------ the step code

    def _train_steps(
        self, phase: Phase, plan: Sequence[np.ndarray], fetch: BatchFetcher, first: int = 0
    ) -> Iterator[int]:
        """Forward and backward each micro-batch of ``plan[first:]``, an optimizer step at the end of each
        accumulation group (the last group of a plan may be shorter); yields the micro-batches done after each step."""
        accumulation = self.settings.gradient_accumulation_steps
        with BatchPrefetcher(fetch, plan[first:], self.context.device, self.settings.prefetch_depth) as batches:
            waited = 0.0
            for index, batch in enumerate(batches, start=first):
                phase.window.data_wait_seconds += batches.wait_seconds - waited
                waited = batches.wait_seconds
                group_start = index - index % accumulation
                group_size = min(accumulation, len(plan) - group_start)
                last_of_group = index == group_start + group_size - 1
                self._forward_backward(phase, batch, group_size, synchronise=last_of_group)
                if last_of_group:
                    self._optimizer_step(phase)
                    yield index + 1

    def _forward_backward(self, phase: Phase, batch: Batch, group_size: int, synchronise: bool) -> None:
        objective = phase.objective
        # Gradients are all-reduced only on the last micro-batch of an accumulation group.
        no_sync = isinstance(objective, DistributedDataParallel) and not synchronise
        with objective.no_sync() if no_sync else contextlib.nullcontext():  # type: ignore[operator]
            with self.setup.precision.autocast():
                output = objective(batch)
            self.setup.precision.backward(output.loss / group_size)
        phase.window.add(output, batch["attention_mask"])
        if phase.health is not None:
            phase.health.add_loss(output.loss)

    def _optimizer_step(self, phase: Phase) -> None:
        precision, optimizer, health = self.setup.precision, phase.optimizer, phase.health
        precision.unscale(optimizer)
        if self.settings.max_grad_norm > 0:
            phase.grad_norm = torch.nn.utils.clip_grad_norm_(phase.clipped, self.settings.max_grad_norm)
        step = self.position.global_step + 1
        if health is not None:
            health.check_before_step(step, phase.grad_norm)
        taken = precision.step(optimizer)
        if taken and phase.anchor is not None:  # decoupled like weight decay: at this step's rate, skipped with it
            phase.anchor.pull(optimizer.param_groups, self.settings.anchor_weight)
        if health is not None:
            health.after_step(step, taken=taken)
        # The peak rate (with --layerwise_lr_decay the lower layers' groups run at a fraction of it).
        phase.learning_rate = max(float(group["lr"]) for group in optimizer.param_groups)
        phase.scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    def _run_evaluator(self) -> dict[str, float]:
        """The evaluator's metrics of the model (main process only); training randomness is left undisturbed."""
        model, evaluate = self.setup.model, self.setup.evaluate
        assert evaluate is not None
        rng_state = capture_rng_state()
        model.eval()
        try:
            return evaluate(model)
        finally:
            model.train()
            restore_rng_state(rng_state)

    # ------------------------------------------------------------------------------------- the head warm-up

    def log_plan(self) -> None:
        """The one ``plan:`` line (main process): the run's steps, head-only and main, and its evaluations."""
        if not self.context.is_main:
            return
        settings, head_only = self.settings, self.setup.head_warmup.steps
        evaluations = None if self.setup.evaluate is None else evaluation_steps(self.main_steps, settings.eval_steps)
        budget = budget_words(settings.max_steps, settings.epochs, head_only)
        line = describe_plan(self.total_steps, head_only, budget, evaluations,
                             estimate_follows=self.main_steps > self.timer.timed_steps + 1)  # fmt: skip
        logger.info("%s", line)

    def warm_up_heads(self, start: TrainingPosition, with_nsp: bool) -> HeadWarmupPlan:
        """The head-only steps a fresh run needs (see the module docstring), as the setup planned them; returns
        the plan (no steps when resuming)."""
        plan = self.setup.head_warmup
        if start.global_step > 0:
            if plan.steps:
                logger.info("resuming at step %d: no head-only steps (they ran before the first checkpoint)",
                            start.global_step)  # fmt: skip
            return HeadWarmupPlan(0, (), "resumed")
        if plan.steps == 0:
            logger.info("%s", plan.reason)
            return plan
        settings, rows = self.settings, len(self.setup.fresh_rows)
        fresh = [f"the fresh {head.upper()} head at lr {settings.head_learning_rate:g}" for head in plan.heads]
        fresh += [f"{rows} new vocabulary rows at lr {settings.learning_rate:g}"] if rows else []
        verb = "trains" if len(fresh) == 1 and not rows else "train"
        logger.info("%s: %s %s alone, the rest frozen", plan.reason, " and ".join(fresh), verb)
        if self.setup.evaluate is not None and self.context.is_main:
            results = self._run_evaluator()
            self.setup.metrics.append({"kind": "head_warmup_eval", "phase": "head_warmup", "step": 0, **results})
            logger.info("before the head-only steps: %s", ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
        barrier(self.context)
        self._run_head_warmup(plan, with_nsp)
        return plan

    def _warmup_phase(
        self, parameters: list[nn.Parameter], steps: int, with_nsp: bool, rows: list[nn.Parameter]
    ) -> Phase:
        """The heads' own optimizer and ramp-then-constant schedule; built while only they require gradients,
        so a DDP wrapper synchronises exactly them. Fresh vocabulary rows (in ``rows``) start from their pieces'
        mean, not at random: they train at the main phase's rate (at the heads' 3e-3, MiniLM's moved by 77% of
        their norm in 50 steps), and the encoder runs with gradients so that they learn as inputs too."""
        settings, model = self.settings, self.setup.model
        chosen, slow = {id(parameter) for parameter in parameters}, {id(parameter) for parameter in rows}
        only = {name for name, parameter in model.named_parameters() if id(parameter) in chosen}
        slow_names = {name for name, parameter in model.named_parameters() if id(parameter) in slow}
        rate, ratio = settings.head_learning_rate, settings.learning_rate / settings.head_learning_rate
        groups = parameter_groups(
            model, rate, settings.weight_decay, lambda name: ratio if name in slow_names else 1.0, only
        )
        optimizer = build_optimizer(groups, rate, settings.adam_epsilon, self.context.device)
        # LambdaLR scales the peak rate of the groups: the rate of step k is warmup_learning_rate(k, steps, rate).
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_learning_rate(step, steps, 1.0))
        objective = ddp_wrapped(PretrainingObjective(model, with_nsp, frozen_encoder=not rows), self.context)
        return Phase(objective, optimizer, scheduler, parameters, MetricsWindow(self.context.device))

    def _run_head_warmup(self, plan: HeadWarmupPlan, with_nsp: bool) -> None:
        """Train the heads for ``plan.steps`` optimizer steps on the run's first micro-batches (``head_only_span``,
        in the main phase's order); every other parameter ends bit-identical."""
        settings, model = self.settings, self.setup.model
        started = time.perf_counter()
        heads, rows = head_parameters(model, plan.heads), self.setup.fresh_rows
        partly = partly_trained(model, heads) if rows else []  # matrices of which only the new rows train
        parameters = heads + partly
        show = settings.show_progress and self.context.is_main
        model.train()
        bar = tqdm(total=plan.steps, desc="head-only steps", unit="step", dynamic_ncols=True, disable=not show)
        with only_trainable(model, parameters), bar, log_through_progress_bars(tqdm):
            phase = self._warmup_phase(parameters, plan.steps, with_nsp, partly)
            with only_rows_change(partly, rows, phase.optimizer) if rows else contextlib.nullcontext():
                for step in self._head_only_steps(phase):
                    bar.update(1)
                    if step % settings.logging_steps == 0 or step == plan.steps:
                        self._report_warmup(phase, step, plan.steps, bar)
            logger.info("head-only steps done: %d steps in %.0f s", plan.steps, time.perf_counter() - started)

    def _head_only_steps(self, phase: Phase) -> Iterator[int]:
        """The optimizer steps over the micro-batches of ``head_only_span``, epoch by epoch; yields their count."""
        step = 0
        for epoch, micro_batches in self.head_only_span:
            plan = self._epoch_plan(epoch)[:micro_batches]
            for _ in self._train_steps(phase, plan, self.setup.source.open_epoch(epoch)):
                step += 1
                yield step

    def _epoch_plan(self, epoch: int) -> list[np.ndarray]:
        """This process's micro-batches of training epoch ``epoch``, in the source's order if it has one."""
        settings, context, source = self.settings, self.context, self.setup.source
        order = source_order(source, epoch)  # None: the usual shuffle of (seed, epoch)
        return plan_epoch(source.epoch_size(epoch), settings.micro_batch_size, settings.seed, epoch, context.rank,
                          context.world_size, order)  # fmt: skip

    def _report_warmup(self, phase: Phase, step: int, steps: int, bar: tqdm) -> None:
        summary = phase.window.summary(self.context)  # a collective call: every process gets here
        # "step" is the main schedule's (0: before it), so resuming, which drops records after its step, keeps these.
        record = {"kind": "head_warmup", "phase": "head_warmup", "step": 0, "warmup_step": step}
        record.update({"warmup_steps": steps, "lr": phase.learning_rate, **summary})
        self.setup.metrics.append(record)
        bar.set_postfix({"mlm": f"{summary['mlm_loss']:.3f}", "lr": f"{phase.learning_rate:.2e}"}, refresh=False)
        phase.window.reset()

    # --------------------------------------------------------------------------------------- the main phase

    def run(self, start: TrainingPosition) -> TrainingPosition:
        """Train from ``start`` to the end (or to ``stop_after_steps``); returns the final position. A fresh run's
        main phase starts after the micro-batches its head-only steps read (``main_start``)."""
        start = self.main_start if start.global_step == 0 else start
        self.position = start
        self.last_saved_step = start.global_step if start.global_step > 0 else -1
        if self.settings.stop_after_steps and start.global_step >= self.settings.stop_after_steps:
            logger.info("already at step %d, --stop_after_steps %d: nothing to do", start.global_step,
                        self.settings.stop_after_steps)  # fmt: skip
            return start
        self.main.window.reset()  # throughput counts this phase only
        self.timer = StepTimer(first_step=start.global_step)
        self.progress = tqdm(
            total=self.main_steps,
            initial=start.global_step,
            desc="finetune",
            unit="step",
            dynamic_ncols=True,
            disable=not (self.settings.show_progress and self.context.is_main),
        )
        self.setup.model.train()
        with log_through_progress_bars(tqdm):
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

    def finished(self, position: TrainingPosition) -> bool:
        """Whether ``position`` is the end of the run (the last main step done)."""
        return run_finished(position, self.settings.epochs, self.main_steps if self.settings.max_steps else 0)

    def _finished(self) -> bool:
        return self.finished(self.position)

    def _run_epoch(self, epoch: int, first_batch: int) -> bool:
        """Train epoch ``epoch`` from micro-batch ``first_batch``; ``True`` when asked to stop early."""
        settings, source = self.settings, self.setup.source
        plan = self._epoch_plan(epoch)
        of_epochs = "" if settings.max_steps else f"/{settings.epochs}"
        self.progress.set_description(f"epoch {epoch + 1}{of_epochs}")
        with contextlib.closing(self._train_steps(self.main, plan, source.open_epoch(epoch), first_batch)) as steps:
            for done in steps:
                self.position = TrainingPosition(self.position.global_step + 1, epoch, done)
                if self._after_step(epoch_finished=done == len(plan)):
                    return True
        self.position = TrainingPosition(self.position.global_step, epoch + 1, 0)
        if self.last_saved_step != self.position.global_step:
            self._save()
        return False

    def _after_step(self, epoch_finished: bool) -> bool:
        """Log, evaluate, checkpoint as scheduled; ``True`` when the run should stop here."""
        settings, step = self.settings, self.position.global_step
        self.progress.update(1)
        asked_to_stop = bool(settings.stop_after_steps) and step >= settings.stop_after_steps
        at_max_steps = bool(settings.max_steps) and step >= self.main_steps  # the end, possibly mid-epoch
        stop = asked_to_stop or at_max_steps
        if step % settings.logging_steps == 0 or step == self.main_steps or stop:
            self._report()
        self._log_time_estimate(step)
        if settings.eval_steps and step % settings.eval_steps == 0 and not at_max_steps:  # the end evaluates
            self._evaluate()
        # The end-of-epoch checkpoint follows right away, so a scheduled save there would be written twice.
        if (settings.save_steps and step % settings.save_steps == 0 and not epoch_finished) or stop:
            self._save()
        if asked_to_stop and not at_max_steps:
            logger.info("stopping after step %d as asked (--stop_after_steps); continue with --resume", step)
        return stop

    def _log_time_estimate(self, step: int) -> None:
        """Once the first main steps are timed: how long the rest of the run takes at their speed (one line)."""
        seconds_per_step = self.timer.seconds_per_step(step)
        if seconds_per_step is None or not self.context.is_main:
            return
        evaluations = 0
        if self.setup.evaluate is not None:
            evaluations = sum(
                1 for later in evaluation_steps(self.main_steps, self.settings.eval_steps) if later > step
            )
        logger.info("%s", self.timer.describe_rest(self.main_steps - step, seconds_per_step, evaluations))

    def _epoch_progress(self) -> float:
        epoch = self.position.epoch if self.settings.max_steps else min(self.position.epoch, self.settings.epochs - 1)
        size = self.setup.source.epoch_size(epoch)
        batches = micro_batches_per_epoch(size, self.settings.micro_batch_size, self.context.world_size)
        return round(self.position.epoch + self.position.batch_in_epoch / max(batches, 1), 4)

    def _report(self) -> None:
        window, health = self.main.window, self.main.health
        summary = window.summary(self.context)  # a collective call: every process gets here
        learning_rate = self.main.learning_rate
        record = {"kind": "train", "step": self.position.global_step, "epoch": self._epoch_progress()}
        record.update({"lr": learning_rate, **summary})
        if self.main.grad_norm is not None:
            record["grad_norm"] = float(self.main.grad_norm)
        if self.setup.precision.scaler is not None and health is not None:  # fp16: skips since the last record
            record["skipped_steps"] = health.take_window_skips()
        if self.setup.anchor is not None and self.context.is_main:  # one pass over the weights: logging steps only
            record.update(self.setup.anchor.distance(self.settings.anchor_weight))
        self.setup.metrics.append(record)
        postfix = {"mlm": f"{summary['mlm_loss']:.3f}", "lr": f"{learning_rate:.2e}"}
        if "nsp_loss" in summary:
            postfix["nsp"] = f"{summary['nsp_loss']:.3f}"
        postfix["seq/s"] = f"{summary['sequences_per_second']:.1f}"
        if "mfu" in summary:  # on a GPU: real tokens per second and model FLOPs utilisation
            postfix["tok/s"] = f"{summary['tokens_per_second']:,.0f}"
            postfix["MFU"] = f"{summary['mfu']:.1%}"
        self.progress.set_postfix(postfix, refresh=False)
        window.reset()

    def _evaluate(self) -> None:
        """Run the evaluator on the main process (the others wait); it does not disturb training randomness."""
        if self.setup.evaluate is None or self.last_evaluated_step == self.position.global_step:
            return
        self.last_evaluated_step = step = self.position.global_step
        started = time.perf_counter()
        if self.context.is_main:
            results = self._run_evaluator()
            self.setup.metrics.append({"kind": "eval", "step": step, "epoch": self._epoch_progress(), **results})
            self.timer.evaluation_seconds = time.perf_counter() - started
            if self.setup.on_evaluated is not None:
                self.setup.on_evaluated(step, results)
            logger.info("evaluation at step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
        barrier(self.context)
        self._pause(time.perf_counter() - started)  # keep sequences/s and the time estimate about training only

    def _save(self) -> None:
        started = time.perf_counter()
        directory = self.setup.checkpoints.save(self.position)
        if self.setup.on_checkpoint is not None:  # timed with the save: not counted as training time
            self.setup.on_checkpoint(directory, self.position.global_step)
        self.last_saved_step = self.position.global_step
        self._pause(time.perf_counter() - started)

    def _pause(self, seconds: float) -> None:
        """Leave ``seconds`` (an evaluation, a checkpoint) out of the training speed and of the time estimate."""
        self.main.window.started += seconds
        self.timer.paused_seconds += seconds
