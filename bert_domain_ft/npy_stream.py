"""Write a ``.npy`` file whose length is not known in advance, streaming, in one pass.

The file starts with a fixed 128-byte header holding a placeholder shape; rows are appended as they come; on
``close`` the header is rewritten with the real row count and the file is renamed into place. The result is an
ordinary ``.npy`` that ``np.load(path, mmap_mode="r")`` opens with no conversion. 128 bytes hold any shape up to
trillions of rows, and are a multiple of 64 so the data stays aligned.

    with NpyAppender(path, np.uint16, row_shape=(128,)) as out:
        out.append(block)            # block.shape == (k, 128)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import TracebackType

import numpy as np

from .atomic_files import TEMPORARY_SUFFIX, os_errors_as_user_errors

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
