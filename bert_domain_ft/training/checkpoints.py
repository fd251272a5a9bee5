"""Checkpoints that make a run resumable exactly: model, optimizer, scheduler, scaler, RNG states, data position.

``output_dir/checkpoint-STEP/`` holds the model (``model.saving.save_model``: safetensors, in the run's one format,
so it loads on its own; an MLM-only BERT's NSP head, never trained, is not stored and keeps its loaded value on
resume), the tokenizer, ``optimizer.pt``, ``scheduler.pt``, ``scaler.pt``, ``rng_state.pt`` (one entry per process) and
``training_state.json`` (position in the data and the settings that must match on resume). It is written as
``checkpoint-STEP.partial`` and renamed when complete, so a ``checkpoint-STEP`` directory is always whole.
Everything is read back with ``torch.load(weights_only=True)``.

Written last, ``checkpoint_complete.json`` maps every other file to its size in bytes and its BLAKE2b digest (16
bytes, hex), so a checkpoint damaged after it was saved (a truncated copy, a full disk during a sync) is
recognised before it is loaded: ``checkpoint_damage`` compares sizes first (free), then digests (one read of the
files, ~1 GB/s), and a file that still fails to load is named by ``damage_named`` (``DamagedCheckpoint``).
``--resume`` (``CheckpointManager.resume``) takes the newest intact checkpoint and names, in a warning, each newer
one it skips; a checkpoint without the record (written by an earlier version) counts as intact when it loads.

``training_state.json`` also holds the run's settings (``run_settings``: the stage decides which, see
``recipe._run_settings``): plain values, and the data the run reads as ``data_identity`` records (the path it was
read from, and a fingerprint of its content). ``--resume`` continues only a run with the same settings and data
(``check_settings``): anything else is refused in one line naming each change, old → new. A data set compares by
content, so data moved elsewhere is still the same data and data regenerated in place is not. A setting the
checkpoint lacks (written by an earlier version that did not record it) cannot be checked: it is named in a
warning and the run resumes, since refusing would strand every run interrupted across an upgrade.

    manager = CheckpointManager(output_dir, context, model, optimizer, scheduler, precision.scaler, run_settings)
    manager.save(position); directory, position = manager.resume()
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bert_domain_ft.errors import UserError, first_line
from bert_domain_ft.files import (
    TEMPORARY_SUFFIX,
    fresh_directory,
    os_errors_as_user_errors,
    replace_directory,
    save_tensors,
    storage_errors_as_os_errors,
    write_json_atomic,
)
from bert_domain_ft.kernels.attention import stock_attention
from bert_domain_ft.model.saving import WHOLE_MODEL, SaveFormat, save_model, unsaved_parameter_names
from bert_domain_ft.training.distributed import DistributedContext, barrier, gather_objects

logger = logging.getLogger(__name__)

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


CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "training_state.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
SCALER_FILE = "scaler.pt"
RNG_FILE = "rng_state.pt"
_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


@dataclass(frozen=True)
class TrainingPosition:
    """Where training stands: after ``global_step`` optimizer steps, ``batch_in_epoch`` micro-batches into
    training epoch ``epoch`` (0-based), in training phase ``phase``."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    phase: str = "train"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> TrainingPosition:
        return cls(**{key: value[key] for key in cls.__dataclass_fields__})


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) generator states, in types ``torch.load(weights_only=True)`` accepts."""
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy_key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
        "numpy_pos": int(numpy_state["state"]["pos"]),
        "numpy_gauss": (int(numpy_state["has_gauss"]), float(numpy_state["gauss"])),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": state["numpy_key"].numpy().astype(np.uint32), "pos": state["numpy_pos"]},
            "has_gauss": has_gauss,
            "gauss": gauss,
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_directories(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``output_dir`` as (step, path), oldest first (``.partial`` ones are ignored)."""
    if not Path(output_dir).is_dir():
        return []
    found = []
    for path in Path(output_dir).iterdir():
        match = _CHECKPOINT_NAME.match(path.name)
        if match and path.is_dir() and (path / STATE_FILE).exists():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = checkpoint_directories(output_dir)
    return found[-1][1] if found else None


def prune_checkpoints(output_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (``keep`` 0 keeps all); returns the deleted ones."""
    found = checkpoint_directories(output_dir)
    doomed = [path for _, path in found[:-keep]] if keep > 0 else []
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def remove_stale_partials(output_dir: Path) -> list[Path]:
    """Delete ``checkpoint-STEP.partial`` directories (a run killed while writing one leaves it behind); call
    it only between saves. Returns the deleted ones."""
    stale = [
        path
        for path in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*{TEMPORARY_SUFFIX}")
        if path.is_dir() and _CHECKPOINT_NAME.match(path.name[: -len(TEMPORARY_SUFFIX)])
    ]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def load_model_weights(model: nn.Module, directory: Path, left_out: set[str] | frozenset[str] = frozenset()) -> None:
    """Load ``save_pretrained`` safetensors (single file or sharded) into ``model``; tied copies may be absent, and
    the parameters ``left_out`` of the saved format (``saving.unsaved_parameter_names``) keep their values."""
    from safetensors.torch import load_file

    single = directory / "model.safetensors"
    if single.exists():
        files = [single]
    else:
        index = json.loads((directory / "model.safetensors.index.json").read_text(encoding="utf-8"))
        files = [directory / name for name in sorted(set(index["weight_map"].values()))]
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(load_file(str(path)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    untied_missing = [key for key in missing if key not in tied and key not in left_out]
    if untied_missing or unexpected:
        raise UserError(
            f"{directory}: checkpoint does not match the model (missing {untied_missing[:3]}, unexpected "
            f"{list(unexpected)[:3]}); resume with the same --bert_model"
        )


def data_identity(path: Path | str, fingerprint: str) -> dict[str, str]:
    """How ``run_settings`` records a data set: the path it was read from (shown) and its content's fingerprint
    (compared)."""
    return {"path": str(path), "fingerprint": fingerprint}


def _is_identity(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"path", "fingerprint"}


def _shown(value: Any) -> str:
    if _is_identity(value):
        return str(value["path"])
    return "none" if value is None else str(value)


def setting_change(name: str, saved: Any, current: Any) -> str | None:
    """``name old → new`` when a setting differs between a checkpoint (``saved``) and this run, else None. Data
    sets (``data_identity``) compare by content: moved is the same, regenerated in place is named with both
    fingerprints' first 8 digits."""
    if _is_identity(saved) and _is_identity(current):
        if saved["fingerprint"] == current["fingerprint"]:
            return None
        if saved["path"] == current["path"]:
            before, after = (str(value["fingerprint"]).split(":")[-1][:8] for value in (saved, current))
            return f"{name} {current['path']}: its content changed (fingerprint {before} → {after})"
        return f"{name} {saved['path']} → {current['path']} (other content)"
    if saved == current:
        return None
    return f"{name} {_shown(saved)} → {_shown(current)}"


class CheckpointManager:
    """Saves and restores everything a run needs to continue bit-for-bit; only rank 0 writes."""

    def __init__(
        self,
        output_dir: Path,
        context: DistributedContext,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler | None,
        run_settings: dict[str, Any],
        save_total_limit: int = 0,
        tokenizer: Any | None = None,
        save_format: SaveFormat = WHOLE_MODEL,
    ):
        self.output_dir = Path(output_dir)
        self.context = context
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler  # fp16's gradient scaler, saved and restored with the optimizer (None otherwise)
        self.run_settings = run_settings
        self.save_total_limit = save_total_limit
        self.tokenizer = tokenizer
        self.save_format = save_format  # the run's model format: its checkpoints, best/ and final model alike

    def save(self, position: TrainingPosition) -> Path:
        """Write ``checkpoint-<global_step>``; every process must call it (RNG states are gathered)."""
        self._refuse_non_finite_weights(position.global_step)
        rng_states = gather_objects(self.context, capture_rng_state())
        final = self.output_dir / f"{CHECKPOINT_PREFIX}{position.global_step}"
        if self.context.is_main:
            temporary = final.with_name(final.name + TEMPORARY_SUFFIX)
            try:
                with os_errors_as_user_errors(temporary), storage_errors_as_os_errors():
                    fresh_directory(temporary)  # a link planted at the name is removed, never followed
                    self._write_contents(temporary, position, rng_states)
            except BaseException as error:
                shutil.rmtree(temporary, ignore_errors=True)  # no half checkpoint left taking space on a full disk
                if isinstance(error, UserError):
                    raise UserError(f"{error}; {self.last_good_checkpoint_note()}") from error
                raise
            replace_directory(temporary, final)
            for path in remove_stale_partials(self.output_dir):
                logger.info("removed %s, left by an interrupted run", path.name)
            for path in prune_checkpoints(self.output_dir, self.save_total_limit):
                logger.info("removed old checkpoint %s (--save_total_limit %d)", path.name, self.save_total_limit)
            logger.info("saved %s", final)
        barrier(self.context)
        return final

    def _write_contents(self, directory: Path, position: TrainingPosition, rng_states: list[Any]) -> None:
        with stock_attention(self.model):
            save_model(self.model, directory, self.tokenizer, self.save_format)
        save_tensors(self.optimizer.state_dict(), directory / OPTIMIZER_FILE)
        save_tensors(self.scheduler.state_dict(), directory / SCHEDULER_FILE)
        if self.scaler is not None:
            save_tensors(self.scaler.state_dict(), directory / SCALER_FILE)
        save_tensors(rng_states, directory / RNG_FILE)
        # Its presence marks the directory as complete even before the rename.
        write_json_atomic(directory / STATE_FILE, {"position": position.to_json(), "settings": self.run_settings})
        write_completion_record(directory)  # last: sizes and digests of everything above

    def last_good_checkpoint_note(self, resume_hint: bool = True) -> str:
        """Where the run can continue from, for error messages (the newest complete checkpoint, if any)."""
        latest = latest_checkpoint(self.output_dir)
        if latest is None:
            return "no checkpoint was written yet"
        return f"the last good checkpoint is {latest}" + (" (continue from it with --resume)" if resume_hint else "")

    def _refuse_non_finite_weights(self, step: int) -> None:
        """Never write NaN/inf weights as a checkpoint: --resume would continue from garbage."""
        with torch.no_grad():
            finite = torch.stack([torch.isfinite(parameter).all() for parameter in self.model.parameters()]).all()
        if not bool(finite):
            raise UserError(
                f"the weights hold NaN or inf at step {step}, so no checkpoint was written; "
                f"{self.last_good_checkpoint_note(resume_hint=False)}; try a lower --learning_rate"
            )

    def check_settings(self, directory: Path, saved: dict[str, Any]) -> None:
        """Refuse to resume from ``directory`` (intact) when this run's settings or data differ from ``saved``, the
        ones it recorded, naming each change; warn about the settings it did not record (an earlier version's)."""
        changes = [setting_change(key, saved[key], value) for key, value in self.run_settings.items() if key in saved]
        differing = [change for change in changes if change is not None]
        if differing:
            raise UserError(
                f"{directory}: the checkpoint is intact, but the run's data or settings changed since it was "
                f"written ({'; '.join(differing)}); rerun --resume with that run's flags and data, or start over with "
                "--overwrite_output_dir (or another --output_dir)"
            )
        unrecorded = [key for key in self.run_settings if key not in saved]
        if unrecorded:
            logger.warning("--resume: %s was written by an earlier version, which did not record %s: they are not "
                           "checked against this run", directory.name, ", ".join(unrecorded))  # fmt: skip

    def resume(self) -> tuple[Path, TrainingPosition] | None:
        """Load the newest intact checkpoint (see ``checkpoint_damage``; one without a completion record must
        load); each newer damaged one is named in a warning. None when there is no checkpoint at all."""
        found = checkpoint_directories(self.output_dir)
        damaged: list[str] = []
        for _, directory in reversed(found):
            try:
                problem = checkpoint_damage(directory)
                if problem is not None:
                    raise DamagedCheckpoint(f"{directory}: damaged ({problem})")
                return directory, self.load(directory)
            except DamagedCheckpoint as error:
                logger.warning("--resume: skipping %s; trying the checkpoint before it", error)
                damaged.append(directory.name)
        if not damaged:
            return None
        raise UserError(
            f"{self.output_dir}: no intact checkpoint to resume from ({', '.join(damaged)} damaged, see the "
            "warnings above); start again with --overwrite_output_dir"
        )

    def load(self, directory: Path) -> TrainingPosition:
        """Restore model, optimizer, scheduler, scaler and this process's RNG state; return the position.
        A file that cannot be read back raises ``DamagedCheckpoint`` naming it; changed settings a ``UserError``."""
        state_path = directory / STATE_FILE
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
            settings, position = state["settings"], TrainingPosition.from_json(state["position"])
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise DamagedCheckpoint(f"{state_path}: unreadable ({first_line(error)})") from None
        self.check_settings(directory, settings)
        device = self.context.device
        with damage_named(directory / "model.safetensors"):
            load_model_weights(self.model, directory, unsaved_parameter_names(self.model, self.save_format))
        with damage_named(directory / OPTIMIZER_FILE):
            self.optimizer.load_state_dict(
                torch.load(directory / OPTIMIZER_FILE, map_location=device, weights_only=True)
            )
        with damage_named(directory / SCHEDULER_FILE):
            self.scheduler.load_state_dict(torch.load(directory / SCHEDULER_FILE, weights_only=True))
        if self.scaler is not None and (directory / SCALER_FILE).exists():
            with damage_named(directory / SCALER_FILE):
                self.scaler.load_state_dict(torch.load(directory / SCALER_FILE, weights_only=True))
        with damage_named(directory / RNG_FILE):
            restore_rng_state(torch.load(directory / RNG_FILE, weights_only=True)[self.context.rank])
        return position
