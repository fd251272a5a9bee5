"""The masked-LM loss with the vocabulary projection and cross-entropy fused, chunk by chunk, in one function.

Autograd would keep, for the M masked tokens, the log-softmax output (M × vocab floats) and then build the
gradient of the logits (another M × vocab) while every encoder activation is still alive: that is the peak of
a training step. Here the forward pass computes the loss and, chunk by chunk of rows, the gradients of the
hidden states, decoder weight and bias directly (softmax minus one-hot), so no float32 M × vocab tensor
outlives its chunk; backward only scales them by the incoming gradient. Accuracy comes free from the row maxima (no argmax).
Same loss and gradients as ``pretraining_losses`` (tests compare them with ``BertForPreTraining``'s own loss).

    output = fused_pretraining_losses(model, batch)       # a PretrainingOutput, like pretraining_losses
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..pretraining_model import IGNORE_INDEX, PretrainingOutput, add_nsp_statistics, gather_masked_hidden

CHUNK_ROWS = 128  # masked tokens per chunk: 128 × 30522 floats = 16 MB of logits at a time


def _chunk_gradient(
    chunk: torch.Tensor,
    matrix: torch.Tensor,
    bias: torch.Tensor,
    targets: torch.Tensor,
    workspace: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed loss, correct count, d loss / d logits) of one chunk; rows labelled IGNORE_INDEX count for nothing.

    With a float32 ``workspace`` of at least the chunk's rows, the logits (and the returned gradient) live in it.
    """
    real = targets != IGNORE_INDEX
    targets = targets.clamp(min=0)
    if workspace is None:
        logits = torch.matmul(chunk, matrix.t()).float()
    else:
        logits = torch.matmul(chunk, matrix.t(), out=workspace[: chunk.shape[0]])
    logits.add_(bias.float())  # (c, V)
    maxima = logits.max(dim=-1, keepdim=True).values
    target_logits = logits.gather(1, targets[:, None])
    probabilities = logits.sub_(maxima).exp_()
    sums = probabilities.sum(dim=-1, keepdim=True)
    losses = (sums.log() + maxima - target_logits)[:, 0]
    grad_logits = probabilities.div_(sums)  # softmax …
    grad_logits[torch.arange(len(targets), device=targets.device), targets] -= 1.0  # … minus one-hot
    grad_logits.mul_(real[:, None])
    correct = ((target_logits >= maxima)[:, 0] & real).sum()  # ties count as correct (argmax would pick one)
    return losses.mul_(real).sum(), correct, grad_logits


def pad_rows(rows: torch.Tensor, labels: torch.Tensor, multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (M, H) rows with zeros and (M,) labels with IGNORE_INDEX up to a multiple of ``multiple`` rows."""
    padding = -rows.shape[0] % multiple
    if not padding:
        return rows, labels
    return F.pad(rows, (0, 0, 0, padding)), F.pad(labels, (0, padding), value=IGNORE_INDEX)


FLOAT32_ROW_MULTIPLE = 32  # float32 rows are padded to a multiple of this (few distinct sizes, little waste)


def constant_shape_rows(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked rows padded so that steps allocate the same few tensor sizes.

    The number of masked tokens changes from batch to batch. Left as it was, the last chunk's logits (up to
    16 MB) got a new size every step; glibc could not reuse the freed block for it and the heap only grew: the
    resident set of a MiniLM fp32 run climbed from 1.04 to 1.60 GB over 40 steps. Now float32 logits always
    live in one chunk-sized buffer and the rows are padded to a multiple of 32 (a handful of sizes for the
    small per-row tensors, ≤ 31 wasted rows); under autocast the rows are padded to whole chunks, which also
    keeps oneDNN to one cached copy of the reordered weight (~22 MB per distinct shape). Padded rows carry
    IGNORE_INDEX: no loss, no gradient.
    """
    autocast = torch.is_autocast_enabled(hidden.device.type)
    return pad_rows(hidden, labels, CHUNK_ROWS if autocast else FLOAT32_ROW_MULTIPLE)


Gradients = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _chunked_gradients(
    inputs: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor, labels: torch.Tensor, chunk_rows: int
) -> Gradients:
    """float32: (loss, correct, d/d hidden, d/d weight, d/d bias), the weight gradient accumulated in place.

    Every chunk's logits go to one (chunk_rows, V) workspace: a single allocation of one size, whatever the
    number of masked tokens, and no rows computed beyond the real ones but for the padding to 32.
    """
    grad_hidden = torch.empty(inputs.shape, dtype=torch.float32, device=inputs.device)
    # Written by the first chunk's product, not zero-filled first: one pass less over a vocabulary-sized tensor.
    grad_weight = torch.empty(matrix.shape, dtype=torch.float32, device=matrix.device)
    grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
    loss_sum = torch.zeros((), dtype=torch.float32, device=inputs.device)
    correct = torch.zeros((), dtype=torch.int64, device=inputs.device)
    workspace = torch.empty((chunk_rows, matrix.shape[0]), dtype=torch.float32, device=inputs.device)
    if inputs.shape[0] == 0:
        grad_weight.zero_()
    for start in range(0, inputs.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        loss, right, grad_logits = _chunk_gradient(inputs[rows], matrix, bias, labels[rows], workspace)
        loss_sum += loss
        correct += right
        grad_hidden[rows] = torch.matmul(grad_logits, matrix)
        if start == 0:
            torch.matmul(grad_logits.t(), inputs[rows], out=grad_weight)
        else:
            grad_weight.addmm_(grad_logits.t(), inputs[rows])  # no temporary of the weight's size
        grad_bias += grad_logits.sum(dim=0)
    return loss_sum, correct, grad_hidden, grad_weight, grad_bias


def _low_precision_gradients(
    inputs: torch.Tensor, labels: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor, chunk_rows: int
) -> Gradients:
    """bf16/fp16 matmuls: the logit gradients of all rows are kept in that dtype (M × V × 2 bytes) so the two
    gradient matmuls run once, instead of one pass over the weight-sized gradient per chunk."""
    grad_logits = torch.empty((inputs.shape[0], matrix.shape[0]), dtype=inputs.dtype, device=inputs.device)
    grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
    loss_sum = torch.zeros((), dtype=torch.float32, device=inputs.device)
    correct = torch.zeros((), dtype=torch.int64, device=inputs.device)
    for start in range(0, inputs.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        loss, right, chunk_grad = _chunk_gradient(inputs[rows], matrix, bias, labels[rows])
        loss_sum += loss
        correct += right
        grad_logits[rows] = chunk_grad
        grad_bias += chunk_grad.sum(dim=0)
    grad_hidden = torch.matmul(grad_logits, matrix).float()
    grad_weight = torch.matmul(grad_logits.t(), inputs).float()
    return loss_sum, correct, grad_hidden, grad_weight, grad_bias


class _DecoderCrossEntropy(torch.autograd.Function):
    """(Σ cross-entropy of hidden @ weightᵀ + bias against labels, number of correct argmax predictions).

    Rows labelled IGNORE_INDEX contribute nothing. Callers pad the rows (``constant_shape_rows``) so that every
    chunk has the same shape.
    """

    @staticmethod
    def forward(ctx: Any, hidden, weight, bias, labels, chunk_rows: int):  # type: ignore[override]
        device_type, count = hidden.device.type, hidden.shape[0]
        # Matmuls in the autocast dtype when autocast is on (as nn.Linear would run), the softmax in float32.
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else torch.float32
        with torch.autocast(device_type=device_type, enabled=False):
            inputs, matrix = hidden.to(dtype), weight.to(dtype)
            if dtype == torch.float32:
                grads = _chunked_gradients(inputs, matrix, bias, labels, chunk_rows)
            else:
                grads = _low_precision_gradients(*pad_rows(inputs, labels, chunk_rows), matrix, bias, chunk_rows)
        loss_sum, correct, grad_hidden, grad_weight, grad_bias = grads
        ctx.save_for_backward(grad_hidden[:count], grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype)
        ctx.mark_non_differentiable(correct)
        return loss_sum, correct

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, grad_correct: torch.Tensor):  # type: ignore[override]
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        hidden_dtype, weight_dtype, bias_dtype = ctx.dtypes
        scale = grad_loss.float()
        return (
            (grad_hidden * scale).to(hidden_dtype),
            (grad_weight.mul_(scale)).to(weight_dtype),
            (grad_bias.mul_(scale)).to(bias_dtype),
            None,
            None,
        )


def decoder_cross_entropy(
    hidden: torch.Tensor, decoder: nn.Linear, labels: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss, correct count) of ``decoder(hidden)`` (M, V) against ``labels`` (M,)."""
    bias = decoder.bias if bias is None else bias
    return _DecoderCrossEntropy.apply(hidden, decoder.weight, bias, labels, CHUNK_ROWS)


def projection_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss, correct count) of ``hidden @ weight.T + bias`` (M, V) against ``labels`` (M,), for heads whose
    projection is a bare weight (DeBERTa-v2 projects onto the word embeddings) or has no bias."""
    if bias is None:
        bias = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
    return _DecoderCrossEntropy.apply(hidden, weight, bias, labels, CHUNK_ROWS)


def fused_pretraining_losses(
    model: nn.Module, batch: dict[str, torch.Tensor], with_nsp: bool = True
) -> PretrainingOutput:
    """``pretraining_losses`` of a ``BertForPreTraining`` with the fused decoder + cross-entropy."""
    encoder_output = model.bert(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
    )
    sequence_output, pooled_output = encoder_output[0], encoder_output[1]
    hidden, labels = gather_masked_hidden(sequence_output, batch["masked_lm_positions"], batch["masked_lm_labels"])
    count = labels.numel()
    hidden, labels = constant_shape_rows(hidden, labels)
    predictions = model.cls.predictions
    loss_sum, correct = decoder_cross_entropy(predictions.transform(hidden), predictions.decoder, labels)
    output = PretrainingOutput.masked_lm_only(
        loss_sum / max(count, 1), loss_sum.detach(), correct, count, labels.device
    )
    if with_nsp and "next_sentence_label" in batch:
        add_nsp_statistics(output, model, pooled_output, batch["next_sentence_label"])
    return output
