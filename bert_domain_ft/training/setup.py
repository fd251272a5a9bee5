"""Checks that pregenerated data fits the model it is about to train, before the first step.

Token ids only mean something with the vocabulary they were made with, so the manifest's tokenizer facts are
compared with the model's tokenizer; a difference is one ``UserError`` saying which side differs and what to do.

    check_data_matches_model(data_dir, manifest, describe_tokenizer(tokenizer, name), max_positions=512,
                             model_vocab_size=30522)

Which objective a run trains and which model it starts from: a checkpoint of any masked-LM type, or a new one.

``resolve_training_objective`` reconciles --objective with the data ("nsp" needs NSP labels; a model without an
NSP head trains "mlm", said in one line). ``build_training_model`` loads --bert_model for that objective
(``masked_lm.load_model_for_objective``) or, with --from_scratch, builds a --model_type model for --tokenizer
(``model_factory``).

    objective = resolve_training_objective(config, manifest)
    loaded = build_training_model(config, objective, max_seq_len=manifest["max_seq_len"])
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bert_domain_ft.data.epoch_format import MANIFEST_NAME
from bert_domain_ft.errors import UserError
from bert_domain_ft.model.files import FRESH_NSP_HEAD_NOTE, has_trained_nsp_head
from bert_domain_ft.model.loading import build_model_from_scratch, checkpoint_model_type, load_model_for_objective
from bert_domain_ft.model.pretraining import LoadedModel
from bert_domain_ft.model.tokenizer import TokenizerFacts
from bert_domain_ft.training.config import FinetuneConfig

SUPPORTED_OBJECTIVES = ("nsp", "mlm")
SUPPORTED_MASKING = ("static", "dynamic")
_SPECIAL_IDS = ("cls_token_id", "sep_token_id", "mask_token_id", "pad_token_id")


def check_data_matches_model(
    data_dir: Path, manifest: dict[str, Any], model_facts: TokenizerFacts, max_positions: int, model_vocab_size: int
) -> None:
    """Raise ``UserError`` unless the data's tokenizer, sequence length and format suit the model."""
    where = Path(data_dir) / MANIFEST_NAME
    data = manifest["tokenizer"]
    model_name = model_facts.name
    if data["vocab_fingerprint"] != model_facts.vocab_fingerprint:
        raise UserError(
            f"{where}: the data was pregenerated with the vocabulary of {data['name']} ({data['vocab_size']} tokens, "
            f"fingerprint {data['vocab_fingerprint']}) but {model_name} has a different one "
            f"({model_facts.vocab_size} tokens, fingerprint {model_facts.vocab_fingerprint}); pregenerate the data "
            f"again with --bert_model {model_name}"
        )
    if bool(data["do_lower_case"]) != model_facts.do_lower_case:
        data_case = "lower-cased" if data["do_lower_case"] else "cased (not lower-cased)"
        model_case = "lower-cases" if model_facts.do_lower_case else "keeps case"
        raise UserError(
            f"{where}: the data is {data_case} but the tokenizer of {model_name} {model_case}; "
            f"pregenerate the data again with --bert_model {model_name}"
        )
    for name in _SPECIAL_IDS:
        if int(data[name]) != getattr(model_facts, name):
            raise UserError(
                f"{where}: the data uses {name} {data[name]} but the tokenizer of {model_name} uses "
                f"{getattr(model_facts, name)}; pregenerate the data again with --bert_model {model_name}"
            )
    check_lengths(where, manifest, model_name, max_positions, model_vocab_size, model_facts.vocab_size)
    check_format(where, manifest)


def check_tokenizer_matches_model(
    facts: TokenizerFacts, model_name: str | None, model_vocab_size: int, tokenizer_flag: str | None
) -> None:
    """A --tokenizer given beside --bert_model must have exactly the model's vocabulary size: its ids would
    otherwise mean other words to the embeddings (and ids past the last row would crash the model). Not called
    with --from_scratch, where the model is built for the tokenizer."""
    if tokenizer_flag is None or facts.vocab_size == model_vocab_size:
        return
    raise UserError(
        f"--tokenizer {tokenizer_flag}: its vocabulary has {facts.vocab_size} tokens but {model_name}'s embedding "
        f"matrix has {model_vocab_size} rows; use the model's own tokenizer (leave out --tokenizer), extend the "
        "model's vocabulary deliberately (resize its embeddings and save it), or train a new model with --from_scratch"
    )


def check_lengths(
    where: Path, manifest: dict[str, Any], model_name: str, max_positions: int, model_vocab: int, tokenizer_vocab: int
) -> None:
    max_seq_len = int(manifest["max_seq_len"])
    if max_seq_len > max_positions:
        raise UserError(
            f"{where}: the data has max_seq_len {max_seq_len} but {model_name} has only {max_positions} positions "
            f"(max_position_embeddings); pregenerate the data with --max_seq_len {max_positions} or less"
        )
    if tokenizer_vocab > model_vocab:
        raise UserError(
            f"{model_name}: its tokenizer has {tokenizer_vocab} tokens but the model's embedding matrix only "
            f"{model_vocab}; resize the model's embeddings to the tokenizer and save it again"
        )


def check_format(where: Path, manifest: dict[str, Any]) -> None:
    if manifest.get("objective") not in SUPPORTED_OBJECTIVES:
        raise UserError(
            f"{where}: objective {manifest.get('objective')!r} is not one of {SUPPORTED_OBJECTIVES}; "
            "pregenerate the data again with this version"
        )
    if manifest.get("masking") not in SUPPORTED_MASKING:
        raise UserError(
            f"{where}: masking {manifest.get('masking')!r} is not one of {SUPPORTED_MASKING}; "
            "pregenerate the data again with this version"
        )


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
