"""Mixed precision from the --fp16/--bf16 flags, and the watch over every optimizer step of the main phase.

fp16 needs a loss scaler (CUDA only): dynamic by default, static with ``--loss_scale S``. bf16 has fp32's range,
so it needs none, and runs on CUDA and on CPUs with bf16 units. Weights and optimizer state stay fp32.

Without a gradient scaler (fp32, bf16) a non-finite loss or gradient norm means the next optimizer step would
write NaN into the weights (and every later checkpoint), so ``StepHealth`` stops the run *before* that step with
one line naming the step and the last good checkpoint. With fp16 the scaler skips such a step by itself and
lowers the loss scale: that is routine at the start of a run, so it is counted (``skipped_steps`` in
``metrics.jsonl``) and logged; only ``MAX_CONSECUTIVE_SKIPPED_STEPS`` skips in a row (the scale collapsing, or a
static ``--loss_scale`` that always overflows) stop the run.

    precision = setup_precision(torch.device("cpu"), fp16=False, bf16=True, loss_scale=0.0)
    with precision.autocast(): loss = objective(batch).loss
    health = StepHealth(precision, checkpoints)
    health.add_loss(loss)                                          # every micro-batch
    health.check_before_step(step, grad_norm); taken = precision.step(optimizer); health.after_step(step, taken)
"""

from __future__ import annotations

import contextlib
import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from bert_domain_ft.errors import UserError
from bert_domain_ft.training.checkpoints import CheckpointManager

logger = logging.getLogger(__name__)


@dataclass
class Precision:
    """How forward passes run and how losses and gradients are scaled."""

    device_type: str
    autocast_dtype: torch.dtype | None  # None: plain fp32
    scaler: torch.amp.GradScaler | None  # fp16 only
    static_scale: float | None = None  # fp16 with --loss_scale > 0

    @property
    def name(self) -> str:
        return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.autocast_dtype]

    def autocast(self) -> AbstractContextManager[object]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients back to their true size (before clipping)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Take the optimizer step; ``False`` when the fp16 scaler skipped it because the gradients overflowed."""
        if self.scaler is None:
            optimizer.step()
            return True
        scale_before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        # The dynamic update lowers the scale exactly when it found inf/NaN gradients (and skipped the step);
        # otherwise it keeps or grows it. This reads the skip without the scaler's private per-optimizer state.
        self.scaler.update()
        skipped = self.scaler.get_scale() < scale_before
        if self.static_scale is not None:  # a static scale is put back after every step
            self.scaler.update(self.static_scale)
        return not skipped

    @property
    def loss_scale(self) -> float:
        """The current fp16 loss scale (1.0 without a scaler)."""
        return float(self.scaler.get_scale()) if self.scaler is not None else 1.0


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.backends.mkldnn.is_available()


def check_precision_supported(device: torch.device, fp16: bool, bf16: bool) -> None:
    """Refuse --fp16/--bf16 on a device that cannot do it (called before any data or model is loaded)."""
    if fp16 and device.type != "cuda":
        raise UserError("--fp16 needs a CUDA GPU; on the CPU use --bf16 (or drop --fp16)")
    if bf16 and not fp16 and not bf16_supported(device):
        raise UserError(f"--bf16 is not supported on this {device.type} device; drop --bf16")


def setup_precision(device: torch.device, fp16: bool, bf16: bool, loss_scale: float) -> Precision:
    """The ``Precision`` for the flags, or a ``UserError`` when the device cannot do it."""
    check_precision_supported(device, fp16, bf16)
    if fp16:
        static = float(loss_scale) if loss_scale > 0 else None
        scaler = torch.amp.GradScaler("cuda", init_scale=static if static is not None else 2.0**16)
        return Precision("cuda", torch.float16, scaler, static)
    if bf16:
        return Precision(device.type, torch.bfloat16, None)
    return Precision(device.type, None, None)


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
