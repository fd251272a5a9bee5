"""The training objective as a module, so that DistributedDataParallel sees (and synchronises) the whole pass.

DDP only averages gradients of computations that go through its own ``forward``; ``pretraining_losses`` calls
``model.bert`` and ``model.cls`` directly, so it is wrapped here and the wrapper is what DDP wraps. The losses are
``pretraining_losses``' with the vocabulary projection fused into the cross-entropy (``fused_head``). Another
objective (e.g. heads-only warm-up) is another module with the same ``forward(batch) -> PretrainingOutput``.

    objective = PretrainingObjective(loaded.model, with_nsp=True)
    output = objective(batch); output.loss.backward()
"""

from __future__ import annotations

import torch
from torch import nn

from ..masked_lm import has_nsp_head, masked_lm_head
from ..pretraining_model import PretrainingOutput
from .fused_head import fused_pretraining_losses
from .masked_lm_objective import fused_masked_lm_losses


class PretrainingObjective(nn.Module):
    """Masked-LM (+ NSP when ``with_nsp`` and the batch has labels) losses of a ``BertForPreTraining``; masked-LM
    losses of any other masked-LM model (RoBERTa, DistilBERT, a BertForMaskedLM, …)."""

    def __init__(self, model: nn.Module, with_nsp: bool = True):
        super().__init__()
        self.model = model
        self.with_nsp = with_nsp
        self.bert_pretraining = has_nsp_head(model)
        if not self.bert_pretraining:
            masked_lm_head(model)  # recognised (and checked) now, so a fallback notice comes before training

    def forward(self, batch: dict[str, torch.Tensor]) -> PretrainingOutput:
        if not self.bert_pretraining:
            return fused_masked_lm_losses(self.model, batch)
        return fused_pretraining_losses(self.model, batch, with_nsp=self.with_nsp)
