"""The pretraining objective: loading a BERT with its heads, and the masked-LM (+ NSP) losses of any masked-LM model.

``pretraining_losses`` is the one loss function of training, the head warm-up and held-out evaluation. The
encoder's hidden states are gathered at the masked positions *before* the vocabulary projection, so no
(batch × seq_len × vocab) logit tensor is ever built (at seq_len 128 with ~20 masked tokens a row, ~6× fewer
projection FLOPs and the main memory saving). The head of each architecture (BERT, RoBERTa, XLM-R, DistilBERT,
ALBERT, ELECTRA, DeBERTa, ModernBERT) is described as ``transform`` (hidden → hidden) and a projection ``weight``
+ ``bias`` (``MaskedLMHead``), found in a small table of known layouts and checked once per model against the
model's own forward pass; a model whose head is not recognised falls back to its full forward pass and gathers
its logits (correct, only slower).

With ``fused`` (training) the projection and the cross-entropy run as one autograd function, chunk by chunk of
rows: the forward pass computes the loss and the gradients of the hidden states, weight and bias (softmax minus
one-hot), so no float32 (masked tokens × vocab) tensor outlives its chunk, and backward only scales them.
Without it (evaluation, the head warm-up) the logits of the masked rows go through ``F.cross_entropy``. Either
way the loss equals the full-logit loss (tests compare both with ``BertForPreTraining``'s own).

    loaded = load_pretraining_model("path/to/bert")       # fresh heads reported in loaded.fresh_heads
    output = pretraining_losses(loaded.model, batch)      # batch: see bert_domain_ft.data.loader
    output.loss.backward()                                # masked LM (+ NSP when the batch has its labels)
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bert_domain_ft.errors import UserError, first_line

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
        # torch.full, not torch.tensor: a fill kernel, where a copy from host memory would wait for the GPU.
        count_tensor = torch.full((), count, dtype=torch.long, device=device)
        return cls(mlm_loss, None, mlm_loss_sum, mlm_correct, count_tensor, None, None)

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
        raise UserError(
            f"{name_or_path}: cannot load the model ({first_line(error)}); give a BERT model directory"
        ) from None
    fresh = _fresh_heads(set(loading_info.get("missing_keys", ())))
    if fresh:
        logger.warning(
            "%s has no trained %s head%s: initialised at random (normal for encoder-only checkpoints)",
            name_or_path,
            " and ".join(head.upper() for head in fresh),
            "s" if len(fresh) > 1 else "",
        )
    return LoadedModel(model=model, fresh_heads=fresh)


# ---------------------------------------------------------------------------------------- losses and their statistics


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


def add_nsp_statistics(
    output: PretrainingOutput, model: nn.Module, pooled_output: torch.Tensor, nsp_labels: torch.Tensor
) -> None:
    """Fill ``output``'s NSP loss and counts from BERT's pooled output (B, H) and labels (B,).

    Labels ``IGNORE_INDEX`` (instances without an NSP label: masked LM only) count nowhere: the loss is the mean
    over the labelled instances, and 0 — still connected to the head, so every process of a distributed run
    computes gradients for it (zeros) — when the batch has none, where the mean would be 0/0."""
    nsp_logits = model.cls.seq_relationship(pooled_output).float()
    labelled = nsp_labels != IGNORE_INDEX
    count = labelled.sum()  # on the device: no synchronisation with the host
    loss_sum = F.cross_entropy(nsp_logits, nsp_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    output.nsp_loss = loss_sum / count.clamp(min=1)
    output.nsp_correct = ((nsp_logits.argmax(dim=-1) == nsp_labels) & labelled).sum()
    output.nsp_count = count


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
    if NSP_HEAD in heads and _has_nsp_head(model):  # a BertForMaskedLM has no NSP head to select
        selected += list(model.cls.seq_relationship.parameters())
        if getattr(model.bert, "pooler", None) is not None:
            selected += list(model.bert.pooler.parameters())
    return selected


# ---------------------------------------------------------------------------- the masked-LM head of each architecture

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


def _has_nsp_head(model: nn.Module) -> bool:
    """Whether ``model`` is a BERT with a next-sentence-prediction head (``BertForPreTraining``)."""
    return hasattr(getattr(model, "cls", None), "seq_relationship") and hasattr(model, "bert")


# ------------------------------------------------------------------------ the projection fused with the cross-entropy

CHUNK_ROWS = 128  # masked tokens per chunk on the CPU: 128 × 30522 floats = 16 MB of logits at a time
# On a GPU few large chunks: each chunk is a dozen kernel launches, and the caching allocator reuses any size.
# 2048 × 30522 floats = 250 MB of logits at a time (a batch of 256 × 128 tokens masks ~5,000: 3 chunks).
CUDA_CHUNK_ROWS = 2048
CUDA_ROW_MULTIPLE = 64  # rows padded to this on a GPU: a few distinct matrix shapes, at most 63 idle rows


def chunk_rows_for(device: torch.device) -> int:
    """Masked tokens per chunk of the fused projection + cross-entropy on ``device``."""
    return CUDA_CHUNK_ROWS if device.type == "cuda" else CHUNK_ROWS


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
    if hidden.device.type == "cuda":  # the caching allocator needs no constant sizes
        return pad_rows(hidden, labels, CUDA_ROW_MULTIPLE)
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
            elif device_type == "cuda":  # rows already padded by constant_shape_rows; a short last chunk is fine
                grads = _low_precision_gradients(inputs, labels, matrix, bias, chunk_rows)
            else:  # whole chunks on the CPU: oneDNN keeps one reordered copy of the weight per shape
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


# ---------------------------------------------------------------------------------------------------- the entry point


def _fused_masked_lm(head: MaskedLMHead, hidden: torch.Tensor, labels: torch.Tensor) -> PretrainingOutput:
    """Masked-LM figures of the gathered rows with the projection fused into the cross-entropy."""
    count = labels.numel()
    hidden, labels = constant_shape_rows(hidden, labels)  # same allocation sizes every step
    weight, bias = head.weight, head.bias
    if bias is None:  # a projection without bias (DeBERTa-v2 projects onto the word embeddings)
        bias = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
    chunk_rows = chunk_rows_for(hidden.device)
    loss_sum, correct = _DecoderCrossEntropy.apply(head.transform(hidden), weight, bias, labels, chunk_rows)
    return PretrainingOutput.masked_lm_only(loss_sum / max(count, 1), loss_sum.detach(), correct, count, labels.device)


def _full_logit_losses(model: nn.Module, batch: dict[str, torch.Tensor]) -> PretrainingOutput:
    """The fallback: the model's own forward pass (logits at every position), gathered at the masks."""
    logits = _own_logits(model, encoder_inputs(model.base_model, batch))
    selected, labels = gather_masked_hidden(logits, batch["masked_lm_positions"], batch["masked_lm_labels"])
    return PretrainingOutput.from_mlm_logits(selected, labels)


def pretraining_losses(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    with_nsp: bool = True,
    *,
    fused: bool = True,
    frozen_encoder: bool = False,
) -> PretrainingOutput:
    """Masked-LM losses of any masked-LM model on a batch, plus the NSP loss of a ``BertForPreTraining`` when
    ``with_nsp`` and the batch has ``next_sentence_label``; logits only at the masked positions.

    ``fused``: the projection and cross-entropy as one function (training; it computes the gradients in its
    forward pass), else the logits of the masked rows and ``F.cross_entropy`` (evaluation, the head warm-up).
    ``frozen_encoder``: the encoder runs under ``torch.no_grad()`` so gradients reach the heads only (the NSP
    head's pooler then runs again, with gradients, on the encoder's output). A head that is not recognised
    computes the full logits whatever the flags.
    """
    head = masked_lm_head(model)
    if head is None:
        return _full_logit_losses(model, batch)
    with torch.no_grad() if frozen_encoder else contextlib.nullcontext():
        encoded = head.encoder(**encoder_inputs(head.encoder, batch))
    hidden, labels = gather_masked_hidden(encoded[0], batch["masked_lm_positions"], batch["masked_lm_labels"])
    if fused:
        output = _fused_masked_lm(head, hidden, labels)
    else:
        output = PretrainingOutput.from_mlm_logits(head.logits(hidden), labels)
    if with_nsp and "next_sentence_label" in batch and _has_nsp_head(model):
        pooled = model.bert.pooler(encoded[0]) if frozen_encoder else encoded[1]
        add_nsp_statistics(output, model, pooled, batch["next_sentence_label"])
    return output
