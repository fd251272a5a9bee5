"""Watching every optimizer step: a NaN/inf loss stops the run before it reaches the weights; fp16 overflow
skips are counted, logged, and stop the run only when they never end.

Without a gradient scaler (fp32, bf16) a non-finite loss or gradient norm means the next optimizer step would
write NaN into the weights (and every later checkpoint), so the run stops *before* that step with one line
naming the step and the last good checkpoint. With fp16 the scaler skips such a step by itself and lowers the
loss scale: that is routine at the start of a run, so it is counted (``skipped_steps`` in ``metrics.jsonl``)
and logged; only ``MAX_CONSECUTIVE_SKIPPED_STEPS`` skips in a row (the scale collapsing, or a static
``--loss_scale`` that always overflows) stop the run.

    health = StepHealth(precision, checkpoints)
    health.add_loss(output.loss)                                   # every micro-batch
    health.check_before_step(step, grad_norm); taken = precision.step(optimizer); health.after_step(step, taken)
"""

from __future__ import annotations

import logging

import torch

from ..errors import UserError
from .checkpoints import CheckpointManager
from .precision import Precision

logger = logging.getLogger(__name__)

# fp16 skips in a row before giving up: the dynamic scale has halved this many times (2^16 → 2^-9), far beyond
# the few skips with which a run normally finds its scale.
MAX_CONSECUTIVE_SKIPPED_STEPS = 25


class StepHealth:
    """Per-step loss/gradient checks and the fp16 skipped-step accounting of one training loop."""

    def __init__(self, precision: Precision, checkpoints: CheckpointManager):
        self.precision = precision
        self.checkpoints = checkpoints
        self.group_losses: list[torch.Tensor] = []  # scalar losses of this step's micro-batches (detached)
        self.skipped_in_window = 0  # since the last metrics record
        self.skipped_total = 0  # in this process's run (not carried over a resume)
        self.consecutive_skips = 0

    def add_loss(self, loss: torch.Tensor) -> None:
        self.group_losses.append(loss.detach())

    def check_before_step(self, step: int, grad_norm: torch.Tensor | None) -> None:
        """Raise ``UserError`` when optimizer step ``step`` (1-based) would write NaN/inf into the weights.

        With a scaler nothing is raised: the scaler skips such a step (``after_step`` counts it). One host sync
        per optimizer step otherwise (a handful of scalars).
        """
        losses, self.group_losses = self.group_losses, []
        if self.precision.scaler is not None or not losses:
            return
        loss = torch.stack([value.float() for value in losses]).sum()
        values = torch.stack([loss, grad_norm.float()]) if grad_norm is not None else loss.unsqueeze(0)
        if bool(torch.isfinite(values).all()):
            return
        if not bool(torch.isfinite(loss)):
            what = f"loss became {'NaN' if bool(torch.isnan(loss)) else 'infinite'}"
        else:
            what = "gradients became NaN or infinite (the loss was finite)"
        raise UserError(
            f"{what} at step {step}, so training stopped before that step changed the weights; "
            f"{self.checkpoints.last_good_checkpoint_note(resume_hint=False)}; {self._advice()}"
        )

    def after_step(self, step: int, taken: bool) -> None:
        """Count and log a step the fp16 scaler skipped; stop after too many in a row."""
        if taken:
            self.consecutive_skips = 0
            return
        self.skipped_in_window += 1
        self.skipped_total += 1
        self.consecutive_skips += 1
        logger.info(
            "step %d skipped: fp16 gradients overflowed, loss scale now %g (%d skipped so far)",
            step,
            self.precision.loss_scale,
            self.skipped_total,
        )
        if self.consecutive_skips >= MAX_CONSECUTIVE_SKIPPED_STEPS:
            raise UserError(
                f"fp16 gradients overflowed in {self.consecutive_skips} steps in a row (up to step {step}), so the "
                f"weights stopped changing; {self.checkpoints.last_good_checkpoint_note(resume_hint=False)}; "
                f"{self._advice()}"
            )

    def take_window_skips(self) -> int:
        """Skipped steps since the previous call (for the ``skipped_steps`` field of a metrics record)."""
        skipped, self.skipped_in_window = self.skipped_in_window, 0
        return skipped

    def _advice(self) -> str:
        if self.precision.scaler is not None:  # loss scaling: fp16
            return "try --bf16 instead of --fp16, a lower --learning_rate, or a smaller static --loss_scale"
        if self.precision.name == "bf16":
            return "try a lower --learning_rate or full fp32 (drop --bf16)"
        return "try a lower --learning_rate or a longer --warmup_proportion"
