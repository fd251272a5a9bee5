"""New vocabulary rows in a model: their initialisation, their record on disk, and training them alone.

``extend_model_weights`` writes a copy of a model whose rows ``NewRow.token_id`` hold new tokens: [unusedX] slots
are overwritten in place, ids past the old vocabulary grow the input embeddings and the masked-LM decoder (weight
and bias) together. Every new row starts as the mean of the rows of the pieces the old tokenizer split its word
into (FVT, Gee et al. 2022): input embedding, decoder weight (when not tied to the embeddings) and decoder bias
alike. Old rows are untouched, so the hidden states of text without new tokens, and the logits of old tokens, are
exactly those of the original model; only the new rows' share of the softmax is new.

The record ``vocabulary_extension.json`` beside the weights (format 1) lists the new rows::

    {"format": 1, "base_model": "...", "vocab_size_before": 30522, "vocab_size": 30522,
     "added": [{"token": "asyncio", "id": 1, "pieces": [2004, 6038, 3695], "slot": "[unused0]", "count": 812}]}

Training reads it (``fresh_rows``): the new rows are fresh like a missing head and warm up with the heads while
every other parameter is frozen (``only_rows_change``); a trained model saved by ``finetune`` has no record.

    extend_model_weights("bert/", Path("bert-ext/"), [NewRow(1, (2004, 6038, 3695))], vocab_size=30522)
    with only_rows_change(partly_trained(model, heads), fresh_rows("bert-ext/"), optimizer): ...
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bert_domain_ft.errors import UserError, first_line
from bert_domain_ft.model.files import read_json_object
from bert_domain_ft.model.pretraining import quiet_transformers

EXTENSION_RECORD = "vocabulary_extension.json"
RECORD_FORMAT = 1


@dataclass(frozen=True)
class NewRow:
    """A new token's row id and the ids of the old pieces its word was split into."""

    token_id: int
    piece_ids: tuple[int, ...]


def _model_class(name_or_path: str) -> Any:
    """The transformers class the checkpoint was saved as (its ``architectures``), so that a checkpoint without
    heads stays without heads; ``AutoModel`` when the config names none."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(name_or_path)
    names = [name for name in (getattr(config, "architectures", None) or []) if hasattr(transformers, name)]
    return getattr(transformers, names[0]) if names else transformers.AutoModel


def load_as_saved(name_or_path: str) -> nn.Module:
    """The checkpoint as it was saved (``BertModel``, ``BertForPreTraining``, ``BertForMaskedLM``…)."""
    from bert_domain_ft.model.loading import check_model_files

    check_model_files(name_or_path)  # damaged or unsafe weights: one line, before transformers' traceback
    try:
        with quiet_transformers():
            return _model_class(name_or_path).from_pretrained(name_or_path)
    except (OSError, ValueError, RuntimeError) as error:
        raise UserError(
            f"{name_or_path}: cannot load the model ({first_line(error)}); give a model directory"
        ) from None


def _decoder_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The masked-LM decoder's weight (unless tied to the input embeddings) and bias; [] without a head."""
    output = model.get_output_embeddings()
    if output is None:
        return []
    tensors = [] if output.weight is model.get_input_embeddings().weight else [output.weight]
    return tensors + ([output.bias] if getattr(output, "bias", None) is not None else [])


def initialise_rows(model: nn.Module, rows: Sequence[NewRow]) -> None:
    """Set each new row of the input embeddings, decoder weight and decoder bias to the mean of its pieces' rows.

    All means are taken before any row is written, so a new row never averages another new one."""
    if not rows:
        return
    ids = torch.tensor([row.token_id for row in rows])
    with torch.no_grad():
        for tensor in [model.get_input_embeddings().weight, *_decoder_tensors(model)]:
            means = torch.stack([tensor[list(row.piece_ids)].float().mean(dim=0) for row in rows])
            tensor[ids] = means.to(tensor.dtype)


def parameter_count(model: nn.Module) -> int:
    """Parameters of ``model``, each shared (tied) tensor once."""
    return sum(parameter.numel() for parameter in model.parameters())


def extend_model_weights(source: str, output: Path, rows: Sequence[NewRow], vocab_size: int) -> tuple[int, int]:
    """Save into ``output`` the model of ``source`` with ``vocab_size`` rows and ``rows`` initialised from their
    pieces (see the module docstring); (parameters before, after)."""
    model = load_as_saved(source)
    before = parameter_count(model)
    old_size = model.get_input_embeddings().weight.shape[0]
    if vocab_size < old_size:
        raise UserError(f"{source}: the vocabulary cannot shrink ({old_size} rows, {vocab_size} asked)")
    if any(not 0 <= piece < old_size for row in rows for piece in row.piece_ids):
        raise UserError(f"{source}: a piece id lies outside the model's {old_size} embedding rows")
    if vocab_size > old_size:
        with quiet_transformers():
            model.resize_token_embeddings(vocab_size, mean_resizing=False)  # new rows are set just below
    initialise_rows(model, rows)
    output.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(str(output), safe_serialization=True)
    return before, parameter_count(model)


def write_record(
    directory: Path, base_model: str, vocab_size_before: int, added: list[dict[str, Any]],
    earlier: dict[str, Any] | None = None,
) -> Path:  # fmt: skip
    """Write ``vocabulary_extension.json`` (the format in the module docstring) into ``directory``.

    ``earlier``: the record of the model that was extended, itself an extension no training has touched. Its rows
    are still fresh, so they stay listed (before the new ones), and its base model and size stay the start."""
    from bert_domain_ft.files import write_json_atomic

    if earlier is not None:
        new_ids = {entry["id"] for entry in added}
        added = [entry for entry in earlier["added"] if entry["id"] not in new_ids] + added
        base_model = earlier.get("base_model", base_model)
        vocab_size_before = int(earlier.get("vocab_size_before", vocab_size_before))
    vocab_size = max([vocab_size_before, *(entry["id"] + 1 for entry in added)])
    path = Path(directory) / EXTENSION_RECORD
    record = {"format": RECORD_FORMAT, "base_model": base_model, "vocab_size_before": vocab_size_before,
              "vocab_size": vocab_size, "added": added}  # fmt: skip
    write_json_atomic(path, record)
    return path


def read_record(name_or_path: str | Path | None) -> dict[str, Any] | None:
    """The ``vocabulary_extension.json`` of a model directory (its entries' ids checked to be whole numbers), or
    None when it has none (any model but an untrained ``vocab extend`` output)."""
    path = Path(name_or_path) / EXTENSION_RECORD if name_or_path is not None else None
    if path is None or not path.is_file():
        return None
    record = read_json_object(path, "the one `bert-domain-ft vocab extend` writes")
    try:
        record["added"] = [{**entry, "id": int(entry["id"])} for entry in record["added"]]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: not a vocabulary-extension record; run `bert-domain-ft vocab extend` again") from None
    return record


def fresh_rows(name_or_path: str | Path | None) -> tuple[int, ...]:
    """Ids of the rows a ``vocab extend`` added and no training has touched yet: () for any other model."""
    record = read_record(name_or_path)
    return () if record is None else tuple(sorted(entry["id"] for entry in record["added"]))


def row_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that hold a row per token: input embeddings, untied decoder weight, decoder bias."""
    return [model.get_input_embeddings().weight, *_decoder_tensors(model)]


def partly_trained(model: nn.Module, trained_whole: Sequence[nn.Parameter]) -> list[nn.Parameter]:
    """The row parameters of which only the new rows train: all but those trained whole anyway (the decoder bias
    of a fresh masked-LM head)."""
    whole = {id(parameter) for parameter in trained_whole}
    return [parameter for parameter in row_parameters(model) if id(parameter) not in whole]


@contextmanager
def only_rows_change(
    parameters: Sequence[nn.Parameter], row_ids: Sequence[int], optimizer: torch.optim.Optimizer
) -> Iterator[None]:
    """While inside, only rows ``row_ids`` of ``parameters`` (one row per token each) change under ``optimizer``.

    Gradients of the other rows are zeroed as they are computed (so gradient clipping and Adam's moments see the
    new rows alone), and after every step the other rows are put back bit for bit (decoupled weight decay would
    otherwise shrink them). Costs one copy of each of ``parameters``."""
    keep = [torch.ones(parameter.shape[0], dtype=torch.bool, device=parameter.device) for parameter in parameters]
    for mask in keep:
        mask[list(row_ids)] = False
    saved = [parameter.detach().clone() for parameter in parameters]

    def restore(*_: Any) -> None:
        with torch.no_grad():
            for parameter, copy, mask in zip(parameters, saved, keep):
                parameter[mask] = copy[mask]

    def masker(mask: torch.Tensor) -> Any:
        return lambda grad: grad.masked_fill(mask.view(-1, *([1] * (grad.dim() - 1))), 0)

    handles = [parameter.register_hook(masker(mask)) for parameter, mask in zip(parameters, keep)]
    handles.append(optimizer.register_step_post_hook(restore))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
