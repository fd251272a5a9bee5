"""``--save_best``: keep the model with the best held-out score so far as ``output_dir/best/``.

The score is the held-out masked-LM loss (lower is better) or, when a downstream probe is configured, the probe's
mean accuracy (higher is better; ``CheckpointProbe`` first ``keep``s the starting model, then offers only the
checkpoints that beat it beyond the seeds' noise). ``best/`` holds a loadable model (``save_pretrained`` files
and the tokenizer) plus ``best.json`` (step, metric, value); it is written as ``best.partial`` and renamed when
complete, so ``best/`` is always whole. Each new best is also logged to ``metrics.jsonl`` as ``"kind": "best"``. A resumed
run reads ``best/best.json`` so it only replaces the model with a better one.

    keeper = BestModelKeeper(output_dir, metrics, metric="mlm_loss", higher_is_better=False)
    keeper.consider(step=200, value=2.31, write=lambda directory: model.save_pretrained(directory))
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..atomic_files import TEMPORARY_SUFFIX, os_errors_as_user_errors, replace_directory, write_json_atomic
from ..errors import UserError
from ..pretraining_model import quiet_transformers
from .attention import stock_attention
from .checkpoints import OPTIMIZER_FILE, RNG_FILE, SCALER_FILE, SCHEDULER_FILE, STATE_FILE
from .disk_errors import storage_errors_as_os_errors
from .metrics import MetricsLog

logger = logging.getLogger(__name__)

BEST_DIRECTORY = "best"
BEST_INFO_FILE = "best.json"
# Files of a checkpoint that belong to the training state, not to the model: not copied into best/.
_TRAINING_STATE_FILES = {OPTIMIZER_FILE, SCHEDULER_FILE, SCALER_FILE, RNG_FILE, STATE_FILE}


def model_writer(model: nn.Module, tokenizer: Any | None) -> Callable[[Path], None]:
    """A ``write(directory)`` saving the in-memory ``model`` (and tokenizer) with ``save_pretrained``."""

    def write(directory: Path) -> None:
        with quiet_transformers(), stock_attention(model):
            model.save_pretrained(str(directory))  # type: ignore[operator]
        if tokenizer is not None:
            tokenizer.save_pretrained(str(directory))

    return write


def checkpoint_copier(checkpoint: Path) -> Callable[[Path], None]:
    """A ``write(directory)`` copying the model and tokenizer files of a checkpoint (not its training state)."""

    def write(directory: Path) -> None:
        for path in sorted(Path(checkpoint).iterdir()):
            if path.is_file() and path.name not in _TRAINING_STATE_FILES:
                shutil.copy2(path, directory / path.name)

    return write


class BestModelKeeper:
    """Writes ``output_dir/best/`` whenever ``consider`` sees a better value of ``metric`` (main process only)."""

    def __init__(self, output_dir: Path, metrics: MetricsLog, metric: str, higher_is_better: bool):
        self.directory = Path(output_dir) / BEST_DIRECTORY
        self.metrics = metrics
        self.metric = metric
        self.higher_is_better = higher_is_better
        self.best_value: float | None = None
        self.best_step: int | None = None
        self._read_previous()

    def _read_previous(self) -> None:
        """Continue from an earlier best of the same metric (a resumed run); anything else starts afresh."""
        try:
            info = json.loads((self.directory / BEST_INFO_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return
        if isinstance(info, dict) and info.get("metric") == self.metric and isinstance(info.get("value"), (int, float)):
            self.best_value, self.best_step = float(info["value"]), int(info.get("step", 0))

    def is_better(self, value: float) -> bool:
        if self.best_value is None:
            return True
        return value > self.best_value if self.higher_is_better else value < self.best_value

    def consider(self, step: int, value: float, write: Callable[[Path], None]) -> bool:
        """Make the model ``write`` produces the best one if ``value`` beats the best so far; ``True`` if it did."""
        if not self.is_better(value):
            return False
        self.keep(step, value, write)
        return True

    def keep(self, step: int, value: float, write: Callable[[Path], None]) -> None:
        """Make the model ``write`` produces the best one, whatever ``best/`` held (e.g. the starting model)."""
        temporary = self.directory.with_name(self.directory.name + TEMPORARY_SUFFIX)
        try:
            # safetensors and torch report a full disk in their own exception types: read as the OSError it is.
            with os_errors_as_user_errors(temporary), storage_errors_as_os_errors():
                shutil.rmtree(temporary, ignore_errors=True)
                temporary.mkdir(parents=True)
                write(temporary)
        except BaseException as error:
            shutil.rmtree(temporary, ignore_errors=True)  # no half-written model left taking space
            if isinstance(error, UserError) and self.best_step is not None:
                raise UserError(f"{error}; the previous best model in {self.directory} is intact") from error
            raise
        write_json_atomic(temporary / BEST_INFO_FILE, {"step": step, "metric": self.metric, "value": value})
        replace_directory(temporary, self.directory)
        self.best_value, self.best_step = value, step
        self.metrics.append({"kind": "best", "step": step, "metric": self.metric, "value": value})
        logger.info("new best %s %.4g at step %d: saved to %s", self.metric, value, step, self.directory)
