"""Which objective a run trains and which model it starts from: a checkpoint of any masked-LM type, or a new one.

``resolve_training_objective`` reconciles --objective with the data ("nsp" needs NSP labels; a model without an
NSP head trains "mlm", said in one line). ``build_training_model`` loads --bert_model for that objective
(``masked_lm.load_model_for_objective``) or, with --from_scratch, builds a --model_type model for --tokenizer
(``model_factory``).

    objective = resolve_training_objective(config, manifest)
    loaded = build_training_model(config, objective, max_seq_len=manifest["max_seq_len"])
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import UserError
from ..model_factory import build_model_from_scratch
from ..model_files import FRESH_NSP_HEAD_NOTE, has_trained_nsp_head
from ..model_loading import checkpoint_model_type, load_model_for_objective
from ..pretraining_model import LoadedModel
from .config import FinetuneConfig

logger = logging.getLogger(__name__)


def resolve_training_objective(config: FinetuneConfig, manifest: dict[str, Any]) -> str:
    """The objective to train, "nsp" or "mlm": --objective when given (checked against the data), else the
    data's own, or "mlm" with a one-line notice when the data has NSP labels but the model has no NSP head."""
    data_objective = manifest["objective"]
    if config.objective == "nsp" and data_objective != "nsp":
        raise UserError(
            f"{config.pregenerated_data}: pregenerated for --objective {data_objective}, without next-sentence "
            "labels; drop --objective nsp, or pregenerate with --objective nsp"
        )
    fresh_nsp_head = not config.from_scratch and has_trained_nsp_head(config.bert_model) is False
    if config.objective != "auto":
        if config.objective == "nsp" and fresh_nsp_head:
            logger.warning("--objective nsp with %s: %s", config.bert_model, FRESH_NSP_HEAD_NOTE)
        return config.objective
    if data_objective == "mlm":
        return "mlm"
    model_type = config.model_type if config.from_scratch else checkpoint_model_type(str(config.bert_model))
    if model_type not in (None, "bert"):
        logger.info("objective: masked LM only (a %s model has no next-sentence-prediction head)", model_type)
        return "mlm"
    if fresh_nsp_head:  # the data's NSP labels are left unused; --objective nsp trains them
        logger.info("objective: masked LM only: %s; --objective nsp trains it anyway", FRESH_NSP_HEAD_NOTE)
        return "mlm"
    return "nsp"


def build_training_model(config: FinetuneConfig, objective: str, max_seq_len: int) -> LoadedModel:
    """--bert_model loaded for ``objective``, or with --from_scratch a new --model_type model (on the CPU)."""
    if not config.from_scratch:
        assert config.bert_model is not None  # the config requires it without --from_scratch
        return load_model_for_objective(config.bert_model, objective)
    assert config.model_type is not None and config.tokenizer is not None  # required with --from_scratch
    model = build_model_from_scratch(
        config.model_type, config.tokenizer, config.config_overrides, max_seq_len, with_nsp_head=objective == "nsp"
    )
    return LoadedModel(model=model, fresh_heads=())  # everything is new: no head to warm up on its own first
