"""Loading the model to train or evaluate (a BERT with its pretraining heads, or any ``AutoModelForMaskedLM``),
or building a new one from scratch.

A BERT loads as ``BertForPreTraining`` whatever the objective (its NSP head and pooler are kept; a masked-LM-only
run saves it as ``BertForMaskedLM``, see ``saving``); RoBERTa, XLM-R, DistilBERT, DeBERTa… load as
``AutoModelForMaskedLM``. A head the checkpoint lacks starts at random and is reported in
``LoadedModel.fresh_heads`` (one warning line), so the head warm-up applies to it. ``usable_positions`` is how
long an input the model takes (RoBERTa: 2 fewer).
Every load of a local directory first goes through ``check_model_files``: a ``config.json`` that is not JSON
(named with line:column) or a ``*.safetensors`` file cut short is one ``UserError`` line, never a traceback from
deep inside transformers or safetensors (the safetensors check reads only the header: microseconds).

``build_model_from_scratch`` makes a randomly initialised masked-LM model of any type: the configuration starts
from transformers' defaults for ``model_type``; the tokenizer fixes the vocabulary size and the special ids,
``max_seq_len`` the position table (plus the padding offset of RoBERTa-style models), and ``config_overrides``
("hidden_size=256,num_hidden_layers=4") everything else, checked before any weight is allocated (unknown keys
named with the closest valid one, sizes positive, dropouts in [0, 1), heads dividing the hidden size).

    loaded = load_model_for_objective("path/to/roberta", "mlm")
    assert manifest["max_seq_len"] <= usable_positions(loaded.model.config)
    model = build_model_from_scratch("roberta", "tok/", "hidden_size=256,num_hidden_layers=4", max_seq_len=128)
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import re
import struct
from pathlib import Path
from typing import Any

from bert_domain_ft.errors import UserError, first_line
from bert_domain_ft.model.files import check_model_path, read_model_config
from bert_domain_ft.model.pretraining import MLM_HEAD, LoadedModel, load_pretraining_model, quiet_transformers
from bert_domain_ft.model.tokenizer import describe_tokenizer, load_tokenizer

logger = logging.getLogger(__name__)


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


def pickled_weights_problem(path: Path) -> str | None:
    """Why a ``pytorch_model.bin`` cannot be loaded safely (None when it can): its pickle is read as
    ``from_pretrained`` will read it, ``weights_only=True``, tensors mapped to the ``meta`` device (memory-mapped:
    no weight is read). A pickle that names any other Python object (``argparse.Namespace``, a model class) could
    run code when loaded, and is refused; so is a damaged file."""
    import torch

    try:
        torch.load(path, map_location="meta", weights_only=True, mmap=_is_zip(path))
    except Exception as error:  # noqa: BLE001 - torch raises pickle's UnpicklingError (the package imports no pickle)
        refused = type(error).__name__ == "UnpicklingError" and "Weights only load failed" in str(error)
        if refused:
            named = _UNSAFE_GLOBAL.search(str(error))
            return (
                f"holds pickled Python objects, not only tensors{f' (it names {named[1]})' if named else ''}, and "
                "cannot be loaded safely; convert it to safetensors where its source is trusted (load the model "
                "there and save_pretrained, which writes model.safetensors), or use the model's model.safetensors"
            )
        return f"damaged or truncated ({first_line(error)[:200]}); re-download the model or save it again"
    return None


def _is_zip(path: Path) -> bool:
    """Whether ``path`` is torch's zip format (memory-mappable), not the legacy pickle stream."""
    with open(path, "rb") as file:
        return file.read(4) == b"PK\x03\x04"


_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # "Unsupported global: GLOBAL argparse.Namespace was not allowed"


def check_model_files(name_or_path: str | Path) -> None:
    """Refuse, in one line, a local model directory whose ``config.json`` is not JSON, whose safetensors
    weights are damaged or cut short, or whose pickled weights (``*.bin``, read only where no safetensors file
    exists, as transformers does) hold more than tensors; a path that is no directory is refused too (a Hub id is
    left to the loader to report)."""
    check_model_path(name_or_path)
    directory = Path(name_or_path)
    if not directory.is_dir():
        return
    read_model_config(directory)
    safetensors = sorted(directory.glob("*.safetensors"))
    for path in safetensors:
        problem = safetensors_problem(path)
        if problem is not None:
            raise UserError(
                f"{path}: damaged or truncated ({problem}); re-download the model or save it again (save_pretrained)"
            )
    for path in [] if safetensors else sorted(directory.glob("pytorch_model*.bin")):
        problem = pickled_weights_problem(path)
        if problem is not None:
            raise UserError(f"{path}: {problem}")


def load_masked_lm_model(name_or_path: str) -> LoadedModel:
    """``AutoModelForMaskedLM`` from a directory or hub id; a head missing from the checkpoint starts fresh."""
    from transformers import AutoModelForMaskedLM

    check_model_files(name_or_path)
    try:
        with quiet_transformers():
            model, loading_info = AutoModelForMaskedLM.from_pretrained(name_or_path, output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:  # RuntimeError: weights of another shape
        raise UserError(
            f"{name_or_path}: cannot load a masked-LM model ({first_line(error)}); give a model directory of a "
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

    A BERT is always loaded as ``BertForPreTraining`` (its NSP head, unused by "mlm", is kept, not saved), every
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


FLAG = "--config_overrides"
# Integer settings that size the network: they must be at least 1 (names across BERT, DistilBERT, ALBERT…).
_SIZE_KEYS = frozenset(
    {"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "max_position_embeddings"}
    | {"vocab_size", "embedding_size", "dim", "hidden_dim", "n_layers", "n_heads", "num_hidden_groups"}
)
# Set from the tokenizer: an override would make the model disagree with its data.
_TOKENIZER_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id")


def parse_overrides(text: str) -> dict[str, str]:
    """``"a=1,b=x"`` → ``{"a": "1", "b": "x"}`` (spaces around items ignored; an empty string gives ``{}``)."""
    values: dict[str, str] = {}
    for item in (piece.strip() for piece in text.split(",")):
        if not item:
            continue
        key, separator, value = (part.strip() for part in item.partition("="))
        if not separator or not key or not value:
            raise UserError(f'{FLAG}: {item!r} is not KEY=VALUE; write e.g. "hidden_size=256,num_hidden_layers=4"')
        if key in values:
            raise UserError(f"{FLAG}: {key} is given twice; keep one")
        values[key] = value
    return values


def _convert(key: str, raw: str, default: Any) -> Any:
    """The override's value with the type of the default's value (strings stay strings)."""
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return raw.lower() in ("true", "1")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        kind = "true or false" if isinstance(default, bool) else type(default).__name__
        raise UserError(f"{FLAG}: {key}={raw} is not a valid value; {key} takes {kind} (default {default})") from None
    if default is None:  # no type to follow: a number when it reads as one
        for number in (int, float):
            try:
                return number(raw)
            except ValueError:
                pass
    return raw


def _valid_keys(config: Any) -> list[str]:
    fields = [field.name for field in dataclasses.fields(config)] if dataclasses.is_dataclass(config) else []
    keys = set(fields) | set(config.to_dict()) | set(getattr(config, "attribute_map", {}))
    return sorted(key for key in keys if not key.startswith("_"))


def _check_value(key: str, value: Any, default: Any) -> None:
    from transformers.activations import ACT2FN

    if isinstance(default, str) and default in ACT2FN and value not in ACT2FN:
        choices = ", ".join(sorted(name for name in ACT2FN if "gelu" in name or name in ("relu", "silu")))
        raise UserError(f"{FLAG}: {key}={value} is not an activation transformers knows; choose one of {choices}")
    if key in _SIZE_KEYS and (not isinstance(value, int) or value < 1):
        raise UserError(f"{FLAG}: {key}={value} must be a positive whole number")
    if ("dropout" in key or key.endswith("_prob")) and isinstance(value, (int, float)) and not 0 <= value < 1:
        raise UserError(f"{FLAG}: {key}={value} must be in [0, 1) (a probability; BERT uses 0.1)")


def typed_overrides(config: Any, text: str) -> dict[str, Any]:
    """The parsed, typed and checked overrides for ``config`` (a default config of the chosen type)."""
    valid = _valid_keys(config)
    typed: dict[str, Any] = {}
    for key, raw in parse_overrides(text).items():
        if key not in valid:
            closest = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
            hint = f"; did you mean {closest[0]}?" if closest else ""
            raise UserError(f"{FLAG}: {key} is not a {config.model_type} setting{hint}")
        if key in _TOKENIZER_KEYS:
            raise UserError(f"{FLAG}: {key} comes from the tokenizer (--tokenizer); drop it from the overrides")
        default = getattr(config, key, None)
        typed[key] = _convert(key, raw, default)
        _check_value(key, typed[key], default)
    return typed


def _config_class(model_type: str) -> Any:
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        known = sorted(MODEL_FOR_MASKED_LM_MAPPING_NAMES)
        closest = difflib.get_close_matches(model_type, known, n=1, cutoff=0.0)
        reason = "has no masked-LM model in transformers" if model_type in CONFIG_MAPPING else "is not a model type"
        hint = f"; did you mean {closest[0]}?" if closest else ""
        raise UserError(f"--model_type {model_type} {reason}{hint} (e.g. bert, roberta, distilbert, deberta-v2)")
    return CONFIG_MAPPING[model_type]


def _tokenizer_settings(config: Any, tokenizer: Any, facts: Any, max_seq_len: int) -> dict[str, Any]:
    """Vocabulary size, special ids and positions that make the model fit the tokenizer and the data."""
    settings: dict[str, Any] = {"vocab_size": facts.vocab_size, "pad_token_id": facts.pad_token_id}
    special = {
        "bos_token_id": getattr(tokenizer, "bos_token_id", None),
        "eos_token_id": getattr(tokenizer, "eos_token_id", None),
        "cls_token_id": facts.cls_token_id,
        "sep_token_id": facts.sep_token_id,
    }
    valid = set(_valid_keys(config))
    settings.update({key: value for key, value in special.items() if key in valid and value is not None})
    offset = facts.pad_token_id + 1 if config.model_type in POSITIONS_AFTER_PADDING else 0
    settings["max_position_embeddings"] = max_seq_len + offset
    return settings


def _check_combination(config: Any, tokenizer_vocab: int, needed_positions: int) -> None:
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if isinstance(hidden, int) and isinstance(heads, int) and hidden % heads:
        raise UserError(
            f"{FLAG}: hidden_size {hidden} is not divisible by num_attention_heads {heads}; "
            f"choose e.g. num_attention_heads={_divisor_near(hidden, heads)}"
        )
    if config.vocab_size < tokenizer_vocab:
        raise UserError(f"{FLAG}: vocab_size {config.vocab_size} is smaller than the tokenizer's {tokenizer_vocab}")
    if config.max_position_embeddings < needed_positions:
        raise UserError(
            f"{FLAG}: max_position_embeddings {config.max_position_embeddings} is too small for sequences of the "
            f"data; it needs at least {needed_positions}"
        )


def _divisor_near(number: int, target: int) -> int:
    divisors = [value for value in range(1, number + 1) if number % value == 0]
    return min(divisors, key=lambda value: (abs(value - target), value))


def scratch_config(model_type: str, tokenizer_dir: str, config_overrides: str = "", max_seq_len: int = 512) -> Any:
    """The checked ``PretrainedConfig`` of a new ``model_type`` model for the tokenizer in ``tokenizer_dir``."""
    config_class = _config_class(model_type)
    tokenizer = load_tokenizer(tokenizer_dir)
    facts = describe_tokenizer(tokenizer, tokenizer_dir)
    defaults = config_class()
    settings = _tokenizer_settings(defaults, tokenizer, facts, max_seq_len)
    needed_positions = settings["max_position_embeddings"]
    settings.update(typed_overrides(defaults, config_overrides))
    try:
        config = config_class(**settings)
        if hasattr(config, "validate"):
            config.validate()
    except Exception as error:  # transformers' own validation: TypeError, ValueError, strict-dataclass errors
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[-1].strip()
        raise UserError(f"{FLAG}: transformers rejects this {model_type} configuration ({first_line})") from None
    _check_combination(config, facts.vocab_size, needed_positions)
    return config


def build_model_from_scratch(
    model_type: str,
    tokenizer_dir: str,
    config_overrides: str = "",
    max_seq_len: int = 512,
    with_nsp_head: bool = False,
) -> Any:
    """A randomly initialised masked-LM model (``BertForPreTraining`` with ``with_nsp_head``), seeded by torch's
    global generator. The caller seeds it (``finetune`` does) for a reproducible start."""
    config = scratch_config(model_type, tokenizer_dir, config_overrides, max_seq_len)
    from transformers import AutoModelForMaskedLM, BertForPreTraining

    if with_nsp_head and model_type != "bert":
        raise UserError(
            f"--model_type {model_type} has no next-sentence-prediction head but the data was pregenerated for NSP; "
            "pregenerate it with --objective mlm, or use --model_type bert"
        )
    try:
        with quiet_transformers():
            model = BertForPreTraining(config) if with_nsp_head else AutoModelForMaskedLM.from_config(config)
    except (ValueError, RuntimeError, TypeError, AttributeError, KeyError) as error:
        raise UserError(
            f"{FLAG}: cannot build a {model_type} model from this configuration ({first_line(error)})"
        ) from None
    parameters = sum(parameter.numel() for parameter in model.parameters())
    logger.info("new %s model from scratch: %.1fM parameters", type(model).__name__, parameters / 1e6)
    return model
