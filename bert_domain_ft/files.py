"""Writing files safely: whole or not at all, one writer per directory, disk errors said plainly. Torch-free.

- Atomic writes: everything the package writes goes through a temporary name in the same directory followed by
  ``os.replace``, so a crash, a SIGKILL or a full disk never leaves a half-written file that looks finished.
- Disk errors of torch and safetensors, which wrap a full disk in their own exceptions
  (``RuntimeError: [enforce fail at inline_container.cc] …``, ``SafetensorError: … (os error 28)``), are read
  back as the ``OSError`` they carry, so ``os_errors_as_user_errors`` can explain them in one line; torch itself
  is imported only by ``save_tensors``, when a checkpoint is written.
- ``NpyAppender`` streams a ``.npy`` file whose length is not known in advance: a fixed 128-byte header holding a
  placeholder shape, rows appended as they come, the header rewritten with the real row count on ``close`` and the
  file renamed into place; ``np.load(path, mmap_mode="r")`` opens the result with no conversion.
- One writer per output directory: an exclusive lock file beside it, ``<output_dir>.lock`` (beside, not inside, so
  it never shows among the data and survives the directory being swapped in by ``--overwrite``). Its JSON body
  names the holder (pid, host, command, start time); ``flock`` holds it for the run where ``fcntl`` exists. A lock
  left by a dead run on this host is taken over with a warning; one from another host is refused.

    write_json_atomic(output_dir / "manifest.json", manifest)
    with NpyAppender(path, np.uint16, row_shape=(128,)) as out:
        out.append(block)            # block.shape == (k, 128)
    with hold_output_lock(Path("data"), "pregenerate"):
        ...  # write data/
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np

from bert_domain_ft.errors import UserError

logger = logging.getLogger(__name__)

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


# Rust's std::io::Error text ends with "(os error N)"; safetensors passes it on in its message.
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def save_tensors(value: Any, path: Path) -> None:
    """``torch.save(value, path)`` whose disk errors are raised as the ``OSError`` itself (data made durable)."""
    import torch

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


HEADER_BYTES = 128
_MAGIC_V1 = b"\x93NUMPY\x01\x00"


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A version-1.0 ``.npy`` header of exactly ``HEADER_BYTES`` bytes."""
    description = f"{{'descr': {np.dtype(dtype).str!r}, 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    body_length = HEADER_BYTES - len(_MAGIC_V1) - 2
    if len(description) + 1 > body_length:
        raise ValueError(f"shape {shape} does not fit a {HEADER_BYTES}-byte .npy header")
    body = description.ljust(body_length - 1) + "\n"
    return _MAGIC_V1 + body_length.to_bytes(2, "little") + body.encode("latin1")


class NpyAppender:
    """Append rows of a fixed ``row_shape`` and ``dtype``; the file appears under ``path`` only on ``close``."""

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...] = (), with_checksum: bool = True):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.num_rows = 0
        self._hash = hashlib.sha256() if with_checksum else None
        self._temporary = self.path.with_name(self.path.name + TEMPORARY_SUFFIX)
        with os_errors_as_user_errors(self.path):
            self._handle = open(self._temporary, "wb")
            self._handle.write(npy_header(self.dtype, (0, *self.row_shape)))

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path}: rows of shape {rows.shape[1:]} appended to rows of shape {self.row_shape}")
        data = rows.tobytes()
        with os_errors_as_user_errors(self.path):
            self._handle.write(data)
        if self._hash is not None:
            self._hash.update(data)
        self.num_rows += rows.shape[0]

    @property
    def sha256(self) -> str | None:
        """Checksum of the data bytes (not the header), as recorded in manifests."""
        return None if self._hash is None else self._hash.hexdigest()

    def close(self) -> None:
        with os_errors_as_user_errors(self.path):
            self._handle.seek(0)
            self._handle.write(npy_header(self.dtype, (self.num_rows, *self.row_shape)))
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            os.replace(self._temporary, self.path)

    def abandon(self) -> None:
        self._handle.close()
        self._temporary.unlink(missing_ok=True)

    def __enter__(self) -> NpyAppender:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.abandon()


def data_sha256(path: Path, chunk_bytes: int = 1 << 22) -> str:
    """Checksum of the data bytes of an ``.npy`` file, comparable with ``NpyAppender.sha256``."""
    array = np.load(path, mmap_mode="r")
    offset = array.offset if isinstance(array, np.memmap) else None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(offset if offset is not None else HEADER_BYTES)
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


try:  # POSIX only; elsewhere the JSON body and the pid check are the lock
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_SUFFIX = ".lock"
_ATTEMPTS = 5  # a lock file removed and recreated under us between open and flock: retry this many times


def lock_path(output_dir: Path) -> Path:
    """The lock file of ``output_dir``: a sibling named ``<output_dir>.lock``."""
    absolute = Path(os.path.abspath(output_dir))
    return absolute.with_name(absolute.name + LOCK_SUFFIX)


def _pid_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    except (OSError, OverflowError, ValueError):
        return False
    return True


def _process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from /proc; None where that cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
        return int(boot.split()[1]) + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start, clock ticks
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _holder_is_running(holder: dict[str, Any]) -> bool:
    """Whether the process that wrote ``holder`` still runs: its pid is alive and did not start after the lock was
    taken (a pid reused by a later process, common in containers, is not the holder)."""
    pid, started = holder.get("pid"), holder.get("started")
    if not isinstance(pid, int) or pid == os.getpid() or not _pid_is_alive(pid):
        return False
    process_start = _process_start_time(pid)
    slack_seconds = 2.0  # /proc start times are in clock ticks and boot time in whole seconds
    return not (
        isinstance(started, (int, float)) and process_start is not None and process_start > started + slack_seconds
    )


def _describe(holder: dict[str, Any]) -> str:
    started = holder.get("started")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, {holder.get('command', '?')!r}, since {since}"


def _read_holder(descriptor: int) -> dict[str, Any] | None:
    """The JSON body of an open lock file; None when it is empty, {} when it is not readable JSON."""
    os.lseek(descriptor, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(descriptor, 65536):
        chunks.append(chunk)
    text = b"".join(chunks).decode("utf-8", errors="replace").strip()
    if not text:
        return None
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _flock(descriptor: int) -> bool | None:
    """True when we got the flock, False when another open file holds it, None when flock is not available."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None  # a file system without flock: fall back to the pid check
    return True


def _open_lock(path: Path, output_dir: Path, command: str) -> int:
    """Open and flock ``path``, retrying when it was replaced between the open and the flock."""
    for _ in range(_ATTEMPTS):
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        locked = _flock(descriptor)
        if locked is False:
            holder = _read_holder(descriptor) or {}
            os.close(descriptor)
            raise UserError(
                f"{output_dir}: another run is writing here ({_describe(holder)}; lock {path}); wait for it to "
                f"finish or choose another --output_dir"
            )
        try:
            same_file = os.path.samestat(os.fstat(descriptor), os.stat(path))
        except FileNotFoundError:
            same_file = False
        if same_file:
            return descriptor
        os.close(descriptor)  # the holder removed it as we opened it: start again on the new file
    raise UserError(f"{path}: the lock file keeps changing; another run is starting here, retry in a moment")


def _check_holder(descriptor: int, path: Path, output_dir: Path) -> None:
    """Refuse a lock held by a live run; warn and take over one left by a dead run on this host."""
    holder = _read_holder(descriptor)
    if holder is None:
        return  # we created it (or a run died before writing its body)
    host, pid = holder.get("host"), holder.get("pid")
    if host != socket.gethostname():
        raise UserError(
            f"{output_dir}: locked by a run on another host ({_describe(holder)}; lock {path}); if that run is no "
            f"longer running, delete {path} and retry"
        )
    if _holder_is_running(holder):
        raise UserError(
            f"{output_dir}: another run is writing here ({_describe(holder)}; lock {path}); wait for it to finish "
            f"or choose another --output_dir (if pid {pid} is not that run, delete {path})"
        )
    logger.warning(
        "%s: taking over a stale lock left by pid %s, which is no longer running (%s)", path, pid, _describe(holder)
    )


def _lock_error(path: Path, error: OSError) -> UserError:
    blocker = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocker is not None:
        return UserError(f"{blocker}: exists and is not a directory; choose another --output_dir")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"{path}: cannot write here (permission denied); choose a writable --output_dir")
    return UserError(f"{path}: cannot write the output lock ({error.strerror or error}); choose another --output_dir")


@contextmanager
def hold_output_lock(output_dir: Path, command: str) -> Iterator[None]:
    """Hold ``<output_dir>.lock`` for the ``with`` body; raise ``UserError`` naming the holder if another live run
    holds it. The lock is removed on leaving, whatever the reason (exception, KeyboardInterrupt)."""
    path = lock_path(output_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = _open_lock(path, Path(output_dir), command)
    except OSError as error:
        raise _lock_error(path, error) from error
    try:
        _check_holder(descriptor, path, Path(output_dir))
        body = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": time.time()}
        os.ftruncate(descriptor, 0)
        os.lseek(descriptor, 0, os.SEEK_SET)
        os.write(descriptor, (json.dumps(body) + "\n").encode("utf-8"))
        os.fsync(descriptor)
    except BaseException:
        os.close(descriptor)
        raise
    try:
        yield
    finally:
        try:
            if os.path.samestat(os.fstat(descriptor), os.stat(path)):
                path.unlink()
        except OSError:
            pass
        os.close(descriptor)
