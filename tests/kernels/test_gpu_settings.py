"""The GPU step's settings: nothing changes off CUDA; --deterministic switches the attention to plain products."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from bert_domain_ft.kernels.gpu import make_deterministic, use_gpu_kernels
from bert_domain_ft.model.pretraining import load_pretraining_model


def test_nothing_changes_for_a_model_on_the_cpu(tiny_bert_dir: Path) -> None:
    model = load_pretraining_model(str(tiny_bert_dir)).model
    precision, attention = torch.get_float32_matmul_precision(), model.config._attn_implementation
    assert use_gpu_kernels(model, compiled=True, tf32=False, deterministic=True) is False
    assert torch.get_float32_matmul_precision() == precision
    assert model.config._attn_implementation == attention
    assert not torch.are_deterministic_algorithms_enabled()


def test_deterministic_mode_uses_plain_attention_and_deterministic_kernels(
    tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    model = load_pretraining_model(str(tiny_bert_dir)).model
    assert model.config._attn_implementation != "eager"  # transformers' default: SDPA
    try:
        make_deterministic(model)
        assert model.config._attn_implementation == "eager"
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        batch = {"input_ids": torch.arange(5, 15)[None, :], "attention_mask": torch.ones(1, 10, dtype=torch.long)}
        model.eval()
        with torch.no_grad():  # the eager attention computes the same function
            eager = model(**batch).prediction_logits
            model.set_attn_implementation("sdpa")
            fused = model(**batch).prediction_logits
        torch.testing.assert_close(eager, fused, rtol=1e-4, atol=1e-4)
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
