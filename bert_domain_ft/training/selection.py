"""Choosing among a run's models: ``--save_best`` and the downstream probe (``--probe_train/--probe_test``).

``attach_model_selection`` wires both into a ``TrainingSetup``'s hooks. ``BestModelKeeper`` keeps the model with
the best score so far as ``output_dir/best/``: a loadable model (``save_pretrained`` files and the tokenizer) plus
``best.json`` (step, metric, value), written as ``best.partial`` and renamed when complete, so ``best/`` is always
whole; each new best is logged to ``metrics.jsonl`` as ``"kind": "best"``, and a resumed run reads ``best.json``
so it only replaces the model with a better one. Only a resumed run continues an earlier best: any other run
removes a ``best/`` it finds (with a log line), so another run's model is never the bar nor the result. Without a probe the score is the held-out masked-LM loss of each
evaluation (lower is better; the evaluation before the first step included).

Masked-LM loss alone cannot say which checkpoint helps a task, so ``CheckpointProbe`` fine-tunes a classifier
(``bert_domain_ft.evaluation.probe``) from the starting model and from every checkpoint on the user's labelled
sentences, and logs its test accuracy and macro-F1 (mean ± std over seeds, and the per-seed scores) as
``"kind": "probe"`` records (``bert-domain-ft plot`` draws them). Step 0 is the starting model: as loaded, after
the head warm-up if one ran (the warm-up leaves the encoder as loaded; it trains a fresh pooler with the NSP
head); its record names ``--bert_model``. Every later record adds ``paired_vs_start``: the checkpoint's accuracy
minus the starting model's, seed by seed (same seeds: same classifier start and data order), with its 95%
interval and verdict. With a probe, the score of ``--save_best`` is the probe's mean accuracy: the starting model
is the first candidate, and a checkpoint replaces the best only when it beats the starting model beyond the
seeds' noise (the interval lies above 0) with a higher mean accuracy than the best so far. The run ends with one
line saying which model won. The probe runs on the main process while the others wait; its randomness is its own
(the training run stays exactly resumable).

    selection = attach_model_selection(config, context, setup, tokenizer, start)
    loop.warm_up_heads(start, with_nsp)
    selection.score_starting_model(start)          # step 0
    loop.run(start); selection.report()
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from bert_domain_ft.errors import UserError
from bert_domain_ft.evaluation.config import ProbeConfig
from bert_domain_ft.evaluation.probe import Prober, ProbeResult
from bert_domain_ft.evaluation.probe_report import PairedDifference, paired_difference
from bert_domain_ft.files import (
    TEMPORARY_SUFFIX,
    fresh_directory,
    os_errors_as_user_errors,
    remove_path,
    write_directory_atomic,
    write_json_atomic,
)
from bert_domain_ft.kernels.attention import stock_attention
from bert_domain_ft.model.saving import SaveFormat, save_model
from bert_domain_ft.training.checkpoints import (
    OPTIMIZER_FILE,
    RNG_FILE,
    SCALER_FILE,
    SCHEDULER_FILE,
    STATE_FILE,
    TrainingPosition,
)
from bert_domain_ft.training.config import FinetuneConfig
from bert_domain_ft.training.distributed import DistributedContext, barrier
from bert_domain_ft.training.loop import TrainingSetup
from bert_domain_ft.training.metrics import MetricsLog

logger = logging.getLogger(__name__)

BEST_DIRECTORY = "best"
BEST_INFO_FILE = "best.json"
# Files of a checkpoint that belong to the training state, not to the model: not copied into best/.
_TRAINING_STATE_FILES = {OPTIMIZER_FILE, SCHEDULER_FILE, SCALER_FILE, RNG_FILE, STATE_FILE}


def model_writer(model: nn.Module, tokenizer: Any | None, save_format: SaveFormat) -> Callable[[Path], None]:
    """A ``write(directory)`` saving the in-memory ``model`` (and tokenizer) in the run's ``save_format``
    (``model.saving``): how a run writes its final model, ``best/`` and the starting model the probe reads."""

    def write(directory: Path) -> None:
        with stock_attention(model):
            save_model(model, directory, tokenizer, save_format)

    return write


def checkpoint_copier(checkpoint: Path) -> Callable[[Path], None]:
    """A ``write(directory)`` copying the model and tokenizer files of a checkpoint (not its training state), with
    the folders its model has (sentence-transformers' ``1_Pooling/``…)."""

    def write(directory: Path) -> None:
        for path in sorted(Path(checkpoint).iterdir()):
            if path.is_dir():
                shutil.copytree(path, directory / path.name)
            elif path.is_file() and path.name not in _TRAINING_STATE_FILES:
                shutil.copy2(path, directory / path.name)

    return write


class BestModelKeeper:
    """Writes ``output_dir/best/`` whenever ``consider`` sees a better value of ``metric`` (main process only)."""

    def __init__(
        self, output_dir: Path, metrics: MetricsLog, metric: str, higher_is_better: bool, resumed: bool = False
    ):
        self.directory = Path(output_dir) / BEST_DIRECTORY
        self.metrics = metrics
        self.metric = metric
        self.higher_is_better = higher_is_better
        self.best_value: float | None = None
        self.best_step: int | None = None
        if resumed:
            self._read_previous()
        elif os.path.lexists(self.directory):
            self._remove_earlier()

    def _remove_earlier(self) -> None:
        """A run that is not resumed never keeps another run's best model, nor measures itself against it."""
        logger.warning("%s: removing the best model of an earlier run (%s); this run keeps its own", self.directory,
                       _describe_best(self.directory))  # fmt: skip
        with os_errors_as_user_errors(self.directory):
            remove_path(self.directory)

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

        def write_with_info(directory: Path) -> None:
            write(directory)
            write_json_atomic(directory / BEST_INFO_FILE, {"step": step, "metric": self.metric, "value": value})

        try:
            write_directory_atomic(self.directory, write_with_info)
        except UserError as error:
            if self.best_step is None:
                raise
            raise UserError(f"{error}; the previous best model in {self.directory} is intact") from error
        self.best_value, self.best_step = value, step
        self.metrics.append({"kind": "best", "step": step, "metric": self.metric, "value": value})
        logger.info("new best %s %.4g at step %d: saved to %s", self.metric, value, step, self.directory)


def _describe_best(directory: Path) -> str:
    """``step S, metric V`` from a best/ directory's ``best.json``, for log lines; "no best.json" otherwise."""
    try:
        info = json.loads((directory / BEST_INFO_FILE).read_text(encoding="utf-8"))
        return f"step {info['step']}, {info['metric']} {info['value']:.4g}"
    except (OSError, ValueError, TypeError, KeyError):
        return f"no readable {BEST_INFO_FILE}"


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
        probe_config: ProbeConfig,
        context: DistributedContext,
        metrics: MetricsLog,
        keeper: BestModelKeeper | None = None,
    ):
        self.context = context
        self.metrics = metrics
        self.keeper = keeper
        self.starting_model_name = str(probe_config.models[0])  # the model --bert_model names
        self.prober = Prober(probe_config)
        logger.info("probe on the starting model and every checkpoint: %s", self.prober.describe())

    def _probe(self, model: str | Path, step: int) -> tuple[ProbeResult, dict[str, Any]]:
        started = time.perf_counter()
        result = self.prober.probe(str(model), name=f"step {step}")
        if step == 0:  # the starting model's files are temporary: the record names the model it was loaded from
            result = dataclasses.replace(result, model=self.starting_model_name)
        record = {"kind": "probe", "step": step, **result.to_json()}
        record["seconds"] = round(time.perf_counter() - started, 1)
        return result, record

    def probe_starting_model(self, model: nn.Module, tokenizer: Any, output_dir: Path, save_format: SaveFormat) -> None:
        """Step 0: write ``model`` (as it is now, with ``tokenizer``, in ``save_format``) to disk, probe it, log it
        and make it the first best model (main process); every process returns together."""
        if self.context.is_main:
            directory = Path(output_dir) / _STARTING_MODEL
            try:
                with os_errors_as_user_errors(directory):
                    fresh_directory(directory)
                model_writer(model, tokenizer, save_format)(directory)
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


EVALUATION_METRIC = "mlm_loss"  # the --save_best metric without a probe (lower is better)


class ModelSelection:
    """What ``attach_model_selection`` set up; the two calls it needs around the training loop."""

    def __init__(self, setup: TrainingSetup, tokenizer: Any, output_dir: Path, save_best: bool):
        self.setup = setup
        self.tokenizer = tokenizer
        self.output_dir = output_dir
        self.save_best = save_best
        self.probe: CheckpointProbe | None = None

    def score_starting_model(self, start: TrainingPosition) -> None:
        """With a probe, on a fresh run: probe the model as it is now (call it right before the first step)."""
        if self.probe is not None and start.global_step == 0:
            save_format = self.setup.checkpoints.save_format
            self.probe.probe_starting_model(self.setup.model, self.tokenizer, self.output_dir, save_format)

    def report(self) -> None:
        """With a probe: the one line saying whether any checkpoint beat the starting model (main process)."""
        if self.probe is not None and self.setup.context.is_main:
            line = self.probe.summary(saving_best=self.save_best)
            if line is not None:
                logger.info("%s", line)


def attach_model_selection(
    config: FinetuneConfig, context: DistributedContext, setup: TrainingSetup, tokenizer: Any, start: TrainingPosition
) -> ModelSelection:
    """Set ``setup.on_checkpoint`` / ``setup.on_evaluated`` as the config asks (reading the probe's files now, so
    a bad file fails before training); the returned ``ModelSelection`` scores step 0 and reports at the end."""
    with_probe = config.probe_train is not None
    selection = ModelSelection(setup, tokenizer, config.output_dir, config.save_best)
    keeper = None
    if config.save_best and context.is_main:
        metric, higher = (PROBE_METRIC, True) if with_probe else (EVALUATION_METRIC, False)
        keeper = BestModelKeeper(
            config.output_dir, setup.metrics, metric, higher_is_better=higher, resumed=config.resume
        )
    if config.save_best and not with_probe and setup.evaluate is None:
        logger.warning("--save_best: no held-out set is evaluated (pregenerate with --holdout_fraction), so no best/")
    if config.save_best and with_probe and config.probe_seeds < 2:
        logger.warning("--save_best with --probe_seeds 1: no interval, so no checkpoint can be shown to beat the "
                       "starting model; best/ will hold it (use --probe_seeds 5)")  # fmt: skip
    if with_probe:
        selection.probe = CheckpointProbe(probe_config_for(config), context, setup.metrics, keeper)
        setup.on_checkpoint = selection.probe.on_checkpoint
    elif keeper is not None:
        write = model_writer(setup.model, tokenizer, setup.checkpoints.save_format)
        setup.on_evaluated = lambda step, results: _consider(keeper, step, results, write)
    return selection


def _consider(keeper: BestModelKeeper, step: int, results: dict[str, float], write: Any) -> None:
    if EVALUATION_METRIC in results:
        keeper.consider(step, float(results[EVALUATION_METRIC]), write)
