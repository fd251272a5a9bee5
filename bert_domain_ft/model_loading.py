"""Loading the model to train or evaluate: a BERT with its pretraining heads, or any ``AutoModelForMaskedLM``.

A BERT loads as ``BertForPreTraining`` whatever the objective (its NSP head is kept, and saved, even when only
masked LM is trained); RoBERTa, XLM-R, DistilBERT, DeBERTa… load as ``AutoModelForMaskedLM``. A head the
checkpoint lacks starts at random and is reported in ``LoadedModel.fresh_heads`` (one warning line), so the
head warm-up applies to it. ``usable_positions`` is how long an input the model takes (RoBERTa: 2 fewer).

    loaded = load_model_for_objective("path/to/roberta", "mlm")
    assert manifest["max_seq_len"] <= usable_positions(loaded.model.config)
"""

from __future__ import annotations

import logging
from typing import Any

from .errors import UserError
from .pretraining_model import MLM_HEAD, LoadedModel, load_pretraining_model, quiet_transformers

logger = logging.getLogger(__name__)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def load_masked_lm_model(name_or_path: str) -> LoadedModel:
    """``AutoModelForMaskedLM`` from a directory or hub id; a head missing from the checkpoint starts fresh."""
    from transformers import AutoModelForMaskedLM

    try:
        with quiet_transformers():
            model, loading_info = AutoModelForMaskedLM.from_pretrained(name_or_path, output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:  # RuntimeError: weights of another shape
        raise UserError(
            f"{name_or_path}: cannot load a masked-LM model ({_first_line(error)}); give a model directory of a "
            "type transformers' AutoModelForMaskedLM knows (BERT, RoBERTa, XLM-R, DistilBERT, DeBERTa…)"
        ) from None
    prefix = f"{model.base_model_prefix}."
    missing = set(loading_info.get("missing_keys", ()))
    fresh = (MLM_HEAD,) if any(not key.startswith(prefix) for key in missing) else ()
    if fresh:
        logger.warning("%s has no trained masked-LM head: initialised at random (normal for encoders)", name_or_path)
    return LoadedModel(model=model, fresh_heads=fresh)


def checkpoint_model_type(name_or_path: str) -> str | None:
    """``model_type`` of a checkpoint's config (None when it has none or cannot be read)."""
    from transformers import AutoConfig

    try:
        with quiet_transformers():
            return str(AutoConfig.from_pretrained(name_or_path).model_type)
    except (OSError, ValueError, KeyError):
        return None


def load_model_for_objective(name_or_path: str, objective: str) -> LoadedModel:
    """The model to train on ``objective`` data ("nsp" or "mlm").

    A BERT is always loaded as ``BertForPreTraining`` (its NSP head, unused by "mlm", is kept and saved), every
    other architecture as ``AutoModelForMaskedLM``; "nsp" needs a BERT.
    """
    model_type = checkpoint_model_type(name_or_path)
    if objective == "nsp" or model_type in (None, "bert"):
        if objective == "nsp" and model_type not in (None, "bert"):
            raise UserError(
                f"{name_or_path}: a {model_type} model has no next-sentence-prediction head but the data was "
                "pregenerated for NSP; pregenerate it again with --objective mlm"
            )
        loaded = load_pretraining_model(name_or_path)
        if objective == "mlm":  # the NSP head is frozen, not trained: it is not a fresh head to warm up
            loaded = LoadedModel(loaded.model, tuple(head for head in loaded.fresh_heads if head == MLM_HEAD))
        return loaded
    return load_masked_lm_model(name_or_path)


def usable_positions(config: Any) -> int:
    """Longest input the model takes: ``max_position_embeddings``, minus the offset of RoBERTa-style models
    whose positions start after the padding id (RoBERTa: 514 embeddings for 512 tokens)."""
    positions = int(config.max_position_embeddings)
    if config.model_type in POSITIONS_AFTER_PADDING:
        return positions - (int(config.pad_token_id or 0) + 1)
    return positions


# Model types whose position ids count from pad_token_id + 1 (create_position_ids_from_input_ids).
POSITIONS_AFTER_PADDING = frozenset(
    {
        "roberta",
        "xlm-roberta",
        "xlm-roberta-xl",
        "camembert",
        "data2vec-text",
        "roberta-prelayernorm",
        "longformer",
        "mpnet",
        "ibert",
        "xmod",
        "luke",
    }
)
