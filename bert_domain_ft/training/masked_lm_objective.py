"""The fused masked-LM loss (``fused_head``) for any ``AutoModelForMaskedLM`` whose head ``masked_lm`` recognises.

The encoder runs as usual; the hidden states at the masked positions go through the head's ``transform`` and then
the fused projection + cross-entropy, so neither the (B × L × V) nor the (M × V) logit tensor outlives a chunk.
A model whose head is not recognised trains on the full-logit loss instead (``masked_lm.full_logit_losses``).

    output = fused_masked_lm_losses(model, batch)       # a PretrainingOutput without NSP
"""

from __future__ import annotations

import torch
from torch import nn

from ..masked_lm import encoder_inputs, full_logit_losses, masked_lm_head
from ..pretraining_model import PretrainingOutput, gather_masked_hidden
from .fused_head import constant_shape_rows, projection_cross_entropy


def fused_masked_lm_losses(model: nn.Module, batch: dict[str, torch.Tensor]) -> PretrainingOutput:
    """Masked-LM losses of any masked-LM model, with the vocabulary projection fused into the cross-entropy."""
    head = masked_lm_head(model)
    if head is None:
        return full_logit_losses(model, batch)
    sequence_output = head.encoder(**encoder_inputs(head.encoder, batch))[0]
    hidden, labels = gather_masked_hidden(sequence_output, batch["masked_lm_positions"], batch["masked_lm_labels"])
    count = labels.numel()
    hidden, labels = constant_shape_rows(hidden, labels)  # same allocation sizes every step
    loss_sum, correct = projection_cross_entropy(head.transform(hidden), head.weight, head.bias, labels)
    return PretrainingOutput.masked_lm_only(loss_sum / max(count, 1), loss_sum.detach(), correct, count, labels.device)
