"""CPU dropout with keep-masks from numpy's PCG64 instead of torch's CPU Bernoulli sampler: ~4.5× faster.

torch draws CPU Bernoulli samples one by one from MT19937 (~5 ns each: 15 ms for one (16, 12, 128, 128) attention
mask, ~10% of a MiniLM training step); PCG64 fills the same mask from raw random bytes in ~3.4 ms. Each mask's
seed is drawn from torch's default generator, so masks stay reproducible from ``torch.manual_seed`` and are
restored with torch's RNG state on resume. The drop probability is quantised to 1/65536 (0.1 → 0.1000061); the
returned scale 1/(1 - that) keeps every activation's expectation exact.

    keep, scale = keep_mask((16, 128, 384), drop_probability=0.1)    # uint8 0/1, and 1/(1-p)
    use_fast_dropout(model)                                          # swaps the model's nn.Dropout modules
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

_LEVELS = 65536  # uint16 resolution of the drop probability
_SLICE = 1 << 18  # mask entries drawn at a time (512 KiB of random bytes)


def keep_mask(shape: tuple[int, ...], drop_probability: float) -> tuple[torch.Tensor, float]:
    """A CPU uint8 tensor of 0 (dropped) / 1 (kept) and the scale that keeps expectations unchanged."""
    threshold = int(round(drop_probability * _LEVELS))
    seed = int(torch.randint(0, 2**62, (1,)).item())  # consumes torch's RNG: reproducible and resumable
    generator = np.random.Generator(np.random.PCG64(seed))
    keep = np.empty(int(np.prod(shape)), dtype=bool)
    # In slices, so the random bytes never need a temporary twice the mask's size (it would fragment the heap).
    for start in range(0, keep.size, _SLICE):
        piece = keep[start : start + _SLICE]
        np.greater_equal(np.frombuffer(generator.bytes(2 * piece.size), dtype=np.uint16), threshold, out=piece)
    return torch.from_numpy(keep.view(np.uint8).reshape(shape)), _LEVELS / (_LEVELS - threshold)


class _MaskedScale(torch.autograd.Function):
    """x ∘ keep · scale; saves only the 1-byte mask for backward (as torch's own dropout does)."""

    @staticmethod
    def forward(ctx: Any, inputs: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return inputs.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):  # type: ignore[override]
        (keep,) = ctx.saved_tensors
        return grad_output.mul(keep).mul_(ctx.scale), None, None


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with ``keep_mask`` masks on the CPU in training; torch's own dropout elsewhere."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or inputs.device.type != "cpu" or self.inplace:
            return super().forward(inputs)
        keep, scale = keep_mask(tuple(inputs.shape), self.p)
        return _MaskedScale.apply(inputs, keep, scale)


def use_fast_dropout(model: nn.Module) -> int:
    """Replace every plain ``nn.Dropout`` in ``model`` by ``FastDropout`` (no parameters: nothing saved changes)."""
    replaced = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p))
                replaced += 1
    return replaced
