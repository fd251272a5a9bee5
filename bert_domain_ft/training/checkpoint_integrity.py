"""Whether a checkpoint is still what was saved: a completion record written last, checked before loading.

``checkpoint_complete.json`` maps every other file of the checkpoint to its size in bytes and its BLAKE2b digest
(16 bytes, hex). ``checkpoint_damage`` compares sizes first (free) and then digests (one read of the files,
~1 GB/s); a file that still fails to load is reported by ``damage_named`` as a ``DamagedCheckpoint`` naming it.

    write_completion_record(directory)            # after every other file is written
    problem = checkpoint_damage(directory)        # None: intact (or written before records existed)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..atomic_files import write_json_atomic
from ..errors import UserError

COMPLETION_FILE = "checkpoint_complete.json"
_HASH_BLOCK_BYTES = 1 << 22  # files are hashed in 4 MiB reads: memory stays flat whatever the model's size


class DamagedCheckpoint(UserError):
    """A checkpoint file that is missing, cut short or not what this version writes; ``--resume`` skips it."""


def _file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as file:
        while block := file.read(_HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def write_completion_record(directory: Path) -> None:
    """``checkpoint_complete.json``: every file of ``directory`` with its size and BLAKE2b digest (write it last)."""
    files = sorted(path for path in directory.rglob("*") if path.is_file() and path.name != COMPLETION_FILE)
    record = {
        str(path.relative_to(directory)): {"bytes": path.stat().st_size, "blake2b": _file_digest(path)}
        for path in files
    }
    write_json_atomic(directory / COMPLETION_FILE, {"files": record})


def checkpoint_damage(directory: Path) -> str | None:
    """What is wrong with a checkpoint according to its completion record (sizes first, then digests), or None
    when it matches, or when there is no record (an older checkpoint: loading it is the test)."""
    record_path = directory / COMPLETION_FILE
    if not record_path.exists():
        return None
    try:
        files = json.loads(record_path.read_text(encoding="utf-8"))["files"]
        expected = {name: (int(entry["bytes"]), str(entry["blake2b"])) for name, entry in files.items()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return f"{record_path.name} is unreadable"
    for name, (size, _) in expected.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were saved"
    for name, (_, digest) in expected.items():
        if _file_digest(directory / name) != digest:
            return f"{name} differs from what was saved"
    return None


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


@contextmanager
def damage_named(path: Path) -> Iterator[None]:
    """Loading ``path`` failed on its contents: a ``DamagedCheckpoint`` naming it (a ``UserError`` passes)."""
    try:
        yield
    except UserError:
        raise
    # Anything else reading the file raises is its content's fault: torch's zip reader (RuntimeError), the
    # weights-only unpickler refusing an object, safetensors' own SafetensorError, cut or odd contents.
    except Exception as error:
        raise DamagedCheckpoint(f"{path}: cannot be loaded ({first_line(error)[:200]})") from None
