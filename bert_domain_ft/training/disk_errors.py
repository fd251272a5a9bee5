"""Disk errors of torch and safetensors writes as plain ``OSError``s, so a full disk reads as a full disk.

``torch.save(value, path)`` reports a full disk as ``RuntimeError: [enforce fail at inline_container.cc] unexpected
pos …`` and safetensors as ``SafetensorError: … No space left on device (os error 28)``; neither is an ``OSError``,
so ``atomic_files.os_errors_as_user_errors`` could not explain them and the user got a traceback. Here
``save_tensors`` writes through a Python file (whose ``OSError`` torch then passes on or chains), and
``storage_errors_as_os_errors`` turns the two libraries' wrappers back into the ``OSError`` they carry.

    with os_errors_as_user_errors(directory), storage_errors_as_os_errors():
        model.save_pretrained(directory); save_tensors(optimizer.state_dict(), directory / "optimizer.pt")
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

# Rust's std::io::Error text ends with "(os error N)"; safetensors passes it on in its message.
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def save_tensors(value: Any, path: Path) -> None:
    """``torch.save(value, path)`` whose disk errors are raised as the ``OSError`` itself (data made durable)."""
    with open(path, "wb") as handle:
        torch.save(value, handle)
        handle.flush()
        os.fsync(handle.fileno())


def os_error_within(error: BaseException) -> OSError | None:
    """The ``OSError`` that ``error`` is, wraps (cause/context chain) or names in its text, else ``None``."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno is not None:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    match = _RUST_OS_ERROR.search(str(error))
    if match:
        number = int(match.group(1))
        return OSError(number, os.strerror(number))
    return None


@contextmanager
def storage_errors_as_os_errors() -> Iterator[None]:
    """Re-raise torch's and safetensors' wrapped disk errors (full disk, permission denied) as ``OSError``."""
    try:
        yield
    except OSError:
        raise
    except Exception as error:  # RuntimeError from torch.save, SafetensorError from safetensors
        found = os_error_within(error)
        if found is None:
            raise
        raise found from error
