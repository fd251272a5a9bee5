"""Writing a trained model's directory: the one format of a run's final model, ``best/`` and its checkpoints.

``save_model`` writes the ``save_pretrained`` files (safetensors) and the tokenizer. A BERT trained on masked LM
only (``SaveFormat.with_nsp`` False) is written as ``BertForMaskedLM``: the same tensor names without the
next-sentence head ``cls.seq_relationship``, which such a run never trains, so ``AutoModelForMaskedLM`` finds no
key missing and a later ``--objective auto`` does not take an untrained head for a trained one. Its pooler stays
when the base model stored one: masked LM does not train it either, but it is the base's, and the classifiers
fine-tuned from the model read it (a rewritten pooler cost the demo's probe 6.1 points, README), so
``AutoModelForMaskedLM`` names those two tensors as unused, as it does for bert-base-uncased. A pooler the base did
not store (drawn at random on loading) is left out too: the model then loads with no key missing or unexpected.
Runs with NSP, and every other architecture, are written as they are.

The base model's sentence-transformers files (``modules.json``, ``config_sentence_transformers.json``,
``sentence_bert_config.json``, module folders such as ``1_Pooling/``) come along from a local base directory, so
``SentenceTransformer(directory)`` loads the adapted encoder with the base's pooling; a Hub id's are not on disk.
``copy_entries`` is also how ``vocab extend`` copies a model directory's side files. Import is torch-free.

    save_model(model, Path("run"), tokenizer, SaveFormat(with_nsp=False, base_model="path/to/minilm"))
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bert_domain_ft.files import write_text_atomic
from bert_domain_ft.model.files import MODEL_CONFIG_NAME, checkpoint_tensor_names, read_json_object

logger = logging.getLogger(__name__)

NSP_HEAD_PREFIX = "cls.seq_relationship."
POOLER_PREFIX = "bert.pooler."
MASKED_LM_ARCHITECTURE = "BertForMaskedLM"  # BertForPreTraining's tensor names, less the NSP head
SENTENCE_TRANSFORMERS_MODULES = "modules.json"
# Root files of a sentence-transformers model besides modules.json (sentence_bert_config.json and its siblings).
_SENTENCE_TRANSFORMERS_CONFIG = re.compile(r"config_sentence_transformers\.json|sentence_\w+_config\.json")
_TRANSFORMER_MODULE = "sentence_transformers.models.Transformer"  # the encoder itself: what save_pretrained writes
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # "name" or "org/name"


@dataclass(frozen=True)
class SaveFormat:
    """How a run writes its models, decided once per run (the final model, ``best/`` and checkpoints alike)."""

    with_nsp: bool = True
    """False: trained on masked LM only, so a BERT is written as ``BertForMaskedLM`` (no NSP head)."""
    base_model: str | None = None
    """The model the run started from (``--bert_model``): whether it stored a pooler, and its
    sentence-transformers files. None from scratch."""


WHOLE_MODEL = SaveFormat()  # every tensor the model holds, no base files: what a plain save_pretrained writes


def is_hub_id(name: str) -> bool:
    """Whether ``name`` is written as a Hugging Face Hub model id, ``name`` or ``org/name`` (letters, digits, "-",
    "_", "."): what a saved model's card may give as its ``base_model``."""
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name and "--" not in name


def unsaved_parameter_names(model: Any, save_format: SaveFormat) -> set[str]:
    """The ``state_dict`` names of ``model`` that ``save_model`` leaves out (resuming from a checkpoint keeps their
    loaded values): an MLM-only BERT's NSP head, and its pooler when the base did not store one; else none."""
    is_bert_with_nsp_head = hasattr(getattr(model, "cls", None), "seq_relationship") and hasattr(model, "bert")
    if save_format.with_nsp or not is_bert_with_nsp_head:
        return set()
    prefixes = (NSP_HEAD_PREFIX,) if _stores_pooler(save_format.base_model) else (NSP_HEAD_PREFIX, POOLER_PREFIX)
    return {name for name in model.state_dict() if name.startswith(prefixes)}


def _stores_pooler(model: str | None) -> bool:
    """Whether a checkpoint stores a pooler; True where that cannot be told (a Hub id): keeping it loses nothing."""
    names = checkpoint_tensor_names(model)
    return names is None or any(name.endswith("pooler.dense.weight") for name in names)


def save_model(model: Any, directory: Path, tokenizer: Any | None, save_format: SaveFormat) -> None:
    """Write ``model`` (and ``tokenizer``) into the existing ``directory`` in ``save_format`` (module docstring),
    with the base's sentence-transformers files. Call it inside ``kernels.attention.stock_attention(model)``."""
    from bert_domain_ft.model.pretraining import quiet_transformers

    left_out = unsaved_parameter_names(model, save_format)
    with quiet_transformers():
        if left_out:
            state = {name: tensor for name, tensor in model.state_dict().items() if name not in left_out}
            model.save_pretrained(str(directory), state_dict=state)  # safetensors; tied copies are dropped
            _name_architecture(Path(directory), MASKED_LM_ARCHITECTURE)
        else:
            model.save_pretrained(str(directory))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(directory))
    if save_format.base_model is not None and Path(save_format.base_model).is_dir():
        source = Path(save_format.base_model)
        copy_entries(source, Path(directory), sentence_transformers_entries(source))


def _name_architecture(directory: Path, architecture: str) -> None:
    """``save_pretrained`` names the class it was called on; the saved tensors are those of ``architecture``."""
    path = directory / MODEL_CONFIG_NAME
    config = read_json_object(path, "a config.json written by save_pretrained")
    text = json.dumps({**config, "architectures": [architecture]}, indent=2, sort_keys=True)
    write_text_atomic(path, text + "\n")


def sentence_transformers_entries(directory: Path) -> list[str]:
    """Names of the sentence-transformers files and folders of a model directory: ``modules.json``, its config
    files and the folders of its modules (``1_Pooling``…), the encoder's own module (the model's weights) left out;
    [] when it has none, or when its encoder module lives in a folder of its own (its weights, not the run's)."""
    directory = Path(directory)
    folders = _module_folders(directory / SENTENCE_TRANSFORMERS_MODULES)
    if not folders:
        return []
    configs = [entry.name for entry in directory.iterdir() if _SENTENCE_TRANSFORMERS_CONFIG.fullmatch(entry.name)]
    inside = [name for name in folders[1:] if _is_entry_name(name) and (directory / name).is_dir()]
    return [SENTENCE_TRANSFORMERS_MODULES, *sorted(configs), *dict.fromkeys(inside)]


def _module_folders(path: Path) -> list[str]:
    """The folder of each module in ``modules.json``, the encoder's ("": the directory itself) first; [] when the
    file is missing or unreadable, or the encoder is not at the top of the directory."""
    if not path.is_file():
        return []
    try:
        modules = json.loads(path.read_text(encoding="utf-8"))
        encoders = [str(module.get("path", "")) for module in modules if module.get("type") == _TRANSFORMER_MODULE]
        others = [str(module.get("path", "")) for module in modules if module.get("type") != _TRANSFORMER_MODULE]
    except (OSError, ValueError, TypeError, AttributeError):
        logger.warning("%s: not a readable list of modules; the sentence-transformers files are not carried over", path)
        return []
    if encoders != [""]:
        logger.warning("%s: the encoder is not at the top of the directory, where the saved weights go; the "
                       "sentence-transformers files are not carried over", path)  # fmt: skip
        return []
    return ["", *others]


def _is_entry_name(name: str) -> bool:
    """A plain name of an entry of the directory itself (not "", ".", "..", an absolute path or a nested one)."""
    return name not in ("", ".", "..") and Path(name).name == name


def copy_entries(source: Path, target: Path, names: Iterable[str]) -> None:
    """Copy the files and folders ``names`` of ``source`` into ``target`` (folders whole, a link's target's content)."""
    for name in names:
        path = Path(source) / name
        if path.is_dir():
            shutil.copytree(path, Path(target) / name)
        else:
            shutil.copy2(path, Path(target) / name)
