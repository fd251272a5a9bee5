"""Loading the model to train or evaluate: a BERT with its pretraining heads, or any ``AutoModelForMaskedLM``.

A BERT loads as ``BertForPreTraining`` whatever the objective (its NSP head is kept, and saved, even when only
masked LM is trained); RoBERTa, XLM-R, DistilBERT, DeBERTa… load as ``AutoModelForMaskedLM``. A head the
checkpoint lacks starts at random and is reported in ``LoadedModel.fresh_heads`` (one warning line), so the
head warm-up applies to it. ``usable_positions`` is how long an input the model takes (RoBERTa: 2 fewer).

Every load of a local directory first goes through ``check_model_files``: a ``config.json`` that is not JSON
(named with line:column) or a ``*.safetensors`` file cut short is one ``UserError`` line, never a traceback from
deep inside transformers or safetensors. The safetensors check reads only the header (8-byte little-endian
length, then JSON with each tensor's byte range), so it costs microseconds whatever the model's size.

    loaded = load_model_for_objective("path/to/roberta", "mlm")
    assert manifest["max_seq_len"] <= usable_positions(loaded.model.config)
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path
from typing import Any

from .errors import UserError
from .model_files import read_model_config
from .pretraining_model import MLM_HEAD, LoadedModel, load_pretraining_model, quiet_transformers

logger = logging.getLogger(__name__)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def safetensors_problem(path: Path) -> str | None:
    """Why a ``.safetensors`` file cannot be whole (None when its header and size agree).

    Layout: an 8-byte little-endian header length N, N bytes of JSON mapping each tensor to its
    ``data_offsets`` [begin, end) counted from the byte after the header, then the data."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as file:
            prefix = file.read(8)
            if len(prefix) < 8:
                return f"{size} bytes, shorter than the 8-byte header length"
            (header_bytes,) = struct.unpack("<Q", prefix)
            if header_bytes > size - 8:
                return f"its header says {header_bytes} bytes but only {size - 8} follow"
            header = json.loads(file.read(header_bytes).decode("utf-8"))
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "its header is not valid JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    try:
        data_end = max((int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"),
                       default=0)  # fmt: skip
    except (TypeError, KeyError, IndexError, ValueError):
        return "its header lists tensors without valid data_offsets"
    expected = 8 + header_bytes + data_end
    if size < expected:
        return f"{size} bytes but its header describes {expected}"
    return None


def check_model_files(name_or_path: str | Path) -> None:
    """Refuse, in one line, a local model directory whose ``config.json`` is not JSON or whose safetensors
    weights are damaged or cut short (a hub id or a missing directory is left to the loader to report)."""
    directory = Path(name_or_path)
    if not directory.is_dir():
        return
    read_model_config(directory)
    for path in sorted(directory.glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem is not None:
            raise UserError(
                f"{path}: damaged or truncated ({problem}); re-download the model or save it again (save_pretrained)"
            )


def load_masked_lm_model(name_or_path: str) -> LoadedModel:
    """``AutoModelForMaskedLM`` from a directory or hub id; a head missing from the checkpoint starts fresh."""
    from transformers import AutoModelForMaskedLM

    check_model_files(name_or_path)
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
    """``model_type`` of a checkpoint's config (None when it has none or cannot be found); a local config.json
    that is not JSON is a ``UserError`` (see ``read_model_config``)."""
    from transformers import AutoConfig

    read_model_config(name_or_path)
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
    check_model_files(name_or_path)
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
