"""The ``evaluate`` stage, and the held-out sets it and training measure a model on.

``evaluate_model`` loads a model and measures its masked-LM (and NSP) loss on pregenerated data: with ``data``
the held-out set of a pregenerated directory (or one training epoch when ``epoch`` is given); with ``corpus`` the
corpus is pregenerated on the fly into a temporary directory with the fixed ``EVALUATION_SEED``, so two models
evaluated on the same corpus see exactly the same pairs and masks. ``check_model_fits_data`` refuses data whose
token ids or lengths the model cannot take.

The general held-out set (``--general_holdout`` of finetune) is text outside the user's domain, evaluated beside
the domain's to show forgetting: a pregenerated directory (its held-out set, else its first epoch) or a corpus
file pregenerated once, like the domain data (tokenizer, objective, max_seq_len, masking settings) but with the
fixed ``GENERAL_SEED``, into ``output_dir/general_holdout/``, where a later run or ``--resume`` with the same
settings and corpus reuses it. Its metrics are reported under ``heldout.GENERAL_PREFIX`` keys.

    result = evaluate_model(EvaluateConfig(model="finetuned_lm", data=Path("pregenerated")))
    directory = prepare_general_holdout(Path("general.txt"), output_dir, data_manifest, "bert-dir", tokenizer)
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bert_domain_ft.data.config import PregenerateConfig
from bert_domain_ft.data.epoch_format import MANIFEST_NAME, EpochArrays, open_epoch, open_holdout, read_manifest
from bert_domain_ft.data.pregenerate import pregenerate
from bert_domain_ft.errors import UserError
from bert_domain_ft.evaluation.config import EvaluateConfig
from bert_domain_ft.evaluation.heldout import (
    WARMED_BASE_DIRECTORY,
    EvaluationResult,
    corpus_names,
    evaluate_pretraining,
    first_instances,
)
from bert_domain_ft.files import write_json_atomic
from bert_domain_ft.model.loading import checkpoint_model_type, load_model_for_objective, usable_positions
from bert_domain_ft.model.pretraining import LoadedModel
from bert_domain_ft.model.tokenizer import describe_tokenizer, load_tokenizer

logger = logging.getLogger(__name__)

# Fixed so that --corpus evaluations are comparable across models and runs (and fresh heads start the same).
EVALUATION_SEED = 20_240_917


def choose_device(no_cuda: bool) -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and not no_cuda else "cpu")


def check_model_fits_data(
    model: nn.Module, model_name: str, manifest: dict[str, Any], directory: Path, tokenizer: str | None = None
) -> None:
    """The data's token ids must mean the same to the model, and its sequences must fit the model's positions.
    ``tokenizer`` (--tokenizer) replaces the model's own: its vocabulary must have the model's size."""
    data_tokenizer = manifest["tokenizer"]
    try:
        model_facts = describe_tokenizer(load_tokenizer(tokenizer or model_name), tokenizer or model_name)
    except UserError:
        if tokenizer is not None:  # asked for by name: it must load
            raise
        model_facts = None  # a bare checkpoint without tokenizer files: the vocabulary size is all we can check
    if tokenizer is not None and model_facts is not None and model_facts.vocab_size != model.config.vocab_size:
        raise UserError(
            f"--tokenizer {tokenizer}: its vocabulary ({model_facts.vocab_size} tokens) does not match the model's "
            f"({model_name}: {model.config.vocab_size} embeddings); give the tokenizer the model was trained with, "
            "or leave out --tokenizer to use the model's own"
        )
    if model_facts is not None and model_facts.vocab_fingerprint != data_tokenizer["vocab_fingerprint"]:
        if tokenizer is not None:
            raise UserError(
                f"{directory}: pregenerated with the vocabulary of {data_tokenizer['name']}, which differs from "
                f"that of --tokenizer {tokenizer}; give the tokenizer the data was made with as --tokenizer"
            )
        raise UserError(
            f"{directory}: pregenerated with the vocabulary of {data_tokenizer['name']}, which differs from "
            f"{model_name}'s; pregenerate again with --bert_model {model_name}"
        )
    if model.config.vocab_size < data_tokenizer["vocab_size"]:
        raise UserError(
            f"{directory}: token ids reach {data_tokenizer['vocab_size'] - 1} but {model_name} has "
            f"{model.config.vocab_size} embeddings; pregenerate with this model's tokenizer"
        )
    if manifest["max_seq_len"] > usable_positions(model.config):
        raise UserError(
            f"{directory}: sequences of {manifest['max_seq_len']} tokens but {model_name} takes at most "
            f"{usable_positions(model.config)}; pregenerate with a smaller --max_seq_len"
        )


def load_for_evaluation(model_name: str, manifest: dict[str, Any]) -> LoadedModel:
    """A BERT as ``BertForPreTraining`` (NSP metrics on NSP data), any other model as ``AutoModelForMaskedLM``."""
    is_bert = checkpoint_model_type(model_name) in (None, "bert")
    return load_model_for_objective(model_name, manifest["objective"] if is_bert else "mlm")


def _open_evaluation_set(directory: Path, manifest: dict[str, Any], epoch: int | None) -> EpochArrays:
    if epoch is not None:
        return open_epoch(directory, manifest, epoch)
    holdout = open_holdout(directory)
    if holdout is None:
        raise UserError(
            f"{directory}: has no held-out set; pregenerate with --holdout_fraction 0.05, "
            "or evaluate a training epoch with --epoch 0"
        )
    return holdout


def _evaluate_directory(config: EvaluateConfig, directory: Path, epoch: int | None) -> EvaluationResult:
    manifest = read_manifest(directory, flag="--holdout_data")
    evaluation_set = first_instances(_open_evaluation_set(directory, manifest, epoch), config.max_instances)
    torch.manual_seed(EVALUATION_SEED)  # heads missing from the checkpoint start the same way every time
    loaded = load_for_evaluation(config.model, manifest)
    if loaded.fresh_heads:
        logger.warning(
            "the %s head(s) are untrained: their metrics measure a random start; a finetune run from this model keeps "
            "it with its heads trained (encoder unchanged) as RUN/%s: evaluate that for a fair 'before'",
            "/".join(loaded.fresh_heads), WARMED_BASE_DIRECTORY,
        )  # fmt: skip
    check_model_fits_data(loaded.model, config.model, manifest, directory, config.tokenizer)
    device = choose_device(config.no_cuda)
    model = loaded.model.to(device)
    autocast_dtype = torch.bfloat16 if config.bf16 else None
    names = corpus_names(manifest, 0) or None  # several corpora: results per corpus, by name
    return evaluate_pretraining(
        model, evaluation_set, config.batch_size, device, autocast_dtype, config.show_progress, names
    )


def _pregenerate_corpus(
    corpus: Path, model: str, tokenizer: str | None, max_seq_len: int, output_dir: Path, show_progress: bool
) -> None:
    """One epoch of ``corpus`` for ``model`` (or ``tokenizer``), with the fixed ``EVALUATION_SEED``."""
    pregenerate(
        PregenerateConfig(
            train_corpus=corpus,
            output_dir=output_dir,
            bert_model=model,
            tokenizer=tokenizer,
            epochs_to_generate=1,
            holdout_fraction=0.0,  # the whole text is what is evaluated: one epoch, nothing set aside from it
            max_seq_len=max_seq_len,
            seed=EVALUATION_SEED,
            show_progress=show_progress,
        )
    )


def evaluate_model(config: EvaluateConfig) -> EvaluationResult:
    """Evaluate ``config.model`` as the config says; writes ``config.json_output`` when given."""
    if config.data is not None:
        result = _evaluate_directory(config, config.data, config.epoch)
        source = {"data": str(config.data), "set": "holdout" if config.epoch is None else f"epoch {config.epoch}"}
    else:
        with tempfile.TemporaryDirectory(prefix="bert_domain_ft_evaluate_") as temporary:
            assert config.corpus is not None
            directory = Path(temporary) / "pregenerated"
            _pregenerate_corpus(
                config.corpus, config.model, config.tokenizer, config.max_seq_len, directory, config.show_progress
            )
            result = _evaluate_directory(config, directory, epoch=0)
        source = {"corpus": str(config.corpus), "seed": EVALUATION_SEED, "max_seq_len": config.max_seq_len}
    if config.json_output is not None:
        write_json_atomic(config.json_output, {"model": config.model, **source, **result.to_json()})
    return result


GENERAL_HOLDOUT_DIRECTORY = "general_holdout"  # under the run's output_dir, when built from a corpus file
GENERAL_SEED = 12345  # fixed, not the run's --seed: every run is measured on the same general instances
# Settings copied from the domain data's generation record, so both sets are masked and packed alike.
_COPIED_SETTINGS = ("short_seq_prob", "masked_lm_prob", "max_predictions_per_seq", "do_whole_word_mask")


def general_holdout_directory(source: Path, output_dir: Path) -> Path:
    """Where the general instances are read from: ``source`` itself when it is a directory, else the run's copy."""
    return Path(source) if Path(source).is_dir() else Path(output_dir) / GENERAL_HOLDOUT_DIRECTORY


def general_pregenerate_config(
    corpus: Path, directory: Path, data_manifest: dict[str, Any], bert_model: str | None, tokenizer: str | None
) -> PregenerateConfig:
    """One epoch of ``corpus`` made like the domain data (objective, max_seq_len, masking), with a fixed seed."""
    generation = data_manifest.get("generation") or {}
    copied = {key: generation[key] for key in _COPIED_SETTINGS if key in generation}
    return PregenerateConfig(
        train_corpus=Path(corpus),
        output_dir=directory,
        bert_model=bert_model,
        tokenizer=tokenizer,
        objective=data_manifest["objective"],
        no_cross_document=bool(generation.get("no_cross_document", False)) and data_manifest["objective"] == "mlm",
        epochs_to_generate=1,
        holdout_fraction=0.0,  # the whole general text is evaluated: one epoch, nothing set aside from it
        max_seq_len=int(data_manifest["max_seq_len"]),
        seed=GENERAL_SEED,
        show_progress=False,
        **copied,
    )


def prepare_general_holdout(
    source: Path,
    output_dir: Path,
    data_manifest: dict[str, Any],
    bert_model: str | None,
    tokenizer: Any,
    tokenizer_name: str | None = None,
) -> Path:
    """The directory of the general instances; a corpus file is pregenerated there first unless an earlier
    run left it with the same settings and corpus. Call it on the main process only (it writes)."""
    source = Path(source)
    directory = general_holdout_directory(source, output_dir)
    if source.is_dir():
        return directory
    if not source.is_file():
        raise UserError(f"{source}: no such file or directory; give --general_holdout a corpus file or a "
                        "directory written by `bert-domain-ft pregenerate`")  # fmt: skip
    config = general_pregenerate_config(source, directory, data_manifest, bert_model, tokenizer_name)
    name = tokenizer_name or bert_model
    assert name is not None  # the finetune config requires a model or a tokenizer
    record = config.generation_record(describe_tokenizer(tokenizer, name).vocab_fingerprint)
    if (directory / MANIFEST_NAME).is_file() and read_manifest(directory).get("generation") == record:
        logger.info("general held-out set: %s, made by an earlier run with these settings", directory)
        return directory
    logger.info("general held-out set: pregenerating %s into %s", source, directory)
    pregenerate(replace(config, overwrite=directory.exists()))
    return directory


def open_general_holdout(directory: Path, vocab_fingerprint: str, verify_checksum: bool = False) -> EpochArrays:
    """The held-out set of a pregenerated ``directory``, else its first epoch; its vocabulary must be the run's."""
    manifest = read_manifest(directory)
    if manifest["tokenizer"]["vocab_fingerprint"] != vocab_fingerprint:
        raise UserError(
            f"{Path(directory) / MANIFEST_NAME}: --general_holdout was pregenerated with the vocabulary of "
            f"{manifest['tokenizer']['name']}, not the run's; pregenerate it with the run's --bert_model, or give "
            "the corpus file instead"
        )
    holdout = open_holdout(directory, verify_checksum=verify_checksum)
    return holdout if holdout is not None else open_epoch(directory, manifest, 0, verify_checksum=verify_checksum)
