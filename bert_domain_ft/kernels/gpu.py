"""The training step on a CUDA GPU: TensorFloat-32, the deterministic mode, and the compiled encoder.

What runs fast on a GPU needs no kernels of ours: transformers' attention interface already calls PyTorch's
``scaled_dot_product_attention`` (FlashAttention when no row is padded, the memory-efficient kernel with a mask),
AdamW is fused (``model.optimization``), and the masked-LM loss reads only the masked positions
(``model.pretraining``). This module sets what is left:

- TF32: float32 matrix products on the tensor cores (``torch.set_float32_matmul_precision("high")``), for runs
  without mixed precision; ``--no_tf32`` keeps strict float32.
- ``--deterministic``: bit-identical runs (and exact resumes) on the GPU: cuBLAS with a fixed workspace, PyTorch's
  deterministic algorithms (a warning names any operation that has none), and the attention as plain matrix
  products (transformers' "eager" implementation), since the fused kernels' backward pass adds in a varying order.
- ``--compile``: the encoder compiled by ``torch.compile`` (element-wise work fused into few kernels), in place
  (``nn.Module.compile``), so its state dict, checkpoints and saved model are unchanged.

    use_gpu_kernels(model, compiled=False, tf32=True, deterministic=False)   # after model.to("cuda")
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from bert_domain_ft.model.pretraining import masked_lm_head

logger = logging.getLogger(__name__)

CUBLAS_DETERMINISTIC_WORKSPACE = ":4096:8"  # cuBLAS's documented setting for reproducible results


def set_float32_matmul(tf32: bool) -> None:
    """float32 matrix products on TF32 tensor cores (``tf32``) or in strict float32."""
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


def make_deterministic(model: nn.Module) -> None:
    """Deterministic kernels process-wide and the attention as plain matrix products in ``model``.

    The cuBLAS setting is read when cuBLAS starts: call this before the first matrix product on the GPU (the
    stages do, right after moving the model there)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", "eager") == "eager":
        return
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    else:  # older transformers: the attention functions read the config at every call
        config._attn_implementation = "eager"
    logger.info("--deterministic: attention as plain matrix products (its fused kernels add in a varying order)")


def compile_encoder(model: nn.Module) -> None:
    """Compile ``model``'s encoder in place (the heads and the loss stay eager: their shapes change per batch)."""
    masked_lm_head(model)  # recognised (one short forward pass) on the eager model, not compiled for that shape
    encoder = getattr(model, "base_model", model)
    encoder.compile()
    logger.info("--compile: the encoder is compiled at its first steps (and again for evaluation); later steps "
                "run the fused kernels")  # fmt: skip


def use_gpu_kernels(model: nn.Module, compiled: bool, tf32: bool, deterministic: bool) -> bool:
    """Apply the GPU settings to ``model`` (already on its GPU); nothing happens off CUDA (``False``)."""
    parameter = next(model.parameters(), None)
    if parameter is None or parameter.device.type != "cuda":
        return False
    set_float32_matmul(tf32)
    if deterministic:
        make_deterministic(model)
    if compiled:
        compile_encoder(model)
    return True
