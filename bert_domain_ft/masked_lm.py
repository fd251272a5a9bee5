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
"""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .pretraining_model import PretrainingOutput, gather_masked_hidden, pretraining_losses

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
