"""``finetune --probe_train F --probe_test F``: the downstream probe on the starting model and every checkpoint.

Masked-LM loss alone cannot say which checkpoint helps a task; the probe (``bert_domain_ft.probe``) fine-tunes a
classifier from each model on the user's labelled sentences and logs its test accuracy and macro-F1 (mean ± std
over seeds, and the per-seed scores) to ``metrics.jsonl`` as ``"kind": "probe"`` records (``bert-domain-ft plot``
draws them). Step 0 is the starting model: the model as loaded, after the head warm-up if one ran (the warm-up
leaves the encoder as loaded; it trains a fresh pooler with the NSP head); its record names ``--bert_model``.
Every later record adds ``paired_vs_start``: the checkpoint's accuracy minus the starting model's, seed by seed
(same seeds: same classifier start and data order), with its 95% interval and verdict.

With ``--save_best`` the starting model is the first candidate for ``output_dir/best/``; a checkpoint replaces
the best only when it beats the starting model beyond the seeds' noise (the interval lies above 0) and has a
higher mean accuracy than the best so far. The probe runs on the main process while the others wait; its
randomness is its own (the training run stays exactly resumable).

    probe = CheckpointProbe(config, context, metrics, keeper=None)
    probe.probe_starting_model(model, tokenizer, output_dir)      # then: setup.on_checkpoint = probe.on_checkpoint
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from torch import nn

from ..atomic_files import TEMPORARY_SUFFIX, os_errors_as_user_errors
from ..probe import ProbeConfig, Prober, ProbeResult
from ..probe_statistics import PairedDifference, paired_difference
from .best_model import BestModelKeeper, checkpoint_copier, model_writer
from .config import FinetuneConfig
from .distributed import DistributedContext, barrier
from .metrics import MetricsLog

logger = logging.getLogger(__name__)

PROBE_METRIC = "probe_accuracy"  # the --save_best metric when a probe is configured (higher is better)
PAIRED_FIELD = "paired_vs_start"  # in each checkpoint's probe record: its accuracy minus step 0's, seed by seed
_STARTING_MODEL = ".starting-model" + TEMPORARY_SUFFIX  # the starting model, written to disk for the probe only


def probe_config_for(config: FinetuneConfig) -> ProbeConfig:
    """The probe settings of a finetune run (the base model listed only to satisfy ``ProbeConfig``)."""
    assert config.probe_train is not None and config.probe_test is not None
    return ProbeConfig(
        models=[config.bert_model],
        train=config.probe_train,
        test=config.probe_test,
        seeds=config.probe_seeds,
        epochs=config.probe_epochs,
        seed=config.seed,
        no_cuda=config.no_cuda,
        show_progress=config.show_progress,
    )


def read_probe_records(metrics_path: Path) -> dict[int, dict[str, Any]]:
    """The ``"kind": "probe"`` records of a ``metrics.jsonl`` by step (the latest of a step wins)."""
    records: dict[int, dict[str, Any]] = {}
    lines = metrics_path.read_text(encoding="utf-8").splitlines() if metrics_path.is_file() else []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(record, dict) and record.get("kind") == "probe" and isinstance(record.get("step"), int):
            records[record["step"]] = record
    return records


def paired_against_start(record: dict[str, Any], start: dict[str, Any]) -> PairedDifference | None:
    """A probe record's accuracy minus the step-0 record's, seed by seed; None when their seeds differ."""
    if record.get("seeds") != start.get("seeds") or not record.get("seeds"):
        return None
    return paired_difference(record["accuracy_per_seed"], start["accuracy_per_seed"])


class CheckpointProbe:
    """Probes models for a run: reads and checks the labelled files once (at construction: early errors)."""

    def __init__(
        self,
        config: FinetuneConfig,
        context: DistributedContext,
        metrics: MetricsLog,
        keeper: BestModelKeeper | None = None,
    ):
        self.context = context
        self.metrics = metrics
        self.keeper = keeper
        self.starting_model_name = str(config.bert_model)
        self.prober = Prober(probe_config_for(config))
        logger.info("probe on the starting model and every checkpoint: %s", self.prober.describe())

    def _probe(self, model: str | Path, step: int) -> tuple[ProbeResult, dict[str, Any]]:
        started = time.perf_counter()
        result = self.prober.probe(str(model), name=f"step {step}")
        if step == 0:  # the starting model's files are temporary: the record names the model it was loaded from
            result = dataclasses.replace(result, model=self.starting_model_name)
        record = {"kind": "probe", "step": step, **result.to_json()}
        record["seconds"] = round(time.perf_counter() - started, 1)
        return result, record

    def probe_starting_model(self, model: nn.Module, tokenizer: Any, output_dir: Path) -> None:
        """Step 0: write ``model`` (as it is now, with ``tokenizer``) to disk, probe it, log it and make it the
        first best model (main process); every process returns together."""
        if self.context.is_main:
            directory = Path(output_dir) / _STARTING_MODEL
            try:
                with os_errors_as_user_errors(directory):
                    shutil.rmtree(directory, ignore_errors=True)
                    directory.mkdir(parents=True)
                model_writer(model, tokenizer)(directory)
                result, record = self._probe(directory, step=0)
                self.metrics.append(record)
                if self.keeper is not None:  # a candidate like any checkpoint; whatever best/ held before goes
                    self.keeper.keep(0, result.accuracy_mean, checkpoint_copier(directory))
            finally:
                shutil.rmtree(directory, ignore_errors=True)
        barrier(self.context)

    def on_checkpoint(self, directory: Path, step: int) -> None:
        """``TrainingSetup.on_checkpoint``: probe the checkpoint just written, compare it with the starting model."""
        if self.context.is_main:
            result, record = self._probe(directory, step)
            start = self._starting_record()
            paired = paired_against_start(record, start) if start is not None else None
            if paired is not None:
                record[PAIRED_FIELD] = paired.to_json()
            self.metrics.append(record)
            if self.keeper is not None and paired is not None and paired.beats_reference:
                self.keeper.consider(step, result.accuracy_mean, checkpoint_copier(Path(directory)))
        barrier(self.context)

    def _starting_record(self) -> dict[str, Any] | None:
        """The step-0 probe record (this run's, or the one a resumed run logged before); if there is none with
        this run's seeds, the model --bert_model names is probed now as step 0 (the head warm-up cannot be
        repeated, but it leaves the encoder as loaded)."""
        start = read_probe_records(self.metrics.path).get(0)
        if start is None or start.get("seeds") != self.prober.config.seed_list:
            logger.warning("no step-0 probe with this run's seeds in %s: probing %s as the starting model",
                           self.metrics.path, self.starting_model_name)  # fmt: skip
            _, start = self._probe(self.starting_model_name, step=0)
            self.metrics.append(start)
        return start

    def summary(self, saving_best: bool) -> str | None:
        """The run's verdict in one line: which checkpoint (if any) beat the starting model beyond the seeds'
        noise, from every probe record in ``metrics.jsonl`` (those of earlier invocations of a resumed run too)."""
        records = read_probe_records(self.metrics.path)
        start = records.get(0)
        compared = []
        for step, record in sorted(records.items()):
            paired = paired_against_start(record, start) if step > 0 and start is not None else None
            if paired is not None:
                compared.append((step, paired))
        if not compared:
            return None
        best_step, best = max(compared, key=lambda item: item[1].mean)  # the first of equal means wins
        if self.keeper is not None and self.keeper.best_step not in (None, 0):
            held = dict(compared).get(self.keeper.best_step)
            change = f": {held.describe_points()} over the starting model" if held is not None else ""
            return f"best/ holds the checkpoint of step {self.keeper.best_step}{change} (probe accuracy, paired)"
        if any(paired.beats_reference for _, paired in compared):
            winners = [step for step, paired in compared if paired.beats_reference]
            return f"checkpoints of steps {', '.join(map(str, winners))} beat the starting model on the probe"
        seeds = start["seeds"] if start is not None else []
        noise = "the seeds' noise" if len(seeds) > 1 else "noise (one probe seed: no interval; use --probe_seeds 5)"
        line = (
            f"no checkpoint beat the starting model on the probe beyond {noise} "
            f"(best: step {best_step}, {best.describe_points()})"
        )
        return line + ("; best/ holds the starting model" if saving_best else "")
