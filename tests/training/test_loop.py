"""The loop driven directly: any per-epoch source of batches (variable length, with or without NSP labels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from training_helpers import read_metrics

from bert_domain_ft.data.loader import DatasetSource
from bert_domain_ft.model.optimization import build_optimizer, build_scheduler, parameter_groups
from bert_domain_ft.model.pretraining import IGNORE_INDEX, load_pretraining_model
from bert_domain_ft.training.checkpoints import CheckpointManager, TrainingPosition, checkpoint_directories
from bert_domain_ft.training.distributed import DistributedContext
from bert_domain_ft.training.loop import (
    LoopSettings,
    PretrainingObjective,
    TrainingLoop,
    TrainingSetup,
    total_optimizer_steps,
)
from bert_domain_ft.training.metrics import MetricsLog
from bert_domain_ft.training.precision import setup_precision

CPU = DistributedContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def make_instances(epoch: int, count: int = 37) -> list[dict[str, list[int]]]:
    """Sentences of 6..40 tokens (different per epoch), two masked tokens each: like on-the-fly pairs."""
    rng = np.random.default_rng([5, epoch])
    instances = []
    for _ in range(count):
        length = int(rng.integers(6, 41))
        tokens = [2, *rng.integers(20, 100, length - 2).tolist(), 3]
        positions = sorted(rng.choice(np.arange(1, length - 1), 2, replace=False).tolist())
        labels = [tokens[p] for p in positions]
        for p in positions:
            tokens[p] = 4  # [MASK]
        instances.append({"tokens": tokens, "positions": positions, "labels": labels})
    return instances


def collate(instances: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Pads to the longest instance of the batch; no next_sentence_label (an MLM-only objective)."""
    width = max(len(instance["tokens"]) for instance in instances)
    input_ids = torch.zeros(len(instances), width, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, instance in enumerate(instances):
        input_ids[row, : len(instance["tokens"])] = torch.tensor(instance["tokens"])
        attention_mask[row, : len(instance["tokens"])] = 1
    positions = torch.tensor([instance["positions"] for instance in instances])
    labels = torch.tensor([instance["labels"] for instance in instances])
    labels[0, 1] = IGNORE_INDEX  # a row with fewer real masked tokens than slots
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros_like(input_ids),
        "masked_lm_positions": positions,
        "masked_lm_labels": labels,
    }


def build_setup(model_dir: Path, output_dir: Path, source: DatasetSource, settings: LoopSettings) -> TrainingSetup:
    output_dir.mkdir(parents=True, exist_ok=True)
    loaded = load_pretraining_model(str(model_dir))
    model = loaded.model
    optimizer = build_optimizer(parameter_groups(model, 1e-4, 0.01), 1e-4, 1e-8, CPU.device)
    total = total_optimizer_steps(source, settings, CPU.world_size)
    scheduler = build_scheduler(optimizer, total, warmup_steps=1)
    precision = setup_precision(CPU.device, fp16=False, bf16=False, loss_scale=0)
    checkpoints = CheckpointManager(
        output_dir, CPU, model, optimizer, scheduler, precision.scaler, {"total_steps": total}
    )
    return TrainingSetup(
        objective=PretrainingObjective(model, with_nsp=False),
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        precision=precision,
        context=CPU,
        source=source,
        checkpoints=checkpoints,
        metrics=MetricsLog(output_dir / "metrics.jsonl"),
        fresh_heads=loaded.fresh_heads,
    )


def test_any_epoch_source_of_variable_length_batches_trains(tmp_path: Path, tiny_bert_dir: Path) -> None:
    source = DatasetSource(make_instances, collate)
    settings = LoopSettings(
        epochs=2, micro_batch_size=8, gradient_accumulation_steps=2, logging_steps=1, show_progress=False
    )
    setup = build_setup(tiny_bert_dir, tmp_path, source, settings)
    before = setup.model.bert.encoder.layer[0].output.dense.weight.detach().clone()
    position = TrainingLoop(setup, settings).run(TrainingPosition())
    # 37 instances → 5 micro-batches → 3 optimizer steps per epoch (the last one accumulates a single micro-batch).
    assert position == TrainingPosition(global_step=6, epoch=2, batch_in_epoch=0)
    records = read_metrics(tmp_path)
    assert [record["step"] for record in records] == [1, 2, 3, 4, 5, 6]
    assert all("nsp_loss" not in record and record["mlm_loss"] > 0 for record in records)
    assert [step for step, _ in checkpoint_directories(tmp_path)] == [3, 6]  # end of each epoch
    assert not torch.equal(before, setup.model.bert.encoder.layer[0].output.dense.weight)
