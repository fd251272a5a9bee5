"""Atomic writes: a file or directory appears under its final name complete, or not at all.

Everything the package writes goes through a temporary name in the same directory followed by ``os.replace``,
so a crash, a SIGKILL or a full disk never leaves a half-written file that looks finished.

    write_json_atomic(output_dir / "manifest.json", manifest)
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from .errors import UserError

TEMPORARY_SUFFIX = ".partial"


class DiskFullError(UserError):
    """No space left where we were writing; the run that hits it removes what it had half written."""


def _looks_like_a_full_disk(error: OSError) -> bool:
    """ENOSPC/EDQUOT, or a short write reported without an errno (numpy's ``tofile``: "N requested and M
    written"), which on a local file only happens when the disk or the quota is full."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return error.errno is None and "requested and" in str(error) and "written" in str(error)


def _explain_os_error(path: Path, error: OSError) -> UserError:
    if _looks_like_a_full_disk(error):
        return DiskFullError(
            f"{path}: the disk is full; free some space or choose another --output_dir (no space left on device)"
        )
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"{path}: cannot write here (permission denied); choose a writable --output_dir")
    reason = error.strerror or str(error) or type(error).__name__
    return UserError(f"{path}: cannot write ({reason}); check the path and free disk space")


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) says the disk is full."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, DiskFullError) or (isinstance(seen, OSError) and _looks_like_a_full_disk(seen)):
            return True
        seen = seen.__cause__
    return False


@contextmanager
def os_errors_as_user_errors(path: Path) -> Iterator[None]:
    """Turn disk-full and permission errors into one-line ``UserError`` messages naming ``path``."""
    try:
        yield
    except OSError as error:
        if isinstance(error, FileNotFoundError) and not path.parent.exists():
            raise UserError(f"{path.parent}: directory does not exist; create it first") from error
        raise _explain_os_error(path, error) from error


def fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@contextmanager
def atomic_output(path: Path) -> Iterator[BinaryIO]:
    """A binary file that appears as ``path`` only when the ``with`` body completes; deleted if anything fails.

    The parent directory is created if needed. An ``OSError`` inside becomes a ``UserError`` naming ``path``.
    """
    path = Path(path)
    temporary = path.with_name(path.name + TEMPORARY_SUFFIX)
    try:
        with os_errors_as_user_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_output(path) as handle:
        handle.write(data)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def replace_directory(temporary: Path, final: Path) -> None:
    """Move a finished ``temporary`` directory to ``final``, replacing an older one only once the new is complete."""
    with os_errors_as_user_errors(final):
        if final.exists():
            retired = final.with_name(final.name + ".old" + TEMPORARY_SUFFIX)
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(final, retired)
            os.replace(temporary, final)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(temporary, final)
    fsync_directory(final.parent)
