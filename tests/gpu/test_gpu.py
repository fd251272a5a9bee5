"""The training, evaluation and probe paths on a CUDA GPU (marker ``gpu``; skipped where no GPU is).

Run them with ``python -m pytest -m gpu tests/gpu`` (``make gpu-check`` does, with the GPU benchmarks).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_assets import small_probe_files
from training_helpers import make_pregenerated, quick_config, read_metrics

from bert_domain_ft.errors import UserError
from bert_domain_ft.evaluation.config import EvaluateConfig, ProbeConfig
from bert_domain_ft.evaluation.evaluate import evaluate_model
from bert_domain_ft.evaluation.probe import run_probe
from bert_domain_ft.model.optimization import build_optimizer, parameter_groups
from bert_domain_ft.model.pretraining import load_pretraining_model, pretraining_losses
from bert_domain_ft.training.precision import setup_precision
from bert_domain_ft.training.recipe import finetune

# cuBLAS reads this when it starts, before any test's first matrix product (the exact-resume test needs it; the
# CLI sets it itself with --deterministic, before its first product).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
CUDA = torch.device("cuda", 0)


@pytest.fixture(scope="module")
def data(tiny_corpus: Path, tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("gpu") / "data"
    return make_pregenerated(tiny_corpus, tiny_bert_dir, directory, epochs=1, holdout_fraction=0.1)


def gpu_config(data: Path, model: Path, output_dir: Path, **overrides):  # type: ignore[no-untyped-def]
    return quick_config(data, model, output_dir, **{"no_cuda": False, "train_batch_size": 16, **overrides})


def _one_step(model, batch, precision, optimizer) -> bool:  # type: ignore[no-untyped-def]
    with precision.autocast():
        loss = pretraining_losses(model, batch).loss
    precision.backward(loss)
    precision.unscale(optimizer)
    taken = precision.step(optimizer)
    optimizer.zero_grad(set_to_none=True)
    return taken


def test_fp16_scaler_skips_an_overflowing_step_and_the_next_one_trains(data: Path, tiny_bert_dir: Path) -> None:
    from bert_domain_ft.data.epoch_format import read_manifest
    from bert_domain_ft.data.loader import PregeneratedSource

    model = load_pretraining_model(str(tiny_bert_dir)).model.to(CUDA).train()
    optimizer = build_optimizer(parameter_groups(model, 1e-3, 0.01), 1e-3, 1e-8, CUDA)
    source = PregeneratedSource(data, read_manifest(data), training_epochs=1)
    batch = {name: tensor.to(CUDA) for name, tensor in source.open_epoch(0)(torch.arange(16).numpy()).items()}
    before = {name: value.clone() for name, value in model.state_dict().items()}

    overflowing = setup_precision(CUDA, fp16=True, bf16=False, loss_scale=2.0**60)  # fp16 gradients overflow
    assert _one_step(model, batch, overflowing, optimizer) is False
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())  # step skipped

    sound = setup_precision(CUDA, fp16=True, bf16=False, loss_scale=0.0)  # dynamic, from 2^16
    assert _one_step(model, batch, sound, optimizer) is True
    changed = [name for name, value in model.state_dict().items() if not torch.equal(before[name], value)]
    assert "bert.encoder.layer.0.attention.self.query.weight" in changed


def test_an_fp16_scale_that_always_overflows_stops_the_run_in_one_line(
    data: Path, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    config = gpu_config(data, tiny_bert_dir, tmp_path / "run", fp16=True, loss_scale=2.0**60, train_batch_size=4)
    with pytest.raises(UserError, match="overflowed in 25 steps in a row"):
        finetune(config)


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_finetune_on_the_gpu_logs_tokens_per_second_and_mfu(
    data: Path, tiny_bert_dir: Path, tmp_path: Path, precision: str
) -> None:
    flags = {"fp16": {"fp16": True}, "bf16": {"bf16": True}, "fp32": {}}[precision]
    output = tmp_path / precision
    finetune(gpu_config(data, tiny_bert_dir, output, max_steps=6, logging_steps=2, do_eval=True, **flags))
    records = [record for record in read_metrics(output) if record["kind"] == "train"]
    assert [record["step"] for record in records] == [2, 4, 6]
    for record in records:
        assert 0.0 < record["mlm_loss"] < 20.0
        assert record["tokens_per_second"] > 0 and 0.0 < record["mfu"] < 1.0
        if precision == "fp16":
            assert "skipped_steps" in record
    evaluations = [record for record in read_metrics(output) if record["kind"] == "eval"]
    assert len(evaluations) == 2 and all(0.0 < record["mlm_loss"] < 20.0 for record in evaluations)
    assert (output / "model.safetensors").is_file()


def test_exact_resume_on_the_gpu_with_deterministic_kernels(data: Path, tiny_bert_dir: Path, tmp_path: Path) -> None:
    settings = {"bf16": True, "deterministic": True, "max_steps": 8, "save_steps": 4, "train_batch_size": 8}
    finetune(gpu_config(data, tiny_bert_dir, tmp_path / "straight", **settings))
    finetune(gpu_config(data, tiny_bert_dir, tmp_path / "resumed", stop_after_steps=4, **settings))
    finetune(gpu_config(data, tiny_bert_dir, tmp_path / "resumed", resume=True, **settings))
    straight = load_file(str(tmp_path / "straight" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    different = [name for name in straight if not torch.equal(straight[name], resumed[name])]
    assert different == [], f"4 + 4 steps differ from 8 steps in {different[:3]}"


def test_ddp_over_nccl_under_torchrun(data: Path, tiny_bert_dir: Path, tmp_path: Path) -> None:
    processes = min(2, torch.cuda.device_count())
    output = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command += ["-m", "bert_domain_ft", "finetune", "--pregenerated_data", str(data), "--output_dir", str(output)]
    command += ["--bert_model", str(tiny_bert_dir), "--max_steps", "4", "--train_batch_size", "8", "--bf16"]
    command += ["--logging_steps", "2", "--no_progress"]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"process 0 of {processes} on cuda:0 (nccl)" in result.stderr
    assert [record["step"] for record in read_metrics(output) if record["kind"] == "train"] == [2, 4]
    assert (output / "model.safetensors").is_file()


def test_evaluation_on_the_gpu_agrees_with_the_cpu(data: Path, tiny_bert_dir: Path) -> None:
    results = {
        device: evaluate_model(
            EvaluateConfig(model=str(tiny_bert_dir), data=data, no_cuda=device == "cpu", show_progress=False)
        )
        for device in ("cpu", "cuda")
    }
    assert results["cuda"].num_masked_tokens == results["cpu"].num_masked_tokens > 0
    assert results["cuda"].mlm_loss == pytest.approx(results["cpu"].mlm_loss, rel=1e-2)


def test_the_probe_trains_its_classifiers_on_the_gpu(tiny_bert_dir: Path, tmp_path: Path) -> None:
    train, test = small_probe_files(tmp_path)
    torch.cuda.reset_peak_memory_stats()
    config = ProbeConfig(models=[str(tiny_bert_dir)], train=train, test=test, seeds=2, epochs=2,
                         show_progress=False, no_plot=True)  # fmt: skip
    (result,) = run_probe(config)
    assert torch.cuda.max_memory_allocated() > 0  # the classifiers lived on the GPU
    assert len(result.accuracies) == 2 and all(0.0 <= value <= 1.0 for value in result.accuracies)


def test_an_extended_vocabulary_warms_up_its_new_rows_alone_on_the_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gradient masks and the restore of old rows (``model.vocabulary.only_rows_change``) on CUDA tensors."""
    import vocabulary_assets

    model, data, rows = vocabulary_assets.write_extended(tmp_path, with_heads=True)
    captured = vocabulary_assets.capture_warmup(monkeypatch)
    finetune(gpu_config(data, model, tmp_path / "run", train_batch_size=8, max_steps=10, bf16=True))
    before, after = captured["before"], captured["after"]
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    embeddings = "bert.embeddings.word_embeddings.weight"
    assert embeddings in moved and moved <= {embeddings, "cls.predictions.bias", "cls.predictions.decoder.weight",
                                             "cls.predictions.decoder.bias"}  # fmt: skip
    differs = (before[embeddings] != after[embeddings]).any(dim=1).nonzero().flatten().tolist()
    assert differs == sorted(rows)
    assert (tmp_path / "run" / "model.safetensors").is_file()
