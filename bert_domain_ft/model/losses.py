"""Masked-LM losses of any ``AutoModelForMaskedLM`` (RoBERTa, XLM-R, DistilBERT, DeBERTa, ELECTRA…), sparse.

As ``pretraining_model.pretraining_losses`` does for BERT, the encoder's hidden states are gathered at the masked
positions *before* the vocabulary projection, so no (batch × seq_len × vocab) logit tensor is ever built. The
head of each architecture is described as ``transform`` (hidden → hidden) followed by a projection ``weight``
(V, E) + ``bias`` (``MaskedLMHead``); which attributes hold them is looked up in a small table of known layouts,
and the description is checked once per model against the model's own forward pass. A model whose head is not in
the table (or fails the check) falls back to the full forward pass and gathers its logits: correct, only slower.

    model = AutoModelForMaskedLM.from_pretrained("path/to/roberta")    # or model_loading.load_masked_lm_model
    output = masked_lm_losses(model, batch)      # a PretrainingOutput without NSP (batch: see batches.py)
    output.loss.backward()

The masked-LM loss with the vocabulary projection and cross-entropy fused, chunk by chunk, in one function.

Autograd would keep, for the M masked tokens, the log-softmax output (M × vocab floats) and then build the
gradient of the logits (another M × vocab) while every encoder activation is still alive: that is the peak of
a training step. Here the forward pass computes the loss and, chunk by chunk of rows, the gradients of the
hidden states, decoder weight and bias directly (softmax minus one-hot), so no float32 M × vocab tensor
outlives its chunk; backward only scales them by the incoming gradient. Accuracy comes free from the row maxima (no argmax).
Same loss and gradients as ``pretraining_losses`` (tests compare them with ``BertForPreTraining``'s own loss).

    output = fused_pretraining_losses(model, batch)       # a PretrainingOutput, like pretraining_losses

The fused masked-LM loss (``fused_head``) for any ``AutoModelForMaskedLM`` whose head ``masked_lm`` recognises.

The encoder runs as usual; the hidden states at the masked positions go through the head's ``transform`` and then
the fused projection + cross-entropy, so neither the (B × L × V) nor the (M × V) logit tensor outlives a chunk.
A model whose head is not recognised trains on the full-logit loss instead (``masked_lm.full_logit_losses``).

    output = fused_masked_lm_losses(model, batch)       # a PretrainingOutput without NSP

The training objective as a module, so that DistributedDataParallel sees (and synchronises) the whole pass.

DDP only averages gradients of computations that go through its own ``forward``; ``pretraining_losses`` calls
``model.bert`` and ``model.cls`` directly, so it is wrapped here and the wrapper is what DDP wraps. The losses are
``pretraining_losses``' with the vocabulary projection fused into the cross-entropy (``fused_head``). Another
objective (e.g. heads-only warm-up) is another module with the same ``forward(batch) -> PretrainingOutput``.

    objective = PretrainingObjective(loaded.model, with_nsp=True)
    output = objective(batch); output.loss.backward()
"""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bert_domain_ft.model.pretraining import (
    IGNORE_INDEX,
    PretrainingOutput,
    add_nsp_statistics,
    gather_masked_hidden,
    pretraining_losses,
)

logger = logging.getLogger(__name__)

Transform = Callable[[torch.Tensor], torch.Tensor]
_VERIFY_TOLERANCE = 1e-4  # float32 logits of the same computation in another order agree far closer than this


@dataclass(frozen=True)
class MaskedLMHead:
    """A masked-LM head as ``transform(hidden) @ weight.T + bias``, and the encoder whose output it reads."""

    layout: str  # which known layout matched ("bert", "roberta", "distilbert", "albert", "deberta", …)
    encoder: nn.Module  # model.base_model: (input_ids, attention_mask, …) → (B, L, H) first output
    transform: Transform  # (M, H) → (M, E): dense, activation, layer norm
    weight: torch.Tensor  # (V, E) vocabulary projection (often tied to the input embeddings)
    bias: torch.Tensor | None  # (V,)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(M, V) logits of hidden states (M, H)."""
        return F.linear(self.transform(hidden), self.weight, self.bias)


def _sequential(*steps: Transform) -> Transform:
    def apply(hidden: torch.Tensor) -> torch.Tensor:
        for step in steps:
            hidden = step(hidden)
        return hidden

    return apply


def _bert_layout(model: nn.Module) -> tuple[Transform, nn.Linear] | None:
    # BertForPreTraining, BertForMaskedLM, legacy DeBERTa(-v2): cls.predictions = transform + decoder.
    predictions = getattr(getattr(model, "cls", None), "predictions", None)
    if predictions is None or not hasattr(predictions, "transform") or not hasattr(predictions, "decoder"):
        return None
    return predictions.transform, predictions.decoder


def _roberta_layout(model: nn.Module) -> tuple[Transform, nn.Linear] | None:
    # RoBERTa, XLM-R, CamemBERT, Data2Vec-text…: lm_head = dense → gelu → layer_norm → decoder.
    head = getattr(model, "lm_head", None)
    if head is None or not all(hasattr(head, name) for name in ("dense", "layer_norm", "decoder")):
        return None
    from transformers.activations import gelu

    return _sequential(head.dense, gelu, head.layer_norm), head.decoder


def _distilbert_layout(model: nn.Module) -> tuple[Transform, nn.Linear] | None:
    names = ("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector")
    if not all(hasattr(model, name) for name in names):
        return None
    return _sequential(model.vocab_transform, model.activation, model.vocab_layer_norm), model.vocab_projector


def _albert_layout(model: nn.Module) -> tuple[Transform, nn.Linear] | None:
    head = getattr(model, "predictions", None)
    if head is None or not all(hasattr(head, name) for name in ("dense", "activation", "LayerNorm", "decoder")):
        return None
    return _sequential(head.dense, head.activation, head.LayerNorm), head.decoder


def _electra_layout(model: nn.Module) -> tuple[Transform, nn.Linear] | None:
    if not (hasattr(model, "generator_predictions") and hasattr(model, "generator_lm_head")):
        return None
    return model.generator_predictions, model.generator_lm_head


def _modernbert_layout(model: nn.Module) -> tuple[Transform, nn.Linear] | None:
    if not (
        isinstance(getattr(model, "head", None), nn.Module) and isinstance(getattr(model, "decoder", None), nn.Linear)
    ):
        return None
    return model.head, model.decoder


_LINEAR_LAYOUTS: dict[str, Callable[[nn.Module], tuple[Transform, nn.Linear] | None]] = {
    "bert": _bert_layout,
    "roberta": _roberta_layout,
    "distilbert": _distilbert_layout,
    "albert": _albert_layout,
    "electra": _electra_layout,
    "modernbert": _modernbert_layout,
}


def _deberta_head(model: nn.Module) -> MaskedLMHead | None:
    # DeBERTa(-v2) with legacy=False: lm_predictions.lm_head = dense → act → LayerNorm, then the word embeddings.
    head = getattr(getattr(model, "lm_predictions", None), "lm_head", None)
    embeddings = getattr(getattr(model.base_model, "embeddings", None), "word_embeddings", None)
    if head is None or embeddings is None or not hasattr(head, "bias"):
        return None
    transform = _sequential(head.dense, head.transform_act_fn, head.LayerNorm)
    return MaskedLMHead("deberta", model.base_model, transform, embeddings.weight, head.bias)


def _candidate_heads(model: nn.Module) -> list[MaskedLMHead]:
    candidates = []
    for layout, find in _LINEAR_LAYOUTS.items():
        found = find(model)
        if found is not None and isinstance(found[1], nn.Linear):
            transform, decoder = found
            candidates.append(MaskedLMHead(layout, model.base_model, transform, decoder.weight, decoder.bias))
    deberta = _deberta_head(model)
    if deberta is not None:
        candidates.append(deberta)
    return candidates


def encoder_inputs(encoder: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask, and token_type_ids when the encoder takes them (DistilBERT and ModernBERT do
    not: MLM-only data has all-zero token types, their default, so nothing is lost)."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if "token_type_ids" in batch and "token_type_ids" in inspect.signature(encoder.forward).parameters:
        inputs["token_type_ids"] = batch["token_type_ids"]
    return inputs


def _own_logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    output = model(**inputs)
    return output.logits if hasattr(output, "logits") else output.prediction_logits


def _matches_model(model: nn.Module, head: MaskedLMHead) -> bool:
    """Whether ``head`` reproduces the model's own logits on a short probe (eval mode: no dropout, no RNG used)."""
    device = head.weight.device
    vocab = head.weight.shape[0]
    probe = {
        "input_ids": (torch.arange(2, 12, device=device) % vocab)[None, :],
        "attention_mask": torch.ones(1, 10, dtype=torch.long, device=device),
    }
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            expected = _own_logits(model, probe).float()
            hidden = head.encoder(**encoder_inputs(head.encoder, probe))[0]
            ours = head.logits(hidden[0]).float()
    except Exception:  # an unexpected signature or output: not this layout
        return False
    finally:
        model.train(was_training)
    return expected.shape[-2:] == ours.shape and torch.allclose(ours, expected[0], atol=_VERIFY_TOLERANCE, rtol=0)


# The layout found for each model (None: no sparse head, use the full forward pass); checked once per model.
_HEAD_LAYOUTS: weakref.WeakKeyDictionary[nn.Module, str | None] = weakref.WeakKeyDictionary()


def masked_lm_head(model: nn.Module) -> MaskedLMHead | None:
    """The sparse-loss description of ``model``'s masked-LM head, or ``None`` when only the full pass works.

    The first call per model checks the candidate against the model's own forward pass (one 10-token probe)
    and logs one line when it falls back; later calls rebuild the (cheap) description from the cached layout.
    """
    if model in _HEAD_LAYOUTS:
        layout = _HEAD_LAYOUTS[model]
        return next((head for head in _candidate_heads(model) if head.layout == layout), None)
    head = next((head for head in _candidate_heads(model) if _matches_model(model, head)), None)
    _HEAD_LAYOUTS[model] = None if head is None else head.layout
    if head is None:
        logger.warning(
            "%s: masked-LM head not recognised; computing logits at every position (correct, but slower)",
            type(model).__name__,
        )
    return head


def output_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> PretrainingOutput:
    """The ``PretrainingOutput`` (no NSP) of masked-LM logits (M, V) against their labels (M,)."""
    return PretrainingOutput.from_mlm_logits(logits, labels)


def full_logit_losses(model: nn.Module, batch: dict[str, torch.Tensor]) -> PretrainingOutput:
    """Masked-LM losses from the model's own forward pass (logits at every position), gathered at the masks."""
    logits = _own_logits(model, encoder_inputs(model.base_model, batch))
    selected, labels = gather_masked_hidden(logits, batch["masked_lm_positions"], batch["masked_lm_labels"])
    return output_from_logits(selected, labels)


def masked_lm_losses(model: nn.Module, batch: dict[str, torch.Tensor]) -> PretrainingOutput:
    """Masked-LM losses of any masked-LM model, with logits at the masked positions only when the head is known."""
    head = masked_lm_head(model)
    if head is None:
        return full_logit_losses(model, batch)
    sequence_output = head.encoder(**encoder_inputs(head.encoder, batch))[0]
    hidden, labels = gather_masked_hidden(sequence_output, batch["masked_lm_positions"], batch["masked_lm_labels"])
    return output_from_logits(head.logits(hidden), labels)


def has_nsp_head(model: nn.Module) -> bool:
    """Whether ``model`` is a BERT with a next-sentence-prediction head (``BertForPreTraining``)."""
    return hasattr(getattr(model, "cls", None), "seq_relationship") and hasattr(model, "bert")


def model_losses(model: nn.Module, batch: dict[str, torch.Tensor], with_nsp: bool = True) -> PretrainingOutput:
    """``pretraining_losses`` for a BERT with an NSP head (NSP loss when the batch has labels), else MLM only."""
    if has_nsp_head(model):
        return pretraining_losses(model, batch, with_nsp=with_nsp)
    return masked_lm_losses(model, batch)


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
