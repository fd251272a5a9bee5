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

from .atomic_files import TEMPORARY_SUFFIX, fsync_directory, os_errors_as_user_errors, replace_directory
from .epoch_format import HOLDOUT_DIRECTORY, MANIFEST_NAME, epoch_directory_name
from .errors import UserError

GENERATION_RECORD = "generation.json"  # written first: lets --resume check it continues the same job


def _is_leftover(name: str) -> bool:
    """What a run that completed no epoch may leave (the record written first, half-written ``.partial`` files):
    not data, so it does not block the next run."""
    return name == GENERATION_RECORD or name.endswith(TEMPORARY_SUFFIX)


def working_directory(output: Path, overwrite: bool, resume: bool) -> Path:
    """Where this run writes. A new or empty ``output_dir`` is written in place; ``--overwrite`` builds the new
    data beside it (``<output_dir>.partial``) and swaps it in only when complete, so a run that fails — disk full,
    interrupted — leaves the previous data untouched; ``--resume`` continues wherever the interrupted run wrote."""
    staging = output.with_name(output.name + ".partial")
    with os_errors_as_user_errors(output / MANIFEST_NAME):
        if output.exists() and not output.is_dir():
            raise UserError(f"{output}: exists and is not a directory; choose another --output_dir")
        holds_data = output.exists() and any(not _is_leftover(entry.name) for entry in output.iterdir())
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
    changed = _changed_corpora(record, earlier)
    if changed:
        raise UserError(
            f"{', '.join(changed)}: changed since the interrupted run began (its content differs), so its epochs "
            "cannot be continued; use --overwrite to start again on the corpus as it is now"
        )
    differing = sorted(key for key in set(record) | set(earlier) if record.get(key) != earlier.get(key))
    if differing:
        raise UserError(
            f"{path}: the interrupted run used different settings ({', '.join(differing)}); "
            "rerun with the same flags, or use --overwrite to start again"
        )


def _changed_corpora(record: dict[str, Any], earlier: dict[str, Any]) -> list[str]:
    """Paths of the corpora (same name in both records) whose content fingerprint differs."""
    now, before = record.get("corpus_fingerprint") or {}, earlier.get("corpus_fingerprint") or {}
    paths = record.get("train_corpus") or {}
    return [str(paths.get(name, name)) for name in sorted(now) if name in before and now[name] != before[name]]


def discard_unfinished(work: Path, output: Path, disk_full: bool) -> None:
    """After a failed run: remove the epochs it had half written in ``work``. When the disk is full and ``work``
    is a directory built beside ``output`` (``--overwrite``), remove all of it, since it is what fills the disk;
    ``output`` itself (complete data of an earlier run) is never touched."""
    if disk_full and work != output:
        shutil.rmtree(work, ignore_errors=True)
        return
    if work.is_dir():
        for path in work.iterdir():
            if path.is_dir() and path.name.endswith(TEMPORARY_SUFFIX):
                shutil.rmtree(path, ignore_errors=True)


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
