"""Where a pregeneration run writes, and how a finished run replaces an older one.

A new or empty output directory is written in place. ``--overwrite`` builds beside it (``<output_dir>.partial``)
and swaps the result in when complete, so a failed run leaves the previous data untouched. ``--resume``
continues wherever the interrupted run wrote, after checking it used the same settings.

    work = working_directory(output_dir, overwrite=False, resume=False)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .atomic_files import fsync_directory, os_errors_as_user_errors, replace_directory
from .epoch_format import HOLDOUT_DIRECTORY, MANIFEST_NAME, epoch_directory_name
from .errors import UserError

GENERATION_RECORD = "generation.json"  # written first: lets --resume check it continues the same job


def working_directory(output: Path, overwrite: bool, resume: bool) -> Path:
    """Where this run writes. A new or empty ``output_dir`` is written in place; ``--overwrite`` builds the new
    data beside it (``<output_dir>.partial``) and swaps it in only when complete, so a run that fails — disk full,
    interrupted — leaves the previous data untouched; ``--resume`` continues wherever the interrupted run wrote."""
    staging = output.with_name(output.name + ".partial")
    with os_errors_as_user_errors(output / MANIFEST_NAME):
        if output.exists() and not output.is_dir():
            raise UserError(f"{output}: exists and is not a directory; choose another --output_dir")
        holds_data = output.exists() and any(output.iterdir())
        if holds_data and not (overwrite or resume):
            raise UserError(
                f"{output}: already holds data; pass --overwrite to replace it, --resume to finish an interrupted "
                "run, or choose an empty --output_dir"
            )
        if resume and (staging / GENERATION_RECORD).exists():
            return staging
        if not holds_data or resume:
            output.mkdir(parents=True, exist_ok=True)
            return output
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging


def check_resume(output: Path, record: dict[str, Any]) -> None:
    """Refuse to resume a run whose recorded settings differ from these."""
    path = output / GENERATION_RECORD
    if not path.exists():
        if any(output.glob("epoch_*")):
            raise UserError(f"{path}: missing, so these epochs cannot be resumed safely; use --overwrite")
        return
    earlier = json.loads(path.read_text(encoding="utf-8"))
    differing = sorted(key for key in set(record) | set(earlier) if record.get(key) != earlier.get(key))
    if differing:
        raise UserError(
            f"{path}: the interrupted run used different settings ({', '.join(differing)}); "
            "rerun with the same flags, or use --overwrite to start again"
        )


def publish(staging: Path, output: Path) -> None:
    """Move a complete overwrite run into ``output``: the old manifest goes first (the directory never looks
    complete while mixed), our entries are swapped one rename each, the new manifest comes last. Files of the
    user's that are not ours stay where they are."""
    with os_errors_as_user_errors(output):
        (output / MANIFEST_NAME).unlink(missing_ok=True)
        new_entries = {entry.name for entry in staging.iterdir()}
        for entry in sorted(staging.iterdir()):
            if entry.name == MANIFEST_NAME:
                continue
            if entry.is_dir():
                replace_directory(entry, output / entry.name)
            else:
                os.replace(entry, output / entry.name)
        for stale in output.iterdir():
            ours = stale.name.startswith("epoch_") or stale.name == HOLDOUT_DIRECTORY
            if stale.is_dir() and ours and stale.name not in new_entries:
                shutil.rmtree(stale)
        os.replace(staging / MANIFEST_NAME, output / MANIFEST_NAME)
        staging.rmdir()
    fsync_directory(output)


def remove_stale_epochs(output: Path, epochs_to_generate: int, with_holdout: bool) -> None:
    """After --overwrite, epochs beyond the new count (or a held-out set no longer asked for) must not linger."""
    keep = {epoch_directory_name(e) for e in range(epochs_to_generate)}
    if with_holdout:
        keep.add(HOLDOUT_DIRECTORY)
    for path in output.iterdir():
        stale_epoch = path.name.startswith("epoch_") and path.name not in keep
        if path.is_dir() and (
            stale_epoch or path.name.endswith(".partial") or (path.name == HOLDOUT_DIRECTORY and path.name not in keep)
        ):
            shutil.rmtree(path, ignore_errors=True)
