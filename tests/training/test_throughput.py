"""The FLOP count behind MFU, and the throughput figures of the metrics window (tokens/s, padding share)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from training_helpers import make_pregenerated, quick_config, read_metrics

from bert_domain_ft.model.pretraining import PretrainingOutput, load_pretraining_model
from bert_domain_ft.training.distributed import DistributedContext
from bert_domain_ft.training.metrics import MetricsWindow
from bert_domain_ft.training.recipe import finetune
from bert_domain_ft.training.throughput import FlopCounter, Throughput, matmul_peak_flops


def test_flop_counter_counts_the_encoder_matrices_and_the_head_by_hand(tiny_bert_dir: Path) -> None:
    model = load_pretraining_model(str(tiny_bert_dir)).model
    config = model.config
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    counter = FlopCounter.of(model)
    # q, k, v and the attention output (4 · h²), the feed-forward in and out (2 · h · inner); no pooler.
    assert counter.linear_parameters == layers * (4 * hidden * hidden + 2 * hidden * inner)
    assert counter.head_parameters == config.vocab_size * hidden + hidden * hidden
    assert (counter.layers, counter.hidden_size) == (layers, hidden)
    forward = 2 * counter.linear_parameters * 100 + 4 * layers * hidden * 5000 + 2 * counter.head_parameters * 15
    assert counter.step_flops(tokens=100, squared_lengths=5000, masked_tokens=15) == 3 * forward


def test_mfu_is_model_flops_per_second_over_the_peak() -> None:
    counter = FlopCounter(linear_parameters=1000, layers=2, hidden_size=8, head_parameters=50)
    flops = counter.step_flops(tokens=10, squared_lengths=40, masked_tokens=2)
    assert Throughput(counter, peak_flops=1e6).mfu(10, 40, 2, seconds=0.5) == pytest.approx(flops / 0.5 / 1e6)
    assert Throughput(counter, peak_flops=None).mfu(10, 40, 2, seconds=0.5) is None


def test_no_peak_and_no_mfu_on_the_cpu() -> None:
    assert matmul_peak_flops(torch.device("cpu")) is None


def _output(masked: int) -> PretrainingOutput:
    loss = torch.tensor(2.0 * masked)
    return PretrainingOutput.masked_lm_only(loss / masked, loss, torch.tensor(1), masked, torch.device("cpu"))


def test_the_window_counts_real_tokens_padding_and_mfu() -> None:
    counter = FlopCounter(linear_parameters=1000, layers=2, hidden_size=8, head_parameters=50)
    window = MetricsWindow(torch.device("cpu"), Throughput(counter, peak_flops=1e9))
    lengths = torch.tensor([8, 5, 3])
    mask = (torch.arange(8)[None, :] < lengths[:, None]).long()  # 16 real tokens of 24 positions
    window.add(_output(4), mask)
    window.add(_output(2), mask[:1])  # a second micro-batch: one full row
    context = DistributedContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    summary = window.summary(context)
    elapsed_bound = 24 / summary["tokens_per_second"]  # tokens / (tokens/s): the window's elapsed time
    assert summary["padding_share"] == pytest.approx(1 - 24 / 32)
    squares = float((lengths**2).sum()) + 64
    expected = counter.step_flops(24, squares, 6) / elapsed_bound / 1e9
    assert summary["mfu"] == pytest.approx(expected, rel=1e-6)
    assert summary["sequences_per_second"] == pytest.approx(4 / elapsed_bound, rel=1e-6)


def test_training_records_carry_tokens_per_second_but_no_mfu_on_the_cpu(
    tiny_corpus: Path, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    data = make_pregenerated(tiny_corpus, tiny_bert_dir, tmp_path / "data", epochs=1)
    finetune(quick_config(data, tiny_bert_dir, tmp_path / "run", max_steps=2, logging_steps=1, do_eval=False))
    records = [record for record in read_metrics(tmp_path / "run") if record["kind"] == "train"]
    assert len(records) == 2
    for record in records:
        assert record["tokens_per_second"] > 0 and 0.0 <= record["padding_share"] < 1.0
        assert "mfu" not in record
