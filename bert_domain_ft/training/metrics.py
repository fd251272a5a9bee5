"""Training metrics: a window of running sums, and the ``metrics.jsonl`` log (one JSON record per line).

Records have ``"kind": "train"`` (step, epoch, lr, mlm_loss, nsp_loss, nsp_acc, sequences_per_second, …, and
anchor_penalty λ/2·Σ‖θ−θ₀‖² and drift ‖θ−θ₀‖ of the pretrained weights from their start), ``"kind": "eval"``
(step, epoch and whatever the evaluator returns: the held-out metrics, with --general_holdout also general_*),
or the kinds of the head warm-up, model selection and probe (see loop.py and selection.py). Only the main
process writes. On resume, the records after the checkpoint's step are dropped so the log reads as one
uninterrupted run.

    log = MetricsLog(output_dir / "metrics.jsonl", enabled=context.is_main)
    log.append({"kind": "train", "step": 10, "mlm_loss": 2.3})
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from bert_domain_ft.files import os_errors_as_user_errors, write_text_atomic
from bert_domain_ft.model.pretraining import PretrainingOutput
from bert_domain_ft.training.distributed import DistributedContext, sum_across_processes

METRICS_FILE = "metrics.jsonl"

# Order of the counters in the window's vector (summed across processes in one all-reduce).
_COUNTERS = ("mlm_loss_sum", "mlm_count", "mlm_correct", "nsp_loss_sum", "nsp_batches", "nsp_correct", "nsp_count")


class MetricsWindow:
    """Sums of losses and counts since the last report, kept on the device (no sync per step)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(_COUNTERS), dtype=torch.float64, device=self.device)
        self.sequences = 0
        self.data_wait_seconds = 0.0
        self.started = time.perf_counter()

    def add(self, output: PretrainingOutput, sequences: int) -> None:
        values = [output.mlm_loss_sum, output.mlm_count, output.mlm_correct]
        if output.nsp_loss is not None:
            values += [output.nsp_loss.detach(), torch.ones((), device=self.device), output.nsp_correct]
            values += [output.nsp_count]
        else:
            values += [torch.zeros((), device=self.device)] * 4
        self.sums += torch.stack([value.to(self.device, torch.float64) for value in values])
        self.sequences += sequences

    def summary(self, context: DistributedContext) -> dict[str, float]:
        """Means over the window and all processes; throughput counts every process's sequences."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        totals = dict(zip(_COUNTERS, sum_across_processes(context, self.sums.clone()).tolist()))
        summary = {
            "mlm_loss": totals["mlm_loss_sum"] / max(totals["mlm_count"], 1.0),
            "mlm_acc": totals["mlm_correct"] / max(totals["mlm_count"], 1.0),
            "sequences_per_second": self.sequences * context.world_size / elapsed,
            "data_wait_share": self.data_wait_seconds / elapsed,
        }
        if totals["nsp_batches"]:
            summary["nsp_loss"] = totals["nsp_loss_sum"] / totals["nsp_batches"]
            summary["nsp_acc"] = totals["nsp_correct"] / max(totals["nsp_count"], 1.0)
        return summary


class MetricsLog:
    """Appends JSON records to ``metrics.jsonl``, flushing each so a crash loses at most the record in flight."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def append(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with os_errors_as_user_errors(self.path), open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (left by a run that continued past its last checkpoint)."""
        if not self.enabled or not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.strip() and _step_of(line) <= step]
        if len(kept) != len(lines):
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 1 << 62  # an unreadable (half-written) line is dropped
