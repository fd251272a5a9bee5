"""How fast training runs: the model FLOPs of a step, the GPU's measured matrix-unit peak, and MFU; the seconds per
step behind the plan's time estimate (``StepTimer``).

Model FLOPs are the arithmetic the *model* needs, whatever an implementation spends on top (padding, logits at
unmasked positions, recomputation); one definition serves ``metrics.jsonl`` and ``benchmarks/gpu_step.py``:

    forward = 2 · P_linear · T  +  4 · layers · hidden · Σ_rows len²  +  2 · P_head · M
    step    = 3 · forward                        (backward costs twice the forward)

- ``P_linear``: weights of every ``nn.Linear`` of the encoder but its pooler (BERT-base: 12 layers × 12 · 768²,
  85 M); each real token passes through them once (a multiply and an add per weight).
- ``4 · layers · hidden · len²`` per row: the attention scores (Q·Kᵀ) and their weighted sum (·V) of a row of
  ``len`` real tokens.
- ``P_head``: the masked-LM head's transform and vocabulary projection (768² + 768 · 30522 for BERT-base), needed
  only at the ``M`` masked tokens the loss reads. NSP's pooler and classifier (one token per row) are left out.
- ``T``: real (non-padding) tokens. Padding is not model work, so a padded batch has a lower MFU.

MFU = model FLOPs per second ÷ the GPU's bf16 dense matrix-product peak, measured once per process on an
8192³ product (``matmul_peak_flops``), not read off a datasheet: the figure is what this card does today.

    counter = FlopCounter.of(model)
    flops = counter.step_flops(tokens=T, squared_lengths=S, masked_tokens=M)
    mfu = flops / seconds / matmul_peak_flops(torch.device("cuda"))
    timer = StepTimer(first_step=0)  # then timer.seconds_per_step(step) after every step
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

from bert_domain_ft.model.pretraining import masked_lm_head

logger = logging.getLogger(__name__)

PEAK_MATRIX_SIZE = 8192  # a product this large runs at the matrix units' rate on current GPUs
PEAK_REPEATS = 10


@dataclass(frozen=True)
class FlopCounter:
    """The sizes the FLOP count of a training step needs (see the module docs)."""

    linear_parameters: int  # encoder nn.Linear weights, pooler excluded
    layers: int
    hidden_size: int
    head_parameters: int  # masked-LM transform + vocabulary projection weights

    @classmethod
    def of(cls, model: nn.Module) -> FlopCounter:
        """Count ``model``'s sizes (any masked-LM model; its head as ``pretraining.masked_lm_head`` sees it)."""
        encoder = getattr(model, "base_model", model)
        linear = sum(
            module.weight.numel()
            for name, module in encoder.named_modules()
            if isinstance(module, nn.Linear) and "pooler" not in name.split(".")
        )
        config = model.config
        hidden = int(config.hidden_size)
        head = masked_lm_head(model)
        head_parameters = 0
        if head is not None:
            head_parameters = head.weight.numel() + hidden * int(head.weight.shape[1])
        return cls(linear, int(config.num_hidden_layers), hidden, head_parameters)

    def step_flops(self, tokens: float, squared_lengths: float, masked_tokens: float) -> float:
        """Model FLOPs of forward + backward over ``tokens`` real tokens in rows whose squared real lengths sum to
        ``squared_lengths``, with ``masked_tokens`` predicted."""
        forward = 2.0 * self.linear_parameters * tokens
        forward += 4.0 * self.layers * self.hidden_size * squared_lengths
        forward += 2.0 * self.head_parameters * masked_tokens
        return 3.0 * forward


def _time_products(device: torch.device, size: int) -> float:
    generator = torch.Generator(device=device).manual_seed(0)
    left = torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=generator)  # never zeros: they
    right = torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=generator)  # run faster
    out = torch.empty(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):  # warm-up: cuBLAS handle, kernel choice, clocks
        torch.matmul(left, right, out=out)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(PEAK_REPEATS):
        torch.matmul(left, right, out=out)
    end.record()
    end.synchronize()
    seconds = start.elapsed_time(end) / 1000.0 / PEAK_REPEATS
    return 2.0 * size**3 / seconds


@cache
def _measured_peak(device_index: int) -> float:
    device = torch.device("cuda", device_index)
    size = PEAK_MATRIX_SIZE
    while True:
        try:
            return _time_products(device, size)
        except torch.OutOfMemoryError:  # a small or busy card: a smaller product still shows its rate
            if size <= 1024:
                raise
            size //= 2
        finally:
            torch.cuda.empty_cache()


def matmul_peak_flops(device: torch.device) -> float | None:
    """The bf16 dense matrix-product rate of ``device`` in FLOP/s, measured once per process (~0.1 s on a
    datacenter GPU); None on a device without bf16 matrix units worth measuring (CPU, pre-Ampere GPUs)."""
    if device.type != "cuda" or not torch.cuda.is_bf16_supported():
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    peak = _measured_peak(index)
    logger.info("%s: bf16 matrix products measured at %.0f TFLOP/s (the MFU denominator)",
                torch.cuda.get_device_name(index), peak / 1e12)  # fmt: skip
    return peak


@dataclass(frozen=True)
class Throughput:
    """What the metrics need to turn a window's token counts into MFU: the model's FLOP counter and the peak."""

    counter: FlopCounter
    peak_flops: float | None  # None: no MFU (tokens/s only)

    @classmethod
    def for_training(cls, model: nn.Module, device: torch.device) -> Throughput:
        return cls(FlopCounter.of(model), matmul_peak_flops(device))

    def mfu(self, tokens: float, squared_lengths: float, masked_tokens: float, seconds: float) -> float | None:
        """Model FLOPs utilisation of a window, or None without a measured peak."""
        if self.peak_flops is None or seconds <= 0:
            return None
        return self.counter.step_flops(tokens, squared_lengths, masked_tokens) / seconds / self.peak_flops


PLAN_TIMED_STEPS = 5  # main steps timed for the estimate, after the first (which pays one-time costs)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


@dataclass
class StepTimer:
    """The main phase's seconds per step, for the plan's time estimate: ``timed_steps`` steps after the first one
    timed, the evaluations and checkpoints among them left out (``paused_seconds``)."""

    first_step: int = 0  # the global step the main phase starts from
    timed_steps: int = PLAN_TIMED_STEPS
    started: float | None = None
    paused_seconds: float = 0.0
    evaluation_seconds: float | None = None  # of the latest evaluation

    def seconds_per_step(self, step: int) -> float | None:
        """Call after each main step; the measured seconds per step right after the last timed one, else None."""
        if step == self.first_step + 1:
            self.started, self.paused_seconds = time.perf_counter(), 0.0
        elif self.started is not None and step == self.first_step + 1 + self.timed_steps:
            return (time.perf_counter() - self.started - self.paused_seconds) / self.timed_steps
        return None

    def describe_rest(self, steps_left: int, seconds_per_step: float, evaluations_left: int) -> str:
        """The plan's update line: the time ``steps_left`` steps and ``evaluations_left`` evaluations take."""
        evaluation = self.evaluation_seconds or 0.0
        total = steps_left * seconds_per_step + evaluations_left * evaluation
        evaluations = f"; {evaluations_left} more evaluations of {_duration(evaluation)}" if evaluations_left else ""
        return (f"plan update: about {_duration(total)} to go at the measured speed ({seconds_per_step:.2f} s per step "
                f"over {self.timed_steps} steps{evaluations})")  # fmt: skip
