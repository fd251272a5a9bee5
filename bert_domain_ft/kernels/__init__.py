"""The fast paths of a training step: CPU kernels of our own, and the settings of the step on a CUDA GPU.

On a GPU (``gpu``: ``use_gpu_kernels``) PyTorch's fused kernels do the work; TF32, the deterministic mode and the
compiled encoder are set there. On the CPU our own kernels compute the same functions and gradients as
transformers' own, with less memory and time. The CPU modules, in the order a training step meets them:

- attention: memory-light self-attention (a 1-byte dropout mask kept, the softmax recomputed in backward) and
  dropout masks drawn from numpy's PCG64 (~4.5× faster than torch's CPU sampler); ``stock_attention`` puts the
  model's own attention back while it is saved.
- feed_forward: BERT's feed-forward block keeping less for backward (the pre-activation recomputed in float32,
  the activation recomputed in bf16).
- this package: ``use_cpu_kernels``, the one entry point that plugs all of them into a model, and glibc's malloc
  settings for training (``keep_freed_memory``, undone by ``release_free_memory``).

Why the malloc settings: by default glibc hands every allocation above a moving threshold (at most 32 MiB) to its
own ``mmap`` and trims the top of the heap whenever more than twice that threshold is free there. A training step
frees most of what it allocated (activations, gradients, temporaries) and allocates it again in the next step,
so the memory went back to the kernel and came back every step: page faults on hundreds of MB a step, seen in a
profile as ``fill_``/``gelu_backward`` running 5× slower than on warm memory. With the threshold fixed at 64 MiB
and trimming only above 1 GiB free, the step reuses warm memory: a MiniLM step (batch 16 × 128) ran 11% faster in
fp32 and 18% faster in bf16, for a resident peak within ~1% of glibc's defaults (the peak is the step's working
set either way). Only on Linux with glibc; elsewhere (macOS, Windows, musl) both functions do nothing.

    use_cpu_kernels(model, bf16=False)      # after loading the model onto the CPU, before the first step
    use_gpu_kernels(model, compiled=False, tf32=True, deterministic=False)   # or after moving it to a GPU
    release_free_memory()                   # after the last step
"""

from __future__ import annotations

import ctypes
import logging
import sys
from functools import cache

from torch import nn

from bert_domain_ft.kernels.attention import enable_light_attention, use_fast_dropout
from bert_domain_ft.kernels.feed_forward import use_recomputed_activation, use_recomputed_feed_forward
from bert_domain_ft.kernels.gpu import use_gpu_kernels

__all__ = ["keep_freed_memory", "release_free_memory", "use_cpu_kernels", "use_gpu_kernels"]

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 << 20  # larger blocks (a big model's embedding matrix, say) still get their own mmap
TRIM_THRESHOLD_BYTES = 1 << 30


@cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl's mallopt ignores these settings)
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Keep the memory a training step frees for the next step (see the module docs); ``True`` when applied."""
    libc = _glibc()
    if libc is None:
        return False
    applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    if applied:
        logger.debug("glibc malloc: mmap threshold %d MiB, trim threshold %d MiB",
                     MMAP_THRESHOLD_BYTES >> 20, TRIM_THRESHOLD_BYTES >> 20)  # fmt: skip
    return applied


def release_free_memory() -> None:
    """Return the heap's free pages to the operating system (after training, before saving or evaluating)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def use_cpu_kernels(model: nn.Module, bf16: bool, tune_allocator: bool = True) -> bool:
    """Train ``model`` with the CPU kernels: memory-light attention, fast dropout masks and, for the feed-forward
    blocks, the recomputed pre-activation in float32 (less memory) or the recomputed activation in bf16 (where the
    pre-activation is half the size and the extra matmul costs relatively more); and, with ``tune_allocator``, keep
    the memory a step frees for the next one (process-wide). Nothing changes for a model that is not on the CPU
    (``False``)."""
    parameter = next(model.parameters(), None)
    if parameter is None or parameter.device.type != "cpu":
        return False
    # The light attention plugs into transformers' attention interface, which not every model type uses.
    supported = getattr(model, "_supports_attention_backend", False)
    if not supported or not enable_light_attention(model):
        logger.info("this transformers version cannot plug in the memory-light attention; using its own")
    use_fast_dropout(model)
    (use_recomputed_activation if bf16 else use_recomputed_feed_forward)(model)
    if tune_allocator:
        keep_freed_memory()
    return True
