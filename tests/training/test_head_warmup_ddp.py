"""The head warm-up under DDP (two gloo processes): head gradients are averaged, so every rank ends identical."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import make_pregenerated, read_metrics, run_two_gloo_processes

WORKER = Path(__file__).with_name("head_warmup_ddp_worker.py")


@pytest.mark.slow
def test_two_processes_warm_the_same_heads_up_and_leave_the_encoder_alone(
    tmp_path: Path, tiny_corpus: Path, tiny_encoder_dir: Path
) -> None:
    data = make_pregenerated(tiny_corpus, tiny_encoder_dir, tmp_path / "data", epochs=1, max_seq_len=32)
    reports = tmp_path / "reports"
    reports.mkdir()
    run_two_gloo_processes(WORKER, data, tiny_encoder_dir, tmp_path / "out", reports)

    first, second = (load_file(str(reports / f"weights-rank{rank}.safetensors")) for rank in (0, 1))
    # Each rank warmed up on its own shard of the batches: identical heads mean the gradients were averaged.
    assert all(torch.equal(first[name], second[name]) for name in first)
    loaded = load_file(str(tiny_encoder_dir / "model.safetensors"))
    for name, tensor in loaded.items():
        key = name if name.startswith("bert.") else f"bert.{name}"
        if key in first and not key.startswith("bert.pooler."):
            assert torch.equal(first[key], tensor), key  # the encoder as loaded, bit for bit
    assert len([r for r in read_metrics(tmp_path / "out") if r["kind"] == "head_warmup"]) == 2  # rank 0 only
