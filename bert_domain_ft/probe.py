"""The downstream probe: does adaptation help a real task? Fine-tune a classifier from each model and compare.

For every model (a base model, a finetune run, its checkpoints) and every seed, a sequence classifier
(``AutoModelForSequenceClassification``: the encoder, its pooler and a new linear layer) is fine-tuned on the same
labelled training sentences in the same order and scored on the test sentences; accuracy and macro-F1 are reported
as mean ± standard deviation over the seeds. Same seeds, same data: the same numbers, run after run. Seed s gives
every model the same classifier head, dropout stream and data order, so each model after the first is compared
with the first seed by seed (``ProbeResult.paired_with``: mean difference and its 95% Student's t interval).

    results = run_probe(ProbeConfig(models=["base", "run"], train=Path("train.csv"), test=Path("test.csv")))
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import UserError
from .probe_data import LabelledSet, class_names, read_probe_pair
from .probe_statistics import PairedDifference, paired_difference

if TYPE_CHECKING:
    from .probe_training import ClassifierFactory, EncodedSet

logger = logging.getLogger(__name__)


@dataclass
class ProbeConfig:
    """Everything ``run_probe`` needs; ``__post_init__`` rejects impossible values."""

    models: list[str]
    """Model directories (or hub ids) to compare, in display order; the first is the reference (e.g. the base)."""
    train: Path
    """Labelled training sentences: CSV with a header row, or JSON lines."""
    test: Path
    """Labelled test sentences, same format and exactly the same classes; ideally from other documents."""
    text_column: str = "text"
    """Column (CSV) or key (JSON lines) holding the sentence."""
    label_column: str = "label"
    """Column or key holding the class name."""
    seeds: int = 5
    """Classifiers trained per model, with seeds seed, seed+1, …; the spread over them is the ± in the table and
    the paired 95% interval against the first model needs at least 2 (5 tells a few points apart on ~100 tests)."""
    seed: int = 0
    """First seed."""
    epochs: int = 4
    """Passes over the training sentences per classifier."""
    batch_size: int = 16
    """Training sentences per optimizer step."""
    learning_rate: float = 1e-4
    """Peak AdamW learning rate of the classifier (whole model), with 10% linear warm-up then linear decay."""
    max_seq_len: int = 64
    """Tokens per sentence, [CLS] and [SEP] included; longer sentences are cut."""
    tokenizer: str | None = None
    """Tokenizer for every model; None uses each model's own (finetune saves it next to the model)."""
    json_output: Path | None = None
    """Also write the results as a JSON list (one object per model) to this file."""
    plot_output: Path | None = None
    """Also draw a bar chart with error bars into this PNG (needs matplotlib)."""
    no_cuda: bool = False
    """Stay on the CPU even when a GPU is available."""
    show_progress: bool = True
    """tqdm progress bars."""

    def __post_init__(self) -> None:
        self.models = [str(model) for model in self.models]
        self.train, self.test = Path(self.train), Path(self.test)
        self.json_output = Path(self.json_output) if self.json_output is not None else None
        self.plot_output = Path(self.plot_output) if self.plot_output is not None else None
        if not self.models:
            raise ValueError("give at least one model to probe with --models (e.g. the base model and your run)")
        if len(set(self.models)) != len(self.models):
            raise ValueError("--models lists a model twice; give each model once")
        for name in ("seeds", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning_rate must be positive, got {self.learning_rate}")
        if not 8 <= self.max_seq_len <= 65535:
            raise ValueError("--max_seq_len must be between 8 and 65535 (sentences rarely need more than 128)")
        if not self.text_column or not self.label_column or self.text_column == self.label_column:
            raise ValueError("--text_column and --label_column must name two different columns")

    @property
    def seed_list(self) -> list[int]:
        return [self.seed + offset for offset in range(self.seeds)]


@dataclass(frozen=True)
class ProbeResult:
    """Test scores of the classifiers fine-tuned from one model, one entry per seed (fractions 0..1)."""

    model: str
    seeds: tuple[int, ...]
    accuracies: tuple[float, ...]
    macro_f1s: tuple[float, ...]
    name: str = field(default="", compare=False)  # label for tables and charts; the model itself when empty

    @property
    def label(self) -> str:
        return self.name or self.model

    @property
    def accuracy_mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def accuracy_std(self) -> float:
        return _sample_std(self.accuracies)

    @property
    def macro_f1_mean(self) -> float:
        return statistics.fmean(self.macro_f1s)

    @property
    def macro_f1_std(self) -> float:
        return _sample_std(self.macro_f1s)

    def paired_with(self, reference: ProbeResult, metric: str = "accuracy") -> PairedDifference:
        """This model minus ``reference`` seed by seed (``metric``: "accuracy" or "macro_f1"), with its interval."""
        if self.seeds != reference.seeds:
            raise ValueError(f"{self.label} and {reference.label} were probed with different seeds: not paired")
        scores = {
            "accuracy": (self.accuracies, reference.accuracies),
            "macro_f1": (self.macro_f1s, reference.macro_f1s),
        }
        return paired_difference(*scores[metric])

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "accuracy_mean": self.accuracy_mean,
            "accuracy_std": self.accuracy_std,
            "macro_f1_mean": self.macro_f1_mean,
            "macro_f1_std": self.macro_f1_std,
            "seeds": list(self.seeds),
            "accuracy_per_seed": list(self.accuracies),
            "macro_f1_per_seed": list(self.macro_f1s),
        }


def _sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation (n − 1 in the denominator); 0 for a single seed."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    from .pretraining_model import quiet_transformers

    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, TypeError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(
            f"{name}: cannot load a tokenizer ({first_line}); give a model directory with tokenizer files "
            "or name one with --tokenizer"
        ) from None


def classifier_from_pretrained(model: str) -> ClassifierFactory:
    """A ``ClassifierFactory`` loading ``model``; the weights it lacks (the classification layer, a missing
    pooler) are drawn from the seed alone, so every model probed with a seed starts from the same head."""

    def make(num_labels: int, seed: int) -> Any:
        from transformers import AutoModelForSequenceClassification

        from .pretraining_model import quiet_transformers
        from .probe_training import draw_new_weights

        try:
            with quiet_transformers():
                classifier, loading = AutoModelForSequenceClassification.from_pretrained(
                    model, num_labels=num_labels, output_loading_info=True
                )
        except (OSError, ValueError) as error:
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise UserError(f"{model}: cannot load the model ({first_line}); give a model directory") from None
        std = float(getattr(classifier.config, "initializer_range", 0.02))
        draw_new_weights(classifier, loading.get("missing_keys", ()), seed, std)
        return classifier

    return make


class Prober:
    """The labelled data read and checked once, then ``probe(model)`` for as many models as needed."""

    def __init__(self, config: ProbeConfig):
        from .probe_training import ClassifierRecipe

        self.config = config
        self.train, self.test = read_probe_pair(config.train, config.test, config.text_column, config.label_column)
        self.classes = class_names(self.train, self.test)
        self.recipe = ClassifierRecipe(
            epochs=config.epochs, batch_size=config.batch_size, learning_rate=config.learning_rate
        )
        self._encoded: dict[str, tuple[EncodedSet, EncodedSet]] = {}  # tokenizer name → (train, test) token ids

    def describe(self) -> str:
        return (
            f"{len(self.classes)} classes, {len(self.train)} training / {len(self.test)} test sentences, "
            f"{self.config.seeds} seed(s) × {self.config.epochs} epoch(s)"
        )

    def _label_ids(self, labelled: LabelledSet) -> np.ndarray:
        index = {name: position for position, name in enumerate(self.classes)}
        return np.asarray([index[label] for label in labelled.labels], dtype=np.int64)

    def _encoded_sets(self, tokenizer_name: str) -> tuple[EncodedSet, EncodedSet]:
        from .probe_training import encode_set

        if tokenizer_name not in self._encoded:
            tokenizer = _load_tokenizer(tokenizer_name)
            length = self.config.max_seq_len
            self._encoded[tokenizer_name] = (
                encode_set(tokenizer, self.train.texts, self._label_ids(self.train), length),
                encode_set(tokenizer, self.test.texts, self._label_ids(self.test), length),
            )
        return self._encoded[tokenizer_name]

    def probe(self, model: str, name: str = "", make_classifier: ClassifierFactory | None = None) -> ProbeResult:
        """Fine-tune and score one classifier per seed from ``model`` (or ``make_classifier(num_labels, seed)``)."""
        import torch
        from tqdm.auto import tqdm

        from .probe_training import steps_per_run, train_and_score

        train, test = self._encoded_sets(self.config.tokenizer or model)
        factory = make_classifier or classifier_from_pretrained(model)
        device = torch.device("cuda" if torch.cuda.is_available() and not self.config.no_cuda else "cpu")
        seeds = self.config.seed_list
        accuracies, macro_f1s = [], []
        total = steps_per_run(len(train), self.recipe) * len(seeds)
        with tqdm(
            total=total, desc=f"probe {name or model}", unit="step", disable=not self.config.show_progress
        ) as bar:
            for seed in seeds:
                accuracy, macro_f1 = train_and_score(
                    factory, train, test, len(self.classes), self.recipe, seed, device, bar
                )
                accuracies.append(accuracy)
                macro_f1s.append(macro_f1)
        result = ProbeResult(model, tuple(seeds), tuple(accuracies), tuple(macro_f1s), name=name)
        logger.info(
            "probe %s: accuracy %.2f%% ± %.2f, macro-F1 %.2f%% ± %.2f over %d seed(s)",
            result.label,
            100 * result.accuracy_mean,
            100 * result.accuracy_std,
            100 * result.macro_f1_mean,
            100 * result.macro_f1_std,
            len(seeds),
        )
        return result


def run_probe(config: ProbeConfig, names: Sequence[str] | None = None) -> list[ProbeResult]:
    """Probe every model of ``config`` (``names`` label them in tables); writes the JSON and PNG it asks for."""
    from .model_loading import check_model_files
    from .probe_report import require_matplotlib, write_probe_json, write_probe_plot

    if names is not None and len(names) != len(config.models):
        raise ValueError(f"{len(names)} names for {len(config.models)} models; give one name per model")
    if config.plot_output is not None:
        require_matplotlib()  # fail before the minutes of training, not after
    for model in config.models:  # a damaged model is one line now, not a traceback after the others' training
        check_model_files(model)
    prober = Prober(config)
    logger.info("probe: %s", prober.describe())
    labels = list(names) if names is not None else [""] * len(config.models)
    results = [prober.probe(model, name=label) for model, label in zip(config.models, labels)]
    if config.json_output is not None:
        write_probe_json(config.json_output, results)
    if config.plot_output is not None:
        write_probe_plot(config.plot_output, results, prober.describe())
    return results
