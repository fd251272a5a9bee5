"""Writing files safely: whole or not at all, one writer per directory, disk errors said plainly. Torch-free.

- Atomic writes: everything the package writes goes through a temporary file in the same directory followed by
  ``os.replace``, so a crash, a SIGKILL or a full disk never leaves a half-written file that looks finished. The
  temporary is a new file, ``<name>.<random>.partial``, created with ``O_CREAT|O_EXCL`` (``open(…, "xb")``,
  which never opens an existing file nor follows a link planted at the name); temporary directories are made by
  ``mkdir`` after removing (never following) what sat at their name. Every output file honours the umask
  (safetensors writes 0600 files: directories are set to ``0o666 & ~umask`` before they are renamed in).
- What the tool wrote into a directory is recorded in its ledger, ``.bert_domain_ft-outputs.json`` (names only,
  written atomically, each name recorded before the entry is created): an output directory holding anything
  else holds the user's files, which a run refuses to replace (``unclaimed_entries``). A directory this tool
  creates, or a command takes over (``claim_directory``), has a ledger; atomic writes and ``replace_directory``
  into such a directory record their names themselves.
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
  left by a dead run on this host is taken over with a warning; one from another host is refused. It is taken on
  the resolved path (a run on ``run`` and one on a symlink to it collide) and opened with ``O_NOFOLLOW``.
- ``command_line`` is the command that started the process, as typed (shell-quoted), for the records a stage
  leaves (``manifest.json``'s ``command``, the model card's "Reproduce"); None when started from Python.

    output_dir = nonempty_path(text, "output_dir")  # "" would be the current directory
    write_json_atomic(output_dir / "manifest.json", manifest)
    with NpyAppender(path, np.uint16, row_shape=(128,)) as out:
        out.append(block)            # block.shape == (k, 128)
    with hold_output_lock(Path("data"), "pregenerate"):
        ...  # write data/
"""

from __future__ import annotations

import dataclasses
import errno
import glob
import hashlib
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np

from bert_domain_ft.errors import UserError

logger = logging.getLogger(__name__)

TEMPORARY_SUFFIX = ".partial"
OUTPUT_LEDGER = ".bert_domain_ft-outputs.json"  # the names this tool wrote into the directory holding it
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)


def nonempty_path(value: str | os.PathLike[str], flag: str | None = None) -> Path:
    """``value`` as a ``Path``; a ``ValueError`` when it is empty: ``Path("")`` is the current directory, so an unset
    shell variable (``--output_dir "$OUT"``) would write a run among the user's files. ``flag`` names it."""
    if not os.fspath(value).strip():
        where = f"--{flag}: " if flag else ""
        raise ValueError(f"{where}empty path (an unset shell variable?); give a file or directory name ('.' for here)")
    return Path(value)


def refuse_empty_paths(config: Any) -> None:
    """``nonempty_path`` for every path field of the dataclass ``config`` (call it first in ``__post_init__``): a
    ``ValueError`` naming the flag of the first empty one. Lists and named paths are checked item by item."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if "Path" not in str(field.type) or value is None:
            continue
        items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            nonempty_path(item, field.metadata.get("flag", field.name))


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


def _umask() -> int:
    """The process's umask, read from /proc where possible (setting it to read it back is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_mode() -> int:
    """The mode of a new output file: what ``open(path, "w")`` gives, ``0o666`` less the umask."""
    return 0o666 & ~_umask()


def honour_umask(directory: Path) -> None:
    """Give every regular file under ``directory`` the mode ``output_mode`` (safetensors writes 0600 files)."""
    wanted = output_mode()
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            status = os.lstat(path)
            if stat.S_ISREG(status.st_mode) and stat.S_IMODE(status.st_mode) != wanted:
                os.chmod(path, wanted)


def remove_path(path: Path) -> None:
    """Delete ``path`` without following it: a symlink (to a directory too) is unlinked, a directory is removed
    with what it holds (links inside unlinked, never followed), a missing path is fine."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _discard(path: Path) -> None:
    """Best-effort cleanup after a failure: it must never replace the error being raised (a read-only file system
    refuses the removal too)."""
    try:
        remove_path(path)
    except OSError as error:
        logger.warning("could not remove %s (%s); delete it by hand", path, error.strerror or error)


def fresh_directory(path: Path) -> None:
    """Make ``path`` a new empty directory of ours (a temporary one, e.g. ``checkpoint-8.partial``): whatever sits
    at the name (a leftover, a planted link) is removed without being followed, then ``mkdir`` creates it, which
    fails rather than follows a link planted in between."""
    path = Path(path)
    remove_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir()


def _new_temporary(path: Path) -> tuple[Path, BinaryIO]:
    """A new file beside ``path``, ``<name>.<random>.partial``, opened with ``"xb"``: ``O_CREAT|O_EXCL``, so never an
    existing file nor through a link planted there; its mode is the umask's, as for every output."""
    temporary = path.with_name(f"{path.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")
    return temporary, open(temporary, "xb")


def temporaries_of(path: Path) -> list[Path]:
    """The temporary names of ``path`` a killed writer may have left beside it: ``<name>.<random>.partial`` (and the
    ``<name>.partial`` of earlier versions), e.g. for a reader that must not take them as input."""
    path = Path(path)
    return [
        path.with_name(path.name + TEMPORARY_SUFFIX),
        *path.parent.glob(f"{glob.escape(path.name)}.*{TEMPORARY_SUFFIX}"),
    ]


@contextmanager
def _replacing(path: Path) -> Iterator[BinaryIO]:
    """A new temporary file beside ``path`` (``_new_temporary``), renamed to ``path`` once the body completes and
    its data is on disk; removed if anything fails."""
    temporary, handle = _new_temporary(path)
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _claim_in_parent(path)  # recorded before it appears: a run killed now leaves nothing unrecorded
        os.replace(temporary, path)
    except BaseException:
        _discard(temporary)
        raise


@contextmanager
def atomic_output(path: Path) -> Iterator[BinaryIO]:
    """A binary file that appears as ``path`` only when the ``with`` body completes; deleted if anything fails.

    The parent directory is created if needed (and then holds a ledger: it is ours). An ``OSError`` inside becomes
    a ``UserError`` naming ``path``.
    """
    path = Path(path)
    with os_errors_as_user_errors(path):
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
            claim_entries(path.parent, ())
        with _replacing(path) as handle:
            yield handle
    fsync_directory(path.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_output(path) as handle:
        handle.write(data)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def replace_directory(temporary: Path, final: Path) -> None:
    """Move a finished ``temporary`` directory to ``final``. An older ``final`` is renamed aside first and deleted
    only once the new one is in place; if that fails, the old one is put back, whole. Its files get the umask's
    mode (``honour_umask``) and its name is recorded in the parent's ledger."""
    with os_errors_as_user_errors(final):
        honour_umask(temporary)
        _claim_in_parent(final)
        if not os.path.lexists(final):
            os.replace(temporary, final)
        else:
            retired = final.with_name(f"{final.name}.old.{secrets.token_hex(6)}{TEMPORARY_SUFFIX}")  # unguessable
            os.replace(final, retired)  # a rename never follows a link: a linked final is moved aside as a link
            try:
                os.replace(temporary, final)
            except BaseException:
                _put_back(retired, final)
                raise
            _discard(retired)
    fsync_directory(final.parent)


def write_directory_atomic(final: Path, write: Callable[[Path], None]) -> None:
    """``write`` fills a fresh temporary directory beside ``final`` (``<name>.partial``, ``fresh_directory``), which
    then replaces ``final`` whole (``replace_directory``); a failure removes the half-written one and leaves
    ``final`` as it was. Disk errors of torch and safetensors are read as the ``OSError`` they carry."""
    final = Path(final)
    temporary = final.with_name(final.name + TEMPORARY_SUFFIX)
    try:
        with os_errors_as_user_errors(temporary), storage_errors_as_os_errors():
            fresh_directory(temporary)  # a link planted at the name is removed, never followed
            write(temporary)
    except BaseException:
        _discard(temporary)  # no half-written directory left taking space
        raise
    replace_directory(temporary, final)


def _put_back(retired: Path, final: Path) -> None:
    """Rename the old directory back after a failed swap; if even that fails, say where it is (the error being
    raised stays the one the user sees)."""
    try:
        os.replace(retired, final)
    except OSError as error:
        logger.error("%s: the previous contents are in %s (%s); rename it back", final, retired, error.strerror)


def _read_ledger(directory: Path) -> set[str] | None:
    """The names recorded in ``directory``'s ledger; None when it has none (or one this tool cannot read)."""
    try:
        value = json.loads((Path(directory) / OUTPUT_LEDGER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entries = value.get("entries") if isinstance(value, dict) else None
    if not isinstance(entries, list) or not all(isinstance(name, str) for name in entries):
        return None
    return set(entries)


def _write_ledger(directory: Path, names: set[str]) -> None:
    body = {"written_by": "bert_domain_ft", "about": "entries of this directory written by bert_domain_ft"}
    with _replacing(Path(directory) / OUTPUT_LEDGER) as handle:
        handle.write((json.dumps({**body, "entries": sorted(names)}, indent=1) + "\n").encode("utf-8"))


@contextmanager
def _ledger_held(directory: Path) -> Iterator[None]:
    """One ledger update at a time (a run and an ``evaluate --json`` into its directory may record names at once):
    ``flock`` on the directory itself, where it can be had."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        descriptor = None
    try:
        if descriptor is not None and fcntl is not None:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX)
            except OSError:
                pass  # a file system without flock: updates are rare and short
        yield
    finally:
        if descriptor is not None:
            os.close(descriptor)


def claim_entries(directory: Path, names: Iterable[str]) -> None:
    """Record ``names`` as written by this tool in ``directory``'s ledger (created when missing: call it only for
    a directory this tool owns). Call it before creating them, so a killed run leaves nothing unrecorded."""
    with _ledger_held(directory):
        known = _read_ledger(directory)
        wanted = (known or set()) | set(names)
        if known is None or wanted != known:
            _write_ledger(directory, wanted)


def _claim_in_parent(path: Path) -> None:
    """Record ``path``'s name in its directory's ledger, if that directory has one (it is ours)."""
    if not _is_ours_by_name(path.name) and (path.parent / OUTPUT_LEDGER).is_file():
        claim_entries(path.parent, (path.name,))


def owns_directory(directory: Path) -> bool:
    """Whether ``directory`` holds this tool's ledger."""
    return _read_ledger(directory) is not None


def _is_ours_by_name(name: str) -> bool:
    """The ledger itself and temporaries (``*.partial``: what a killed run may leave) are never the user's files."""
    return name == OUTPUT_LEDGER or name.endswith(TEMPORARY_SUFFIX)


def unclaimed_entries(directory: Path) -> list[str]:
    """The entries of ``directory`` this tool did not write (all of them when it has no ledger), sorted; none when
    it does not exist."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    claimed = _read_ledger(directory) or set()
    return sorted(p.name for p in directory.iterdir() if not _is_ours_by_name(p.name) and p.name not in claimed)


def claim_directory(directory: Path, names: Iterable[str] = ()) -> None:
    """Take ``directory`` as this tool's output (created if missing): its ledger keeps the recorded entries still
    present and adds ``names`` (those about to be written by writers that do not record their own). Inside a
    directory of ours (``general_holdout`` in a run's), its own name is recorded there first."""
    directory = Path(directory)
    _claim_in_parent(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with _ledger_held(directory):
        present = {path.name for path in directory.iterdir()}
        known = _read_ledger(directory)
        wanted = ((known or set()) & present) | set(names)
        if known is None or wanted != known:  # unchanged, it stays byte for byte (a refused --resume writes nothing)
            _write_ledger(directory, wanted)


def _unclaim_in_parent(path: Path) -> None:
    """Forget ``path``'s name in its directory's ledger once it is gone (a lock removed at the end of its run)."""
    directory = path.parent
    if not (directory / OUTPUT_LEDGER).is_file():
        return
    with _ledger_held(directory):
        known = _read_ledger(directory)
        if known is not None and path.name in known and not os.path.lexists(path):
            _write_ledger(directory, known - {path.name})


def describe_entries(names: list[str], limit: int = 10) -> str:
    """``a, b, c`` (and how many more past ``limit``), for messages naming a directory's entries."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def remove_entries(directory: Path, names: Iterable[str], flag: str) -> None:
    """Delete ``names`` from ``directory`` (links unlinked, never followed), after logging every name (``flag`` is
    what asked for it, e.g. ``--overwrite_output_dir``)."""
    doomed = sorted(names)
    if doomed:
        logger.warning("%s: deleting %d entries of %s: %s", flag, len(doomed), directory, ", ".join(doomed))
    for name in doomed:
        remove_path(Path(directory) / name)


# Rust's std::io::Error text ends with "(os error N)"; safetensors passes it on in its message.
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def save_tensors(value: Any, path: Path) -> None:
    """``torch.save(value, path)`` into a new file (never an existing one, nor through a link), whose disk errors
    are raised as the ``OSError`` itself (data made durable)."""
    import torch

    with open(path, "xb") as handle:  # a new file (O_EXCL): an existing one, or a link planted there, is refused
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
        with os_errors_as_user_errors(self.path):  # a new file: a link planted beside is never followed
            self._temporary, self._handle = _new_temporary(self.path)
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
            _claim_in_parent(self.path)
            os.replace(self._temporary, self.path)

    def abandon(self) -> None:
        """Drop the half-written file; never raises (closing flushes, which fails again on a full disk)."""
        try:
            self._handle.close()
        except OSError:
            pass
        _discard(self._temporary)

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
    """The lock file of ``output_dir``: a sibling named ``<output_dir>.lock`` of its resolved path (symlinks and
    ``..`` resolved), so two runs reaching one directory by different paths take the same lock."""
    resolved = Path(os.path.realpath(output_dir))
    if not resolved.name:
        raise UserError(f"{output_dir}: is the root directory; choose an --output_dir below it")
    return resolved.with_name(resolved.name + LOCK_SUFFIX)


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
    _claim_in_parent(path)  # a lock inside a directory of ours (general_holdout.lock) is ours, if a run leaves it
    for _ in range(_ATTEMPTS):
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | _NO_FOLLOW, 0o666)  # a link planted there is refused
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
    if not holder:
        raise UserError(
            f"{output_dir}: the lock file {path} is unreadable (not the JSON this tool writes: damaged, or written by "
            f"something else); if no run is writing to {output_dir}, delete {path} and retry"
        )
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
    if error.errno == errno.ELOOP:
        return UserError(f"{path}: is a symbolic link, not a lock file this tool wrote; delete the link and retry")
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
                _unclaim_in_parent(path)
        except OSError:
            pass
        os.close(descriptor)


# The console scripts of setup.cfg, whose command lines are recorded as they were typed.
CONSOLE_SCRIPTS = ("bert-domain-ft", "pregenerate-training-data", "finetune-on-pregenerated", "simple-lm-finetuning")


def command_line(argv: list[str] | None = None) -> str | None:
    """The command that started this process (``sys.argv``), shell-quoted, to record how an output was made:
    ``bert-domain-ft …``, a classic script's name, or ``python -m bert_domain_ft …`` (torchrun's too). None when
    the process is not one of those (a notebook, a test, another program calling the library)."""
    argv = list(sys.argv if argv is None else argv)
    program = Path(argv[0]) if argv else Path()
    if program.name == "__main__.py" and program.parent.name == "bert_domain_ft":
        return shlex.join(["python", "-m", "bert_domain_ft", *argv[1:]])
    if program.name in CONSOLE_SCRIPTS:
        return shlex.join([program.name, *argv[1:]])
    return None
