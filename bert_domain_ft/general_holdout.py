"""The general held-out set: text outside the user's domain, evaluated beside the domain's to show forgetting.

``--general_holdout`` names either a pregenerated directory (its held-out set is used, else its first epoch) or a
corpus file, which is pregenerated once by the pregeneration library, with the run's tokenizer, objective,
max_seq_len and masking settings and a fixed seed, into ``output_dir/general_holdout/`` (one epoch of all its
documents, static masks). A later run or ``--resume`` with the same settings and corpus reuses it. Its metrics
are reported under ``evaluation.GENERAL_PREFIX`` keys (``with_general``).

    directory = prepare_general_holdout(Path("general.txt"), output_dir, data_manifest, "bert-dir", tokenizer)
    instances = open_general_holdout(directory)
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from .epoch_format import MANIFEST_NAME, EpochArrays, open_epoch, open_holdout, read_manifest
from .errors import UserError
from .pregenerate import pregenerate
from .pregenerate_config import PregenerateConfig
from .tokenization import describe_tokenizer

logger = logging.getLogger(__name__)

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
