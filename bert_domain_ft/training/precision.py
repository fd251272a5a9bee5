"""Mixed precision: ``torch.autocast`` contexts and the fp16 gradient scaler, from the --fp16/--bf16 flags.

fp16 needs a loss scaler (CUDA only): dynamic by default, static with ``--loss_scale S``. bf16 has fp32's range,
so it needs none, and runs on CUDA and on CPUs with bf16 units. Weights and optimizer state stay fp32.

    precision = setup_precision(torch.device("cpu"), fp16=False, bf16=True, loss_scale=0.0)
    with precision.autocast(): loss = objective(batch).loss
"""

from __future__ import annotations

import contextlib
import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from ..errors import UserError

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
