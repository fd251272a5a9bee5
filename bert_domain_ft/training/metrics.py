"""Training metrics: a window of running sums, and the ``metrics.jsonl`` log (one JSON record per line).

Records have ``"kind": "train"`` (step, epoch, lr, mlm_loss, mlm_accuracy, nsp_loss, nsp_accuracy (named as the
held-out metrics are; files of earlier versions say mlm_acc, nsp_acc), sequences_per_second,
tokens_per_second (real tokens, padding left out), padding_share, data_wait_share, on a GPU mfu (model FLOPs
utilisation, see ``throughput``), …, and anchor_penalty λ/2·Σ‖θ−θ₀‖² and drift ‖θ−θ₀‖ of the pretrained weights
from their start), ``"kind": "eval"`` (step, epoch and whatever the evaluator returns: the held-out metrics, with
--general_holdout also general_*), or the kinds of the head warm-up, model selection and probe (see loop.py and
selection.py). Only the main process writes; every record also goes to the experiment trackers of
``--report_to`` (``trackers.py``). On resume, the records after the checkpoint's step are dropped so the log reads
as one uninterrupted run; a ``--resume`` that finds no checkpoint starts from nothing and drops them all.

    log = MetricsLog(output_dir / "metrics.jsonl", enabled=context.is_main)
    log.append({"kind": "train", "step": 10, "mlm_loss": 2.3})

While a progress bar is drawn, log lines go through its writer (``log_through_progress_bars``), above the bar.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from bert_domain_ft.files import os_errors_as_user_errors, write_text_atomic
from bert_domain_ft.model.pretraining import PretrainingOutput
from bert_domain_ft.training.distributed import DistributedContext, sum_across_processes
from bert_domain_ft.training.throughput import Throughput
from bert_domain_ft.training.trackers import Tracker, close_trackers, send_record

METRICS_FILE = "metrics.jsonl"

# Order of the counters in the window's vector (summed across processes in one all-reduce).
_COUNTERS = ("mlm_loss_sum", "mlm_count", "mlm_correct", "nsp_loss_sum", "nsp_correct", "nsp_count")
_COUNTERS += ("tokens", "squared_lengths", "positions")  # real tokens, Σ len² of rows, tokens + padding


class MetricsWindow:
    """Sums of losses and counts since the last report, kept on the device (no sync per step); with a
    ``throughput`` (the main phase) the summary also has the MFU of the window."""

    def __init__(self, device: torch.device, throughput: Throughput | None = None):
        self.device = device
        self.throughput = throughput
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(_COUNTERS), dtype=torch.float64, device=self.device)
        self.sequences = 0
        self.data_wait_seconds = 0.0
        self.started = time.perf_counter()

    def add(self, output: PretrainingOutput, attention_mask: torch.Tensor) -> None:
        """Count one micro-batch: its losses and, from its (B, L) ``attention_mask``, its real tokens."""
        zero = torch.zeros((), device=self.device)
        values = [output.mlm_loss_sum, output.mlm_count, output.mlm_correct]
        if output.nsp_loss is not None:  # weighted by its labelled instances: a batch may have few or none
            values += [output.nsp_loss.detach() * output.nsp_count, output.nsp_correct, output.nsp_count]
        else:
            values += [zero] * 3
        lengths = attention_mask.sum(dim=1, dtype=torch.float64)
        values += [lengths.sum(), lengths.square().sum(), zero + attention_mask.numel()]
        self.sums += torch.stack([value.to(self.device, torch.float64) for value in values])
        self.sequences += int(attention_mask.shape[0])

    def summary(self, context: DistributedContext) -> dict[str, float]:
        """Means over the window and all processes; throughput counts every process's sequences."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        totals = dict(zip(_COUNTERS, sum_across_processes(context, self.sums.clone()).tolist()))
        summary = {
            "mlm_loss": totals["mlm_loss_sum"] / max(totals["mlm_count"], 1.0),
            "mlm_accuracy": totals["mlm_correct"] / max(totals["mlm_count"], 1.0),
            "sequences_per_second": self.sequences * context.world_size / elapsed,
            "tokens_per_second": totals["tokens"] / elapsed,
            "padding_share": 1.0 - totals["tokens"] / max(totals["positions"], 1.0),
            "data_wait_share": self.data_wait_seconds / elapsed,
        }
        if self.throughput is not None:  # all processes' work over the time they took together: per-GPU MFU
            mfu = self.throughput.mfu(totals["tokens"], totals["squared_lengths"], totals["mlm_count"], elapsed)
            if mfu is not None:
                summary["mfu"] = mfu / context.world_size
        if totals["nsp_count"]:  # none when every instance of the window was masked LM only
            summary["nsp_loss"] = totals["nsp_loss_sum"] / totals["nsp_count"]
            summary["nsp_accuracy"] = totals["nsp_correct"] / totals["nsp_count"]
        return summary


class MetricsLog:
    """Appends JSON records to ``metrics.jsonl``, flushing each so a crash loses at most the record in flight, and
    hands each record to the experiment trackers of ``--report_to`` (``trackers.py``), which then see exactly
    what the file holds."""

    def __init__(self, path: Path, enabled: bool = True, trackers: Sequence[Tracker] = ()):
        self.path = Path(path)
        self.enabled = enabled
        self.trackers = list(trackers) if enabled else []

    def append(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = without_non_finite(record)
        with os_errors_as_user_errors(self.path), open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, allow_nan=False) + "\n")
        send_record(self.trackers, record)

    def close(self) -> None:
        """End the trackers' runs (flushing their files); the log itself needs no closing."""
        close_trackers(self.trackers)
        self.trackers = []

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (left by a run that continued past its last checkpoint)."""
        if not self.enabled or not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.strip() and _step_of(line) <= step]
        if len(kept) != len(lines):
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def clear(self) -> None:
        """Drop every record: a run starting from nothing again (``--resume`` found no checkpoint) repeats step 0, so
        the records of a run killed before its first checkpoint must go."""
        if self.enabled and self.path.exists():
            write_text_atomic(self.path, "")


def without_non_finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float, nested ones too, as None: JSON has no such numbers (json.dumps
    would write ``NaN``/``Infinity``, which strict readers refuse), so the log says ``null``: no value."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: without_non_finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_non_finite(item) for item in value]
    return value


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 1 << 62  # an unreadable (half-written) line is dropped


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr)


@contextmanager
def log_through_progress_bars(bar_class: Any) -> Iterator[None]:
    """While it lasts, the root logger's console handlers write through ``bar_class.write`` (tqdm's), which clears
    the progress bars, prints the line and draws them again, so no log line is drawn over by a bar. Without a
    console handler (a library caller's own logging, tests) nothing changes."""
    if not any(_is_console(handler) for handler in logging.getLogger().handlers):
        yield
        return
    with logging_redirect_tqdm(tqdm_class=bar_class):
        yield
