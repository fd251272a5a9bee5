"""The training stage: stream pregenerated epochs through ``BertForPreTraining`` and save the adapted model.

Modules: config (FinetuneConfig), data (epoch sources, batch plans), compatibility (data ↔ model checks),
legacy_format (original JSON epochs → memmaps), objective (the loss module), optimization (AdamW, schedule),
precision (autocast, GradScaler), distributed (torchrun), checkpoints, metrics, loop (the loop), recipe (finetune: the stage).

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
