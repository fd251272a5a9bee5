"""``finetune --probe_train F --probe_test F``: the downstream probe on the base model and every saved checkpoint.

Masked-LM loss alone cannot say which checkpoint helps a task; the probe (``bert_domain_ft.probe``) fine-tunes a
classifier from each checkpoint on the user's labelled sentences and logs its test accuracy and macro-F1 (mean ±
std over seeds) to ``metrics.jsonl`` as ``"kind": "probe"`` records, so the user can pick the checkpoint that helps
(``bert-domain-ft plot`` draws them). The base model is probed once at step 0 as the reference. With
``--save_best`` the checkpoint with the highest mean probe accuracy becomes ``output_dir/best/``. The probe runs
on the main process while the others wait; its randomness is its own (the training run stays exactly resumable).

    probe = CheckpointProbe(config, context, metrics, keeper=None)
    probe.probe_model(config.bert_model, step=0)      # then: setup.on_checkpoint = probe.on_checkpoint
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..probe import ProbeConfig, Prober
from .best_model import BestModelKeeper, checkpoint_copier
from .config import FinetuneConfig
from .distributed import DistributedContext, barrier
from .metrics import MetricsLog

logger = logging.getLogger(__name__)

PROBE_METRIC = "probe_accuracy"  # the --save_best metric when a probe is configured (higher is better)


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
        self.prober = Prober(probe_config_for(config))
        logger.info("probe on every checkpoint: %s", self.prober.describe())

    def probe_model(self, model: str | Path, step: int) -> None:
        """Probe ``model`` and log it at ``step`` (main process); every process returns together."""
        if self.context.is_main:
            started = time.perf_counter()
            result = self.prober.probe(str(model), name=f"step {step}")
            record = {"kind": "probe", "step": step, **result.to_json()}
            record["seconds"] = round(time.perf_counter() - started, 1)
            self.metrics.append(record)
            if self.keeper is not None and step > 0:  # the base model is the reference, not a candidate
                self.keeper.consider(step, result.accuracy_mean, checkpoint_copier(Path(model)))
        barrier(self.context)

    def on_checkpoint(self, directory: Path, step: int) -> None:
        """``TrainingSetup.on_checkpoint``: probe the checkpoint just written."""
        self.probe_model(directory, step)
