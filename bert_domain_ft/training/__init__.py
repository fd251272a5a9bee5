"""The training stages: continue a model's pretraining (``finetune`` on pregenerated epochs, ``simple`` on pairs
made on the fly) and save the adapted model.

Modules, in pipeline order:

- config: ``FinetuneConfig`` and ``SimpleConfig``, the stages' settings (importing it does not import torch).
- distributed: torchrun launch, process group and device, one writer per output directory.
- setup: data, model, optimizer and evaluation of a run, built and checked against each other.
- precision: autocast, the fp16 gradient scaler, the NaN/overflow watch over every step.
- checkpoints: exactly resumable checkpoints, checked for damage before they are loaded.
- trackers: TensorBoard, W&B and MLflow (``--report_to``), fed every ``metrics.jsonl`` record.
- metrics: the running sums of a logging window and the ``metrics.jsonl`` log.
- budget: how a run's steps divide into head-only and main steps, and the plan line that says so.
- loop: ``TrainingLoop``, the head-only and main phases run by one step code.
- selection: ``--save_best`` and the downstream probe of checkpoints.
- recipe: ``finetune``, the stage's outline, and the training half ``train_and_save``.
- simple: ``simple_finetune``, the one-command stage on a corpus.

    from bert_domain_ft.training import FinetuneConfig, finetune
    finetune(FinetuneConfig(pregenerated_data=Path("epochs"), output_dir=Path("out"), bert_model="bert-base-uncased"))
"""

from __future__ import annotations

from typing import Any

__all__ = ["FinetuneConfig", "finetune"]


def __getattr__(name: str) -> Any:
    # Lazy so that importing the config (for --help) does not import torch.
    if name == "FinetuneConfig":
        from bert_domain_ft.training.config import FinetuneConfig

        return FinetuneConfig
    if name == "finetune":
        from bert_domain_ft.training.recipe import finetune

        return finetune
    raise AttributeError(name)
