"""Loading a BERT for continued pretraining, and its losses computed only where they are needed.

The masked-LM loss is computed from the hidden states *at the masked positions only*: they are gathered before
the vocabulary projection, so the (batch × seq_len × vocab) logit tensor of the usual forward pass is never
built. At seq_len 128 with ~20 masked tokens a row that is ~6× fewer projection FLOPs and the main memory
saving; the loss is the same (tests compare it with the full-logit loss of ``BertForPreTraining``).

    loaded = load_pretraining_model("path/to/bert")       # fresh heads reported in loaded.fresh_heads
    output = pretraining_losses(loaded.model, batch)      # batch: see bert_domain_ft.data.loader
    (output.mlm_loss + output.nsp_loss).backward()
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from bert_domain_ft.errors import UserError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
MLM_HEAD = "mlm"
NSP_HEAD = "nsp"
_HEAD_KEY_PREFIXES = {MLM_HEAD: ("cls.predictions.",), NSP_HEAD: ("cls.seq_relationship.", "bert.pooler.")}


@dataclass(frozen=True)
class LoadedModel:
    """A ``BertForPreTraining`` and which pretraining heads the checkpoint lacked (initialised at random)."""

    model: nn.Module
    fresh_heads: tuple[str, ...]


@dataclass
class PretrainingOutput:
    """Losses (means over the batch) and the counts that make accuracies exact when summed over batches."""

    mlm_loss: torch.Tensor
    nsp_loss: torch.Tensor | None
    mlm_loss_sum: torch.Tensor  # sum of per-token losses, for exact averages over many batches
    mlm_correct: torch.Tensor
    mlm_count: torch.Tensor
    nsp_correct: torch.Tensor | None
    nsp_count: torch.Tensor | None

    @property
    def loss(self) -> torch.Tensor:
        return self.mlm_loss if self.nsp_loss is None else self.mlm_loss + self.nsp_loss

    @classmethod
    def masked_lm_only(
        cls,
        mlm_loss: torch.Tensor,
        mlm_loss_sum: torch.Tensor,
        mlm_correct: torch.Tensor,
        count: int,
        device: torch.device,
    ) -> PretrainingOutput:
        """Masked-LM figures over ``count`` real masked tokens; NSP left empty (see ``add_nsp_statistics``)."""
        return cls(mlm_loss, None, mlm_loss_sum, mlm_correct, torch.tensor(count, device=device), None, None)

    @classmethod
    def from_mlm_logits(cls, logits: torch.Tensor, labels: torch.Tensor) -> PretrainingOutput:
        """Masked-LM figures of logits (M, V) against their labels (M,); NSP left empty."""
        return cls.masked_lm_only(*mlm_statistics(logits, labels), labels.numel(), labels.device)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars: we print one line of our own instead."""
    from transformers.utils import logging as transformers_logging

    previous = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(previous)
        transformers_logging.enable_progress_bar()


def _fresh_heads(missing_keys: set[str]) -> tuple[str, ...]:
    return tuple(
        head for head, prefixes in _HEAD_KEY_PREFIXES.items() if any(key.startswith(prefixes) for key in missing_keys)
    )


def load_pretraining_model(name_or_path: str) -> LoadedModel:
    """Load ``BertForPreTraining`` from a local directory or hub id; missing heads start fresh (one warning line)."""
    from transformers import BertForPreTraining

    try:
        with quiet_transformers():
            model, loading_info = BertForPreTraining.from_pretrained(name_or_path, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as error:  # RuntimeError: weights of another shape than the config
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"{name_or_path}: cannot load the model ({first_line}); give a BERT model directory") from None
    fresh = _fresh_heads(set(loading_info.get("missing_keys", ())))
    if fresh:
        logger.warning(
            "%s has no trained %s head%s: initialised at random (normal for encoder-only checkpoints)",
            name_or_path,
            " and ".join(head.upper() for head in fresh),
            "s" if len(fresh) > 1 else "",
        )
    return LoadedModel(model=model, fresh_heads=fresh)


def gather_masked_hidden(
    sequence_output: torch.Tensor, masked_positions: torch.Tensor, masked_labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states (M, H) and labels (M,) of the M real masked tokens of a batch.

    ``sequence_output`` (B, L, H); ``masked_positions`` and ``masked_labels`` (B, P), labels ``IGNORE_INDEX``
    where a row has fewer than P masked tokens.
    """
    real = masked_labels != IGNORE_INDEX
    rows, slots = real.nonzero(as_tuple=True)
    return sequence_output[rows, masked_positions[rows, slots]], masked_labels[rows, slots]


def mlm_statistics(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, summed loss, correct predictions) of masked-LM logits (M, V) against labels (M,)."""
    losses = F.cross_entropy(logits.float(), labels, reduction="none")
    loss_sum = losses.sum()
    mean = loss_sum / labels.numel() if labels.numel() else loss_sum
    correct = (logits.argmax(dim=-1) == labels).sum()
    return mean, loss_sum.detach(), correct


def pretraining_losses(model: nn.Module, batch: dict[str, torch.Tensor], with_nsp: bool = True) -> PretrainingOutput:
    """Masked-LM (and NSP) losses of ``BertForPreTraining`` on a batch, with MLM logits only at masked positions."""
    encoder_output = model.bert(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
    )
    sequence_output, pooled_output = encoder_output[0], encoder_output[1]
    hidden, labels = gather_masked_hidden(sequence_output, batch["masked_lm_positions"], batch["masked_lm_labels"])
    output = PretrainingOutput.from_mlm_logits(model.cls.predictions(hidden), labels)
    if with_nsp and "next_sentence_label" in batch:
        add_nsp_statistics(output, model, pooled_output, batch["next_sentence_label"])
    return output


def add_nsp_statistics(
    output: PretrainingOutput, model: nn.Module, pooled_output: torch.Tensor, nsp_labels: torch.Tensor
) -> None:
    """Fill ``output``'s NSP loss and counts from BERT's pooled output (B, H) and labels (B,)."""
    nsp_logits = model.cls.seq_relationship(pooled_output).float()
    output.nsp_loss = F.cross_entropy(nsp_logits, nsp_labels)
    output.nsp_correct = (nsp_logits.argmax(dim=-1) == nsp_labels).sum()
    output.nsp_count = torch.tensor(nsp_labels.numel(), device=nsp_labels.device)


def head_parameters(model: nn.Module, heads: tuple[str, ...]) -> list[nn.Parameter]:
    """Parameters that belong only to the named heads (the tied word-embedding matrix is the encoder's).

    For a model other than a BERT (RoBERTa, DistilBERT, …: any ``AutoModelForMaskedLM``) the MLM head is every
    parameter outside ``model.base_model``, and there is no NSP head."""
    if not hasattr(model, "bert"):
        encoder = {id(parameter) for parameter in model.base_model.parameters()}
        return [p for p in model.parameters() if id(p) not in encoder] if MLM_HEAD in heads else []
    encoder_ids = {id(parameter) for parameter in model.bert.embeddings.parameters()}
    selected: list[nn.Parameter] = []
    if MLM_HEAD in heads:
        selected += [p for p in model.cls.predictions.parameters() if id(p) not in encoder_ids]
    if NSP_HEAD in heads:
        selected += list(model.cls.seq_relationship.parameters())
        if getattr(model.bert, "pooler", None) is not None:
            selected += list(model.bert.pooler.parameters())
    return selected
