"""Choosing among a run's models: ``--save_best`` and the downstream probe (``--probe_train/--probe_test``).

Wires ``BestModelKeeper`` and ``CheckpointProbe`` into a ``TrainingSetup``'s hooks. With a probe, the starting
model (step 0: as loaded, after the head warm-up if one ran) is probed and is the first candidate for ``best/``;
each checkpoint is probed and replaces the best only when it beats the starting model beyond the seeds' noise
(paired 95% interval above 0) with a higher mean accuracy than the best so far; the run ends with one line
saying which model won. Without a probe, ``best/`` follows the held-out masked-LM loss of each evaluation (the
evaluation before the first step included).

    selection = attach_model_selection(config, context, setup, tokenizer, start)
    warm_up_fresh_heads(setup, settings, config, with_nsp, start)
    selection.score_starting_model(start)          # step 0
    TrainingLoop(setup, settings).run(start); selection.report()
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .best_model import BestModelKeeper, model_writer
from .checkpoint_probe import PROBE_METRIC, CheckpointProbe
from .checkpoints import TrainingPosition
from .config import FinetuneConfig
from .distributed import DistributedContext
from .loop import TrainingSetup

logger = logging.getLogger(__name__)

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
            self.probe.probe_starting_model(self.setup.model, self.tokenizer, self.output_dir)

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
        keeper = BestModelKeeper(config.output_dir, setup.metrics, metric, higher_is_better=higher)
    if config.save_best and not with_probe and setup.evaluate is None:
        logger.warning("--save_best: no held-out set is evaluated (pregenerate with --holdout_fraction), so no best/")
    if config.save_best and with_probe and config.probe_seeds < 2:
        logger.warning("--save_best with --probe_seeds 1: no interval, so no checkpoint can be shown to beat the "
                       "starting model; best/ will hold it (use --probe_seeds 5)")  # fmt: skip
    if with_probe:
        selection.probe = CheckpointProbe(config, context, setup.metrics, keeper)
        setup.on_checkpoint = selection.probe.on_checkpoint
    elif keeper is not None:
        write = model_writer(setup.model, tokenizer)
        setup.on_evaluated = lambda step, results: _consider(keeper, step, results, write)
    return selection


def _consider(keeper: BestModelKeeper, step: int, results: dict[str, float], write: Any) -> None:
    if EVALUATION_METRIC in results:
        keeper.consider(step, float(results[EVALUATION_METRIC]), write)
