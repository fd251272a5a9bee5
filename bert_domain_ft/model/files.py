"""The small JSON files of a saved model directory, read without transformers (and so without torch).

A ``config.json`` or tokenizer file that is not JSON is one ``UserError`` line naming the file with line:column,
never a traceback from deep inside a loader. The data stages use ``read_model_config`` for the model's facts they
need (its family, its number of positions) and ``check_model_positions`` to refuse a ``--max_seq_len`` the model
cannot take.

    positions = (read_model_config("path/to/bert") or {}).get("max_position_embeddings")
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bert_domain_ft.errors import UserError

MODEL_CONFIG_NAME = "config.json"


def read_json_object(path: Path, replacement: str) -> dict[str, Any]:
    """The JSON object in ``path``; a file that is not UTF-8, not JSON or not an object is a ``UserError`` saying
    to fix it or replace it with ``replacement`` (e.g. "the model's original config.json")."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; fix the file or replace it with {replacement}") from None
    except json.JSONDecodeError as error:
        raise UserError(
            f"{path}:{error.lineno}:{error.colno}: not valid JSON ({error.msg}); fix the file or replace it with "
            f"{replacement}"
        ) from None
    except OSError as error:
        raise UserError(f"{path}: cannot be read ({error.strerror}); check the file") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: holds no JSON object; fix the file or replace it with {replacement}")
    return value


def looks_like_a_path(name: str) -> bool:
    """Whether ``name`` means a local path rather than a Hub id (``repo`` or ``namespace/repo``): it starts with
    ".", "~" or a separator, holds more than one "/" (or a Windows separator), or its first part is a local
    directory (``models/bert`` beside a ``models/`` directory)."""
    if name.startswith((".", "~", "/", os.sep)) or name.count("/") > 1 or (os.sep != "/" and os.sep in name):
        return True
    return "/" in name and Path(name.split("/")[0]).is_dir()


def check_model_path(model: str | Path) -> None:
    """Refuse in one line a model named by a local path that is not a directory; a Hub id, or a path that is one,
    is left to the loader (which would otherwise explain a missing directory as a malformed Hub repo id)."""
    name = str(model)
    if Path(name).is_dir() or not (Path(name).exists() or looks_like_a_path(name)):
        return
    if Path(name).exists():
        raise UserError(f"{name}: a file, not a model directory; give the directory holding its config.json")
    shell = "; ~ is expanded only by a shell, so write the whole path" if name.startswith("~") else ""
    raise UserError(f"{name}: no such directory; give the path of a saved model directory{shell}")


def read_model_config(model: str | Path | None) -> dict[str, Any] | None:
    """The parsed ``config.json`` of a local model directory; None for no model, a hub id or a directory
    without one."""
    if model is None:
        return None
    path = Path(model) / MODEL_CONFIG_NAME
    if not path.is_file():
        return None
    return read_json_object(path, f"the model's original {MODEL_CONFIG_NAME}")


def check_model_positions(model: str | Path | None, max_seq_len: int) -> None:
    """Refuse a ``max_seq_len`` longer than the model's position embeddings (when its config says how many)."""
    model_config = read_model_config(model)
    if model_config is None:
        return
    positions = model_config.get("max_position_embeddings")
    if isinstance(positions, int) and max_seq_len > positions:
        raise UserError(
            f"{Path(str(model)) / MODEL_CONFIG_NAME}: the model has {positions} positions but --max_seq_len is "
            f"{max_seq_len}; use --max_seq_len {positions} or less"
        )


def checkpoint_tensor_names(model: str | Path | None) -> set[str] | None:
    """The names of the tensors a local model directory stores, read from its ``*.safetensors`` headers (8 bytes
    of length, then JSON: a few kilobytes whatever the model's size); None where that cannot be told (no model, a
    hub id, weights only in a pickled ``.bin``, an unreadable header)."""
    if model is None or not Path(model).is_dir():
        return None
    names: set[str] = set()
    files = sorted(Path(model).glob("*.safetensors"))
    for path in files:
        try:
            with open(path, "rb") as file:
                length = int.from_bytes(file.read(8), "little")
                header = json.loads(file.read(length).decode("utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(header, dict):
            return None
        names.update(key for key in header if key != "__metadata__")
    return names if files else None


def has_trained_nsp_head(model: str | Path | None) -> bool | None:
    """Whether a BERT checkpoint stores a next-sentence-prediction head (``cls.seq_relationship``); False for an
    encoder alone (sentence-transformers models, fine-tuned classifiers' encoders), None when it cannot be told."""
    names = checkpoint_tensor_names(model)
    if names is None:
        return None
    return any(name.endswith("seq_relationship.weight") for name in names)


# Why "auto" trains masked LM only for a BERT without a trained NSP head, said once wherever it is decided.
FRESH_NSP_HEAD_NOTE = (
    "it has no trained next-sentence-prediction head, and training a fresh one rewrites the pooler that classifiers "
    "fine-tuned from the model read (measured: the demo's probe fell 6.1 points, and rose back to the base's once "
    "the base pooler was restored; benchmarks/adaptation.py)"
)
