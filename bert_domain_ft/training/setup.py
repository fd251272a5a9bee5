"""Building and checking the pieces of a finetune run: data, model, optimizer and schedule, evaluation.

Pregenerated data is opened (data in the original JSON format converted once), checked epoch by epoch, and
served by a ``PregeneratedSource`` (dynamic masks, several corpora mixed). Token ids only mean something with the
vocabulary they were made with, so the manifest's tokenizer facts, sequence length and format are compared with
the model's before the first step; a difference is one ``UserError`` saying which side differs and what to do.
``resolve_training_objective`` reconciles --objective with the model's heads and the data ("nsp" needs NSP labels;
a model without a trained NSP head trains "mlm"), for finetune and simple alike, in one log line, and
``build_training_model`` loads --bert_model for it or, with --from_scratch, builds a --model_type model for
--tokenizer. The optimizer and schedule, and the held-out
evaluator the loop calls, are built from the values they use (``OptimizationSettings``, ``settings_from``).
``resume_identity`` fingerprints the training data and the held-out sets for the checkpoints, so ``--resume``
refuses data regenerated or swapped since the run began.

    objective = resolve_training_objective(config, manifest["objective"], config.pregenerated_data)
    loaded = build_training_model(config, objective, max_seq_len=manifest["max_seq_len"])
    check_data_matches_model(data_dir, manifest, facts, usable_positions(loaded.model.config), vocab_size)
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bert_domain_ft.data.epoch_format import (
    EPOCH_DESCRIPTION_NAME,
    MANIFEST_NAME,
    epoch_directory_name,
    open_epoch,
    open_holdout,
    read_manifest,
)
from bert_domain_ft.data.legacy_format import convert_legacy_directory, is_legacy_directory
from bert_domain_ft.data.loader import (
    CorpusMixing,
    PregeneratedSource,
    micro_batches_per_epoch,
    optimizer_steps_per_epoch,
)
from bert_domain_ft.data.masking import DynamicMasking
from bert_domain_ft.errors import UserError
from bert_domain_ft.evaluation.evaluate import general_holdout_directory, open_general_holdout, prepare_general_holdout
from bert_domain_ft.evaluation.heldout import manifest_evaluator, open_holdout_data, with_general
from bert_domain_ft.model.files import FRESH_NSP_HEAD_NOTE, has_trained_nsp_head
from bert_domain_ft.model.loading import build_model_from_scratch, checkpoint_model_type, load_model_for_objective
from bert_domain_ft.model.optimization import (
    build_optimizer,
    build_scheduler,
    layerwise_lr_multiplier,
    parameter_groups,
    warmup_steps_for,
)
from bert_domain_ft.model.pretraining import LoadedModel
from bert_domain_ft.model.tokenizer import TokenizerFacts, describe_tokenizer
from bert_domain_ft.training.checkpoints import data_identity
from bert_domain_ft.training.config import FinetuneConfig
from bert_domain_ft.training.distributed import DistributedContext, barrier
from bert_domain_ft.training.loop import Evaluator

logger = logging.getLogger(__name__)

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
    _check_lengths(where, manifest, model_name, max_positions, model_vocab_size, model_facts.vocab_size)
    _check_format(where, manifest)


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


def _check_lengths(
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


def _check_format(where: Path, manifest: dict[str, Any]) -> None:
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


def resolve_training_objective(config: FinetuneConfig, data_objective: str, data_name: Path | str) -> str:
    """The objective to train, "nsp" or "mlm", decided for finetune and simple alike from --objective, the model's
    heads and what the data can give (``data_objective``: "nsp" when it has next-sentence labels, as simple's pairs
    always do; ``data_name`` names it in a refusal); says what was chosen and why in one line."""
    objective, why = _choose_objective(config, data_objective, data_name)
    label = "masked LM + next-sentence prediction" if objective == "nsp" else "masked LM only"
    fresh_nsp_head = objective == "nsp" and _has_fresh_nsp_head(config)
    (logger.warning if fresh_nsp_head else logger.info)("objective: %s (%s)", label, why)
    return objective


def _has_fresh_nsp_head(config: FinetuneConfig) -> bool:
    return not config.from_scratch and has_trained_nsp_head(config.bert_model) is False


def _choose_objective(config: FinetuneConfig, data_objective: str, data_name: Path | str) -> tuple[str, str]:
    """(objective, the reason said in the log line)."""
    model = config.bert_model
    if config.objective == "nsp" and data_objective != "nsp":
        raise UserError(
            f"{data_name}: pregenerated for --objective {data_objective}, without next-sentence labels; drop "
            "--objective nsp, or pregenerate with --objective nsp"
        )
    if config.objective == "nsp" and _has_fresh_nsp_head(config):
        return "nsp", f"--objective nsp with {model}: {FRESH_NSP_HEAD_NOTE}"
    if config.objective != "auto":
        return config.objective, f"--objective {config.objective}"
    if data_objective == "mlm":
        return "mlm", f"--objective auto: {data_name} has no next-sentence labels"
    model_type = config.model_type if config.from_scratch else checkpoint_model_type(str(model))
    if model_type not in (None, "bert"):
        return "mlm", f"--objective auto: a {model_type} model has no next-sentence-prediction head"
    if _has_fresh_nsp_head(config):  # the data's NSP labels are left unused; --objective nsp trains them
        return "mlm", f"--objective auto: {model}: {FRESH_NSP_HEAD_NOTE}; --objective nsp trains it anyway"
    if config.from_scratch:
        return "nsp", "--objective auto: the data has next-sentence labels and a new BERT learns both heads"
    return "nsp", f"--objective auto: the data has next-sentence labels and {model} a trained NSP head"


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


# ---------------------------------------------------------------------------------------------------- the data


def open_training_data(
    data_dir: Path, context: DistributedContext, tokenizer: Any, facts: TokenizerFacts, show_progress: bool
) -> tuple[Path, dict[str, Any]]:
    """The memmap data directory and its manifest; data in the original JSON format is converted first (once)."""
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: no such directory; give the output directory of `bert-domain-ft pregenerate`")
    if is_legacy_directory(data_dir):
        if context.is_main:
            convert_legacy_directory(data_dir, tokenizer, facts, show_progress=show_progress)
        barrier(context)
        data_dir = convert_legacy_directory(data_dir, tokenizer, facts, show_progress=False)
    return data_dir, read_manifest(data_dir)


def check_epochs(data_dir: Path, manifest: dict[str, Any], epochs: int, verify: bool) -> None:
    """Every epoch gets the fast size/shape/dtype/value-range check up front (a truncated or altered file is refused
    before training); ``verify`` also compares each array's SHA-256 with its epoch.json (reads all the data once).
    Called after the manifest was checked against the model, whose message says more about data made for another
    model than an array/manifest mismatch would."""
    for index in range(min(len(manifest["epochs"]), epochs)):
        open_epoch(data_dir, manifest, index, verify_checksum=verify)
    if verify:
        logger.info("%s: checksums verified", data_dir / MANIFEST_NAME)


def pregenerated_source(
    data_dir: Path, manifest: dict[str, Any], config: FinetuneConfig, tokenizer: Any, world_size: int
) -> PregeneratedSource:
    """The training epochs: masked per batch from the seed when the data has no fixed masks (resumable, fresh every
    epoch); several corpora drawn by their sampling probabilities, per optimizer step of all processes."""
    masking = None
    if manifest["masking"] == "dynamic":
        masking = DynamicMasking.from_manifest(manifest, seed=config.seed, tokenizer=tokenizer)
    global_batch_size = config.train_batch_size * world_size
    mixing = CorpusMixing(config.seed, global_batch_size, config.batch_from_one_corpus)
    epochs, budget = training_epochs_read(manifest, config, world_size), f"--max_steps {config.max_steps}"
    return PregeneratedSource(data_dir, manifest, epochs, masking=masking, mixing=mixing,
                              budget=budget if config.max_steps else None)  # fmt: skip


def training_epochs_read(manifest: dict[str, Any], config: FinetuneConfig, world_size: int) -> int:
    """The training epochs a run reads: --epochs, or under --max_steps (which ignores --epochs) those its steps
    reach into, the data's epochs read in turn."""
    if not config.max_steps:
        return config.epochs
    steps = [
        optimizer_steps_per_epoch(
            micro_batches_per_epoch(int(epoch["num_instances"]), config.micro_batch_size, world_size),
            config.gradient_accumulation_steps,
        )
        for epoch in manifest["epochs"]
    ]
    cycles, rest = divmod(config.max_steps, max(sum(steps), 1))
    ends = [sum(steps[: index + 1]) for index in range(len(steps))]
    return cycles * len(steps) + (next(index + 1 for index, end in enumerate(ends) if end >= rest) if rest else 0)


# -------------------------------------------------------------------------------------- optimizer and schedule


@dataclass(frozen=True)
class OptimizationSettings:
    """What the main optimizer and its schedule are built from (``settings_from(OptimizationSettings, config)``)."""

    learning_rate: float
    weight_decay: float = 0.01
    adam_epsilon: float = 1e-8
    warmup_proportion: float = 0.1
    warmup_steps: int | None = None  # the ramp in steps; replaces warmup_proportion when given
    layerwise_lr_decay: float = 1.0  # 1.0: one rate for every layer


def build_optimization(
    model: torch.nn.Module, settings: OptimizationSettings, total_steps: int, device: torch.device
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over the decay / no-decay groups and the learning-rate ramp + linear-decay schedule over
    ``total_steps`` (the main phase's)."""
    multiplier = None
    if settings.layerwise_lr_decay < 1.0:
        multiplier = layerwise_lr_multiplier(model, settings.layerwise_lr_decay)
        logger.info("layer-wise learning rates: × %g per layer below the top (embeddings × %.3g)",
                    settings.layerwise_lr_decay, multiplier("bert.embeddings.word_embeddings.weight"))  # fmt: skip
    groups = parameter_groups(model, settings.learning_rate, settings.weight_decay, lr_multiplier=multiplier)
    optimizer = build_optimizer(groups, settings.learning_rate, settings.adam_epsilon, device)
    warmup_steps = warmup_steps_for(total_steps, settings.warmup_proportion, settings.warmup_steps)
    ramp = (f"--warmup_steps {settings.warmup_steps}" if settings.warmup_steps is not None
            else f"--warmup_proportion {settings.warmup_proportion:g}")  # fmt: skip
    logger.info("learning-rate ramp: the first %d of the %d main steps (%s), then linear decay",
                warmup_steps, total_steps, ramp)  # fmt: skip
    return optimizer, build_scheduler(optimizer, total_steps, warmup_steps)


# ------------------------------------------------------------------------------------------------ evaluation


def build_evaluation(
    config: FinetuneConfig, context: DistributedContext, data_dir: Path, tokenizer: Any
) -> Evaluator | None:
    """The evaluator called by the loop before the first step, every --eval_steps and at the end, or None.

    The held-out set is the pregenerated ``holdout/`` (or ``--holdout_data``); with --general_holdout, general
    text is evaluated too (``general_*`` keys).
    """
    if not config.do_eval:
        return None
    dtype = torch.bfloat16 if config.bf16 else torch.float16 if config.fp16 else None
    evaluate = None
    if config.holdout_data is not None:  # named by the user: it must hold a held-out set of the data's vocabulary
        vocabulary = read_manifest(data_dir)["tokenizer"]["vocab_fingerprint"]
        holdout = open_holdout_data(config.holdout_data, vocabulary, verify_checksum=config.verify_checksums)
    else:
        holdout = open_holdout(data_dir, verify_checksum=config.verify_checksums)
    if holdout is not None:
        evaluate = manifest_evaluator(
            holdout, config.holdout_data or data_dir, config.eval_batch_size, context.device, dtype
        )
    if config.general_holdout is None:
        return evaluate
    if context.is_main:  # a corpus file is pregenerated once, by rank 0; the others wait for it
        prepare_general_holdout(config.general_holdout, config.output_dir, read_manifest(data_dir),
                                config.bert_model, tokenizer, config.tokenizer)  # fmt: skip
    barrier(context)
    directory = general_holdout_directory(config.general_holdout, config.output_dir)
    fingerprint = describe_tokenizer(tokenizer, str(config.tokenizer or config.bert_model)).vocab_fingerprint
    general = open_general_holdout(directory, fingerprint, verify_checksum=config.verify_checksums)
    return with_general(evaluate, manifest_evaluator(general, directory, config.eval_batch_size, context.device, dtype))


# ------------------------------------------------------------------------------------------- what --resume checks


def _arrays_record(directory: Path) -> Any:
    """An epoch's (or held-out set's) ``arrays`` record in its epoch.json: per array, shape, dtype and the SHA-256
    of its data; None when unreadable (opening the epoch reports that)."""
    try:
        return json.loads((directory / EPOCH_DESCRIPTION_NAME).read_text(encoding="utf-8"))["arrays"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None


def _fingerprint(value: Any) -> str:
    digest = hashlib.blake2b(json.dumps(value, sort_keys=True).encode("utf-8"), digest_size=16)
    return f"blake2b-128:{digest.hexdigest()}"


def training_data_fingerprint(data_dir: Path, manifest: dict[str, Any]) -> str:
    """What training reads from a pregenerated directory: the SHA-256 of every epoch's arrays (from the epoch.json
    files, so nothing is re-read) and the manifest's fields that shape the batches. Paths are left out: the same
    data moved elsewhere keeps its fingerprint, data regenerated from another corpus or seed does not."""
    generation = manifest.get("generation") or {}
    shaping = {key: manifest.get(key) for key in ("objective", "masking", "max_seq_len", "max_predictions_per_seq")}
    shaping["vocab_fingerprint"] = manifest["tokenizer"]["vocab_fingerprint"]
    shaping["dynamic_masks"] = [generation.get("masked_lm_prob"), generation.get("do_whole_word_mask")]
    shaping["corpora"] = [
        [corpus.get("name"), corpus.get("sampling_probability")] for corpus in manifest.get("corpora") or []
    ]
    epochs = [_arrays_record(Path(data_dir) / epoch_directory_name(index)) for index in range(len(manifest["epochs"]))]
    return _fingerprint({"shaping": shaping, "epochs": epochs})


def resume_identity(config: FinetuneConfig, data_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The data a finetune checkpoint records for ``--resume`` to compare (``checkpoints.data_identity``): the
    training data, the held-out set and the general held-out set evaluated (None when there is none). Call it
    after ``build_evaluation``, which makes the general held-out set of a corpus file."""
    identity: dict[str, Any] = {
        "pregenerated_data": data_identity(
            config.pregenerated_data.absolute(), training_data_fingerprint(data_dir, manifest)
        ),
        "holdout_data": None,
        "general_holdout": None,
    }
    if not config.do_eval:
        return identity
    source = config.holdout_data or data_dir
    holdout = open_holdout(source)
    if holdout is not None:
        identity["holdout_data"] = data_identity(source.absolute(), _fingerprint(_arrays_record(holdout.directory)))
    if config.general_holdout is not None:
        directory = general_holdout_directory(config.general_holdout, config.output_dir)
        general = open_general_holdout(directory, manifest["tokenizer"]["vocab_fingerprint"])
        identity["general_holdout"] = data_identity(
            config.general_holdout.absolute(), _fingerprint(_arrays_record(general.directory))
        )
    return identity
