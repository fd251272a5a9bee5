"""Memory-light self-attention and fast dropout masks for training on the CPU.

The stock attention with dropout (torch's SDPA falls back to its math kernel when dropout is on) saves three
(B, heads, L, L) float tensors per layer for backward: softmax output, dropout noise and dropped probabilities,
~36 MB per layer at B=16, L=128, 12 heads. ``_LightAttention`` saves only q, k, v, its output and a 1-byte
keep-mask (1/4 of one such tensor) and recomputes scores and softmax from q and k in backward: the same function
and gradients, ~200 MB less activation memory for a 6-layer MiniLM at batch 16 × 128, and a slightly faster step.
It works on a few sequences at a time (``chunk_slices``), so that none of its temporaries outgrows a hidden-state
tensor and the heap stays compact. It is plugged in through transformers' attention registry, and only for
training: ``stock_attention`` puts the model's own implementation back while it is saved, so a saved config
never names it.

Its keep-masks, and those of every ``nn.Dropout`` (``FastDropout``), come from numpy's PCG64 instead of torch's
CPU Bernoulli sampler, which draws samples one by one from MT19937 (~5 ns each: 15 ms for one (16, 12, 128, 128)
mask, ~10% of a MiniLM step); PCG64 fills the same mask from raw random bytes in ~3.4 ms. Each mask's seed is
drawn from torch's default generator, so masks stay reproducible from ``torch.manual_seed`` and are restored with
torch's RNG state on resume. The drop probability is quantised to 1/65536 (0.1 → 0.1000061); the scale
1/(1 - that) keeps every activation's expectation exact.

    enable_light_attention(model); use_fast_dropout(model)     # or kernels.use_cpu_kernels(model, bf16)
    with stock_attention(model): model.save_pretrained(directory)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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


IMPLEMENTATION = "bert_domain_ft_light"
_ORIGINAL = "_bert_domain_ft_original_attention"


def _probabilities(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax attention probabilities (B, h, Lq, Lk) of pre-scaled queries; ``mask``: bool (True = attend) or
    additive."""
    scores = torch.matmul(query, key.transpose(-1, -2))
    if mask is not None:
        if mask.dtype == torch.bool:
            scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)
        else:
            scores.add_(mask.to(scores.dtype))
    return torch.softmax(scores, dim=-1)


# Sequences per chunk: a chunk's (c, h, Lq, Lk) float32 scores hold at most this many bytes.
CHUNK_BYTES = 4 << 20  # 4 MiB; one (16 × 128) × 384 float32 hidden-state tensor is 3 MiB


def chunk_slices(count: int, bytes_per_item: int) -> list[slice]:
    """Consecutive slices of ``range(count)`` holding at most ``CHUNK_BYTES`` each (at least one item).

    Why the attention runs a few sequences at a time: glibc reuses a freed heap block only for a request that
    fits in it. A MiniLM step at batch 16 × 128 saves dozens of 3 MiB activations; whole-batch (B, h, L, L)
    score and probability temporaries (12 MiB, several per layer) left holes that the next requests did not
    line up with, and the heap grew ~300 MB past the live data. In chunks of at most 4 MiB the same fp32 step
    peaks at 1.16 GB instead of 1.27 GB resident, at the same speed (the matmuls stay batched over (c, h)).
    """
    size = max(1, CHUNK_BYTES // max(bytes_per_item, 1))
    return [slice(start, start + size) for start in range(0, count, size)]


def _mask_rows(mask: torch.Tensor | None, rows: slice) -> torch.Tensor | None:
    """The mask of the chunk ``rows`` (a mask broadcast over the batch is shared by every chunk)."""
    return mask if mask is None or mask.shape[0] == 1 else mask[rows]


class _LightAttention(torch.autograd.Function):
    """softmax(q kᵀ · scaling + mask) with inverted dropout, times v; a few sequences at a time (``chunk_slices``).

    All arithmetic is float32 whatever the input dtype: under bf16 autocast, casting the (B, h, L, L) tensors
    back and forth costs more on a CPU than the small float32 matmuls over (B, h, L, d) inputs. Every constant
    factor (score scaling, dropout scale) is applied to (B, h, L, d) tensors, L/d times smaller than the scores,
    and the softmax backward's row sums come from the output (Σ_j dP∘P = Σ_d dO∘O, as in FlashAttention).
    The output is returned in the (B, L, h, d) layout the caller needs: the output projection then saves the
    very tensor saved here, not a second copy of it (one hidden-state tensor less per layer).
    The keep-mask comes from ``dropout.keep_mask`` (4.5× faster than torch's CPU Bernoulli sampler).
    """

    @staticmethod
    def forward(ctx: Any, query, key, value, mask, dropout_p: float, scaling: float):  # type: ignore[override]
        batch, heads, query_length, head_size = query.shape
        key_length = key.shape[2]
        keep, scale = None, 1.0
        if dropout_p > 0.0:
            # uint8, not bool: multiplying float by uint8 takes torch's fast path, by bool a converting copy.
            keep, scale = keep_mask((batch, heads, query_length, key_length), dropout_p)
        output = torch.empty((batch, query_length, heads, head_size), dtype=torch.float32, device=query.device)
        with torch.autocast(device_type=query.device.type, enabled=False):
            chunks = chunk_slices(batch, heads * query_length * key_length * 4)
            for rows in chunks:
                probabilities = _probabilities(query[rows].float() * scaling, key[rows].float(), _mask_rows(mask, rows))
                if keep is not None:
                    probabilities.mul_(keep[rows])
                output[rows] = torch.matmul(probabilities, value[rows].float()).transpose(1, 2)
            if keep is not None:
                output.mul_(scale)
        ctx.save_for_backward(query, key, value, mask, keep, output)
        ctx.scale, ctx.scaling, ctx.chunks = scale, scaling, chunks
        return output.to(query.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):  # type: ignore[override]
        query, key, value, mask, keep, output = ctx.saved_tensors
        grad_query, grad_key, grad_value = (
            torch.empty(tensor.shape, dtype=torch.float32, device=tensor.device) for tensor in (query, key, value)
        )
        factor = ctx.scaling * ctx.scale
        with torch.autocast(device_type=query.device.type, enabled=False):
            for rows in ctx.chunks:
                q, k, v = query[rows].float(), key[rows].float(), value[rows].float()
                grad_rows = grad_output[rows].float()
                grad = grad_rows.transpose(1, 2).contiguous()  # (c, h, L, d), used twice
                probabilities = _probabilities(q * ctx.scaling, k, _mask_rows(mask, rows))
                # Gradient of the dropped probabilities without the dropout scale, which goes on the small results.
                grad_scores = torch.matmul(grad, v.transpose(-1, -2))
                if keep is not None:
                    grad_scores.mul_(keep[rows])
                row_sums = (grad_rows * output[rows]).sum(dim=-1, keepdim=True).transpose(1, 2).div_(ctx.scale)
                grad_scores.sub_(row_sums).mul_(probabilities)  # softmax backward: P ∘ (dP - Σ dP∘P)
                if keep is not None:
                    probabilities.mul_(keep[rows])
                grad_value[rows] = torch.matmul(probabilities.transpose(-1, -2), grad).mul_(ctx.scale)
                grad_query[rows] = torch.matmul(grad_scores, k).mul_(factor)
                grad_key[rows] = torch.matmul(grad_scores.transpose(-1, -2), q).mul_(factor)
        return grad_query.to(query.dtype), grad_key.to(key.dtype), grad_value.to(value.dtype), None, None, None


def light_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention-interface entry: (B, h, L, d) inputs → (B, L, h, d) output, no weights."""
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    return _LightAttention.apply(query, key, value, attention_mask, float(dropout), float(scaling)), None


def _register() -> bool:
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    except ImportError:  # transformers too old for pluggable attention: keep the stock one
        return False
    AttentionInterface.register(IMPLEMENTATION, light_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)  # bool masks, None when nothing is padded
    return True


def enable_light_attention(model: nn.Module) -> bool:
    """Switch ``model`` (a BERT on the CPU) to the memory-light attention; ``False`` where it does not apply.

    Only on the CPU: on CUDA torch's fused SDPA kernels already train with dropout without storing the
    probabilities. Also ``False`` when this transformers version has no pluggable attention.
    """
    config = getattr(model, "config", None)
    parameter = next(model.parameters(), None)
    if config is None or parameter is None or parameter.device.type != "cpu" or not _register():
        return False
    setattr(model, _ORIGINAL, config._attn_implementation)
    config._attn_implementation = IMPLEMENTATION
    return True


@contextmanager
def stock_attention(model: nn.Module) -> Iterator[None]:
    """Within the block the model uses the attention it was loaded with (e.g. while it is saved)."""
    original = getattr(model, _ORIGINAL, None)
    if original is None:
        yield
        return
    model.config._attn_implementation = original
    try:
        yield
    finally:
        model.config._attn_implementation = IMPLEMENTATION
