"""One writer per output directory: an exclusive lock file beside it, ``<output_dir>.lock``.

The lock lives next to the directory, not inside it, so it never shows up among the data and survives the
directory being built beside and swapped in (``--overwrite``). Its body is JSON naming the holder (pid, host,
command, start time), so a second run can say who is writing. On systems with ``fcntl`` the file is also held
with ``flock`` for the whole run, so two runs that start at the same instant cannot both win. A lock left by a
run that died on this host (its pid is gone) is taken over with a warning; a lock from another host is refused,
because we cannot tell whether that run is alive.

    with hold_output_lock(Path("data"), "pregenerate"):
        ...  # write data/
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import UserError

try:  # POSIX only; elsewhere the JSON body and the pid check are the lock
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

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
