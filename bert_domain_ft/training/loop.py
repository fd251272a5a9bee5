"""The training loop: epochs of micro-batches → accumulated, clipped, scheduled optimizer steps.

It knows nothing about where batches come from (any ``EpochSource``), which loss is trained (any module whose
``forward(batch)`` returns a ``PretrainingOutput``), or how the optimizer was built; ``finetune`` assembles those.
Per optimizer step it may log (``metrics.jsonl`` + progress bar), evaluate, checkpoint and stop.

    position = TrainingLoop(setup, LoopSettings(epochs=3, micro_batch_size=32)).run(TrainingPosition())

Fresh pretraining heads are warmed up, not trusted: train only the new heads, with the encoder frozen, first.

A checkpoint without its masked-LM or NSP head (sentence-transformers models, fine-tuned BERTs) gets randomly
initialised heads. Training everything at once sends the random head's gradients into the encoder and can leave
it worse for downstream tasks than before adaptation (ULMFiT's gradual unfreezing answers the same problem). So
before the usual schedule, only ``head_parameters(model, fresh_heads)`` train for a few hundred steps at
``--head_learning_rate``. The encoder runs under ``torch.no_grad()``: no activations kept, no backward pass
through it: a warm-up step costs about half a full one (MiniLM-L6, batch 32 × 128, bf16, one CPU thread: 1.5 s
against 2.9 s; the rest is the vocabulary projection). A checkpoint that has its heads skips the phase.

Warm-up steps are not counted in the run's ``global_step`` (the main schedule, checkpoints, --eval_steps and
--stop_after_steps are unchanged); they are logged to ``metrics.jsonl`` as ``"kind": "head_warmup"`` records
(``"step": 0``, ``"warmup_step": k``), after a ``"kind": "head_warmup_eval"`` of the fresh heads. No
checkpoint is written during the phase: a run killed in it starts over, a run resumed from a checkpoint (taken
after the phase) does not repeat it.

    plan = plan_head_warmup(requested=None, fresh_heads=("mlm", "nsp"), with_nsp=True, main_steps=600)
    HeadWarmup(setup, settings, plan, learning_rate=3e-3, weight_decay=0.01).run()
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from bert_domain_ft.data.loader import (
    Batch,
    BatchPrefetcher,
    EpochSource,
    micro_batches_per_epoch,
    optimizer_steps_per_epoch,
    plan_epoch,
    source_order,
)
from bert_domain_ft.model.losses import encoder_inputs, masked_lm_head, masked_lm_losses, output_from_logits
from bert_domain_ft.model.optimization import ParameterAnchor, build_optimizer, parameter_groups
from bert_domain_ft.model.pretraining import (
    MLM_HEAD,
    NSP_HEAD,
    PretrainingOutput,
    gather_masked_hidden,
    head_parameters,
)
from bert_domain_ft.training.checkpoints import (
    CheckpointManager,
    TrainingPosition,
    capture_rng_state,
    restore_rng_state,
)
from bert_domain_ft.training.config import FinetuneConfig
from bert_domain_ft.training.distributed import DistributedContext, barrier, sum_across_processes
from bert_domain_ft.training.metrics import MetricsLog, MetricsWindow
from bert_domain_ft.training.precision import Precision, StepHealth

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


# Automatic length: this share of the main run's optimizer steps, at least AUTO_MIN_STEPS, at most AUTO_MAX_STEPS.
# A warm-up step costs about half a full one (forward only through the encoder), so 20% adds ~10% to a run.
# Measured on MiniLM-L6 with the demo corpus (cached encoder features, lr 3e-3): a fresh MLM head's held-out loss
# goes 10.8 → 6.7 in 26 steps, 6.5 in 60, 6.3 in 160: most of the way in the first few dozen steps.
AUTO_FRACTION = 0.2
AUTO_MIN_STEPS = 50
AUTO_MAX_STEPS = 1000
RAMP_FRACTION = 0.1  # share of the warm-up over which its learning rate rises linearly; then constant


@dataclass(frozen=True)
class HeadWarmupPlan:
    """How many warm-up steps, for which heads, and why (the one log line)."""

    steps: int
    heads: tuple[str, ...]
    reason: str


def auto_warmup_steps(main_steps: int) -> int:
    """``AUTO_FRACTION`` of ``main_steps``, clamped to [``AUTO_MIN_STEPS``, ``AUTO_MAX_STEPS``]."""
    return min(max(round(AUTO_FRACTION * main_steps), AUTO_MIN_STEPS), AUTO_MAX_STEPS)


def plan_head_warmup(
    requested: int | None, fresh_heads: tuple[str, ...], with_nsp: bool, main_steps: int
) -> HeadWarmupPlan:
    """The warm-up for ``--head_warmup_steps requested`` (None: automatic) given the heads the checkpoint lacked.

    The NSP head is left out when the data has no NSP labels (it is frozen and unused then).
    """
    heads = tuple(head for head in fresh_heads if head == MLM_HEAD or (head == NSP_HEAD and with_nsp))
    names = " and ".join(head.upper() for head in heads)
    if not heads:
        return HeadWarmupPlan(0, (), "no head warm-up: no pretraining head starts fresh on a trained encoder")
    if requested == 0:
        return HeadWarmupPlan(0, heads, f"no head warm-up (--head_warmup_steps 0): the fresh {names} train at once")
    if requested is not None:
        return HeadWarmupPlan(requested, heads, f"head warm-up: {requested} steps (--head_warmup_steps)")
    steps = auto_warmup_steps(main_steps)
    why = f"{AUTO_FRACTION:.0%} of the {main_steps} main steps, at least {AUTO_MIN_STEPS} and at most {AUTO_MAX_STEPS}"
    return HeadWarmupPlan(steps, heads, f"head warm-up: {steps} steps (automatic: {why})")


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


class HeadWarmupObjective(nn.Module):
    """Pretraining losses with the encoder run under ``torch.no_grad()``: gradients reach the heads only.

    The pooler (part of the NSP head) runs with gradients on the encoder's last hidden states.
    """

    def __init__(self, model: nn.Module, with_nsp: bool):
        super().__init__()
        self.model = model
        self.with_nsp = with_nsp

    def forward(self, batch: dict[str, torch.Tensor]) -> PretrainingOutput:
        if not hasattr(self.model, "bert"):  # RoBERTa, DistilBERT…: a masked-LM head only
            return masked_lm_with_frozen_encoder(self.model, batch)
        bert = self.model.bert
        with torch.no_grad():  # the pooler's output computed here is discarded: it is recomputed with gradients
            sequence_output = bert(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"],
            )[0]
        hidden, labels = gather_masked_hidden(sequence_output, batch["masked_lm_positions"], batch["masked_lm_labels"])
        output = PretrainingOutput.from_mlm_logits(self.model.cls.predictions(hidden), labels)
        if self.with_nsp and "next_sentence_label" in batch and bert.pooler is not None:
            logits = self.model.cls.seq_relationship(bert.pooler(sequence_output)).float()
            nsp_labels = batch["next_sentence_label"]
            output.nsp_loss = nn.functional.cross_entropy(logits, nsp_labels)
            output.nsp_correct = (logits.argmax(dim=-1) == nsp_labels).sum()
            output.nsp_count = torch.tensor(nsp_labels.numel(), device=nsp_labels.device)
        return output


def masked_lm_with_frozen_encoder(model: nn.Module, batch: dict[str, torch.Tensor]) -> PretrainingOutput:
    """Masked-LM losses of any masked-LM model with its encoder under ``torch.no_grad()``."""
    head = masked_lm_head(model)
    if head is None:  # an unknown head: the full pass (the frozen encoder gets no update either way, only slower)
        return masked_lm_losses(model, batch)
    with torch.no_grad():
        sequence_output = head.encoder(**encoder_inputs(head.encoder, batch))[0]
    hidden, labels = gather_masked_hidden(sequence_output, batch["masked_lm_positions"], batch["masked_lm_labels"])
    return output_from_logits(head.logits(hidden), labels)


def warmup_learning_rate(step: int, steps: int, peak: float) -> float:
    """Learning rate of 0-based warm-up step ``step``: a linear ramp over ``RAMP_FRACTION`` of it, then ``peak``."""
    ramp = max(1, round(RAMP_FRACTION * steps))
    return peak * min(1.0, (step + 1) / ramp)


class HeadWarmup:
    """Runs the warm-up phase of ``plan`` on the pieces of a ``TrainingSetup`` (same data, precision, metrics)."""

    def __init__(
        self,
        setup: TrainingSetup,
        settings: LoopSettings,
        plan: HeadWarmupPlan,
        learning_rate: float,
        weight_decay: float,
        adam_epsilon: float = 1e-8,
    ):
        self.setup = setup
        self.settings = settings
        self.plan = plan
        self.learning_rate = learning_rate
        self.parameters = head_parameters(setup.model, plan.heads)
        names = {id(parameter) for parameter in self.parameters}
        only = {name for name, parameter in setup.model.named_parameters() if id(parameter) in names}
        groups = parameter_groups(setup.model, learning_rate, weight_decay, only=only)
        self.optimizer = build_optimizer(groups, learning_rate, adam_epsilon, setup.context.device)
        with_nsp = getattr(_unwrap(setup.objective), "with_nsp", True)
        self.objective = HeadWarmupObjective(setup.model, with_nsp=with_nsp)

    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """Micro-batches of training epoch 0 in its own order (cycled when the warm-up is longer than an epoch)."""
        source, settings, context = self.setup.source, self.settings, self.setup.context
        fetch = source.open_epoch(0)
        while True:
            plan = plan_epoch(
                source.epoch_size(0), settings.micro_batch_size, settings.seed, 0, context.rank, context.world_size
            )
            for rows in plan:
                yield {name: tensor.to(context.device) for name, tensor in fetch(rows).items()}

    def _average_gradients(self) -> None:
        """Average the head gradients over processes (the heads are tiny: one all-reduce each is cheap)."""
        context = self.setup.context
        if not context.is_distributed:
            return
        for parameter in self.parameters:
            if parameter.grad is not None:
                total = sum_across_processes(context, parameter.grad.detach().double().flatten())
                parameter.grad.copy_((total / context.world_size).view_as(parameter.grad).to(parameter.grad.device))

    def _step(self, batches: Iterator[dict[str, torch.Tensor]], window: MetricsWindow) -> None:
        precision, accumulation = self.setup.precision, self.settings.gradient_accumulation_steps
        for _ in range(accumulation):
            batch = next(batches)
            with precision.autocast():
                output = self.objective(batch)
            precision.backward(output.loss / accumulation)
            window.add(output, sequences=int(batch["input_ids"].shape[0]))
        self._average_gradients()
        precision.unscale(self.optimizer)
        if self.settings.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.settings.max_grad_norm)
        precision.step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)

    def _report(self, step: int, learning_rate: float, window: MetricsWindow, progress: tqdm) -> None:
        summary = window.summary(self.setup.context)
        # "step" is the main schedule's (0: before it), so resuming, which drops records after its step, keeps these.
        record = {"kind": "head_warmup", "phase": "head_warmup", "step": 0, "warmup_step": step}
        record.update({"warmup_steps": self.plan.steps, "lr": learning_rate, **summary})
        self.setup.metrics.append(record)
        progress.set_postfix({"mlm": f"{summary['mlm_loss']:.3f}", "lr": f"{learning_rate:.2e}"}, refresh=False)
        window.reset()

    def run(self) -> None:
        """Train the heads for ``plan.steps`` optimizer steps; every other parameter ends bit-identical."""
        setup, steps = self.setup, self.plan.steps
        model = setup.model
        window = MetricsWindow(setup.context.device)
        started = time.perf_counter()
        show = self.settings.show_progress and setup.context.is_main
        batches = self._batches()
        model.train()
        with only_trainable(model, self.parameters), tqdm(total=steps, desc="head warm-up", disable=not show) as bar:
            for step in range(steps):
                learning_rate = warmup_learning_rate(step, steps, self.learning_rate)
                for group in self.optimizer.param_groups:
                    group["lr"] = learning_rate
                self._step(batches, window)
                bar.update(1)
                if (step + 1) % self.settings.logging_steps == 0 or step + 1 == steps:
                    self._report(step + 1, learning_rate, window, bar)
        logger.info("head warm-up done: %d steps in %.0f s", steps, time.perf_counter() - started)


def _unwrap(objective: nn.Module) -> nn.Module:
    return getattr(objective, "module", objective)  # a DistributedDataParallel wrapper keeps it in .module


def _evaluate_fresh_heads(setup: TrainingSetup) -> None:
    """The held-out metrics with the heads as loaded (random), logged as ``"kind": "head_warmup_eval"``."""
    if setup.evaluate is not None and setup.context.is_main:
        rng_state = capture_rng_state()  # evaluation must not shift the training's random streams
        setup.model.eval()
        try:
            results = setup.evaluate(setup.model)
        finally:
            setup.model.train()
            restore_rng_state(rng_state)
        setup.metrics.append({"kind": "head_warmup_eval", "phase": "head_warmup", "step": 0, **results})
        logger.info("before the head warm-up: %s", ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
    barrier(setup.context)


def warm_up_fresh_heads(
    setup: TrainingSetup, settings: LoopSettings, config: FinetuneConfig, with_nsp: bool, start: TrainingPosition
) -> HeadWarmupPlan:
    """Run the head warm-up a fresh run needs (see the module docstring); returns what was planned."""
    if start.global_step > 0:
        logger.info("resuming at step %d: no head warm-up (it ran before the first checkpoint)", start.global_step)
        return HeadWarmupPlan(0, (), "resumed")
    main_steps = total_optimizer_steps(setup.source, settings, setup.context.world_size)
    plan = plan_head_warmup(config.head_warmup_steps, setup.fresh_heads, with_nsp, main_steps)
    if plan.steps == 0:
        logger.info("%s", plan.reason)
        return plan
    heads = " and ".join(head.upper() for head in plan.heads)
    rate = config.head_learning_rate
    logger.info("%s: the fresh %s head(s) train alone at lr %g, encoder frozen", plan.reason, heads, rate)
    _evaluate_fresh_heads(setup)
    HeadWarmup(setup, settings, plan, config.head_learning_rate, config.weight_decay, config.adam_epsilon).run()
    return plan
