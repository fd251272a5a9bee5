"""Choosing among a run's models: ``--save_best`` and the downstream probe (``--probe_train/--probe_test``).

Wires ``BestModelKeeper`` and ``CheckpointProbe`` into a ``TrainingSetup``'s hooks: with a probe, every
checkpoint is probed (and the base model once, at step 0) and ``best/`` follows the probe's mean accuracy;
without one, ``best/`` follows the held-out masked-LM loss of each evaluation.

    attach_model_selection(config, context, setup, tokenizer, start)   # before TrainingLoop(setup, …).run(start)
"""

from __future__ import annotations

import logging
from typing import Any

from .best_model import BestModelKeeper, model_writer
from .checkpoint_probe import PROBE_METRIC, CheckpointProbe
from .checkpoints import TrainingPosition
from .config import FinetuneConfig
from .distributed import DistributedContext
from .loop import TrainingSetup

logger = logging.getLogger(__name__)

EVALUATION_METRIC = "mlm_loss"  # the --save_best metric without a probe (lower is better)


def attach_model_selection(
    config: FinetuneConfig, context: DistributedContext, setup: TrainingSetup, tokenizer: Any, start: TrainingPosition
) -> None:
    """Set ``setup.on_checkpoint`` / ``setup.on_evaluated`` as the config asks; probe the base model on a fresh run."""
    with_probe = config.probe_train is not None
    keeper = None
    if config.save_best and context.is_main:
        metric, higher = (PROBE_METRIC, True) if with_probe else (EVALUATION_METRIC, False)
        keeper = BestModelKeeper(config.output_dir, setup.metrics, metric, higher_is_better=higher)
    if config.save_best and not with_probe and setup.evaluate is None:
        logger.warning("--save_best: no held-out set is evaluated (pregenerate with --holdout_fraction), so no best/")
    if with_probe:
        probe = CheckpointProbe(config, context, setup.metrics, keeper)
        setup.on_checkpoint = probe.on_checkpoint
        if start.global_step == 0:
            probe.probe_model(config.bert_model, step=0)  # the reference every checkpoint is compared with
    elif keeper is not None:
        write = model_writer(setup.model, tokenizer)
        setup.on_evaluated = lambda step, results: _consider(keeper, step, results, write)


def _consider(keeper: BestModelKeeper, step: int, results: dict[str, float], write: Any) -> None:
    if EVALUATION_METRIC in results:
        keeper.consider(step, float(results[EVALUATION_METRIC]), write)
