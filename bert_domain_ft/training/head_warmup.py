"""Fresh pretraining heads are warmed up, not trusted: train only the new heads, with the encoder frozen, first.

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

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..masked_lm import encoder_inputs, masked_lm_head, masked_lm_losses, output_from_logits
from ..pretraining_model import (
    MLM_HEAD,
    NSP_HEAD,
    PretrainingOutput,
    gather_masked_hidden,
    head_parameters,
)
from .checkpoints import TrainingPosition, capture_rng_state, restore_rng_state
from .config import FinetuneConfig
from .data import plan_epoch
from .distributed import barrier, sum_across_processes
from .loop import LoopSettings, TrainingSetup, total_optimizer_steps
from .metrics import MetricsWindow
from .optimization import build_optimizer, parameter_groups

logger = logging.getLogger(__name__)

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
