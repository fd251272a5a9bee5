"""The downstream probe: does adaptation help a real task? Fine-tune a classifier from each model and compare.

For every model (a base model, a finetune run, its checkpoints) and every seed, a sequence classifier
(``AutoModelForSequenceClassification``: the encoder, its pooler and a new linear layer) is fine-tuned on the same
labelled training sentences in the same order and scored on the test sentences (``train_and_score``); accuracy and
macro-F1 are reported as mean ± standard deviation over the seeds (``probe_report.ProbeResult``). Each run is
small and fully determined by its seed, and the same for every model probed with that seed: each weight the
checkpoint lacks (the classification layer; the pooler of a checkpoint without one) is drawn from its own
generator seeded by (seed, parameter name) (``draw_new_weights``), so two encoders start from the same head
whatever else their loading drew; dropout draws from ``torch.manual_seed(seed)`` set again once the model is
built; and the order of the training sentences in epoch e is drawn from ``numpy.random.default_rng([seed, e])``
(``epoch_batches``). Everything runs inside ``torch.random.fork_rng``, leaving the caller's random state as it
was. Same seeds, same data: the same numbers, run after run, and each model after the first is compared with the
first seed by seed (``ProbeResult.paired_with``). ``Prober`` reads the labelled files once for many models.

    results = run_probe(ProbeConfig(models=["base", "run"], train=Path("train.csv"), test=Path("test.csv")))
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from bert_domain_ft.corpus.task_files import LabelledSet, class_names, read_probe_pair
from bert_domain_ft.errors import UserError, first_line
from bert_domain_ft.evaluation.config import ProbeConfig
from bert_domain_ft.evaluation.probe_report import (
    ProbeResult,
    require_matplotlib,
    short_model_names,
    write_probe_json,
    write_probe_plot,
)
from bert_domain_ft.model.optimization import build_optimizer, build_scheduler, parameter_groups, warmup_steps_for

logger = logging.getLogger(__name__)

BUCKET_BATCHES = 8  # batches per pool of similar-length sentences
# ``make_classifier(num_labels, seed)`` returns a fresh sequence classifier whose new weights depend on the seed only.
ClassifierFactory = Callable[[int, int], nn.Module]


@dataclass(frozen=True)
class ClassifierRecipe:
    """How each classifier is trained (AdamW, linear warm-up then linear decay, as in BERT's fine-tuning)."""

    epochs: int = 4  # passes over the training sentences
    batch_size: int = 16  # sentences per optimizer step
    learning_rate: float = 1e-4  # peak AdamW learning rate
    weight_decay: float = 0.01  # decoupled, never on biases and LayerNorm weights
    warmup_proportion: float = 0.1  # share of the steps with a linearly rising learning rate
    max_grad_norm: float = 1.0  # clip the gradients' global L2 norm (0: off)
    eval_batch_size: int = 64  # sentences per forward pass when predicting


@dataclass(frozen=True)
class EncodedSet:
    """Token ids of each sentence (no padding; ``[CLS] … [SEP]``) and class indices (N,) int64."""

    input_ids: tuple[tuple[int, ...], ...]
    label_ids: np.ndarray
    pad_token_id: int

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_set(tokenizer: object, texts: Sequence[str], label_ids: np.ndarray, max_seq_len: int) -> EncodedSet:
    """Tokenize ``texts`` with ``tokenizer`` (a transformers tokenizer), cut to ``max_seq_len`` tokens."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_seq_len)  # type: ignore[operator]
    pad = tokenizer.pad_token_id  # type: ignore[attr-defined]
    return EncodedSet(
        input_ids=tuple(tuple(ids) for ids in encoded["input_ids"]),
        label_ids=np.asarray(label_ids, dtype=np.int64),
        pad_token_id=0 if pad is None else int(pad),
    )


def collate(encoded: EncodedSet, rows: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    """A batch padded to its longest sentence: input_ids and attention_mask (B, L), labels (B,)."""
    longest = max(len(encoded.input_ids[row]) for row in rows)
    input_ids = np.full((len(rows), longest), encoded.pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), longest), dtype=np.int64)
    for slot, row in enumerate(rows):
        ids = encoded.input_ids[row]
        input_ids[slot, : len(ids)] = ids
        attention_mask[slot, : len(ids)] = 1
    return {
        "input_ids": torch.from_numpy(input_ids).to(device),
        "attention_mask": torch.from_numpy(attention_mask).to(device),
        "labels": torch.from_numpy(encoded.label_ids[rows]).to(device),
    }


def accuracy_score(gold: np.ndarray, predicted: np.ndarray) -> float:
    """Fraction (0..1) of predictions equal to the gold class."""
    return float(np.mean(gold == predicted)) if gold.size else 0.0


def macro_f1_score(gold: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """Unweighted mean over the ``num_classes`` classes of F1 = 2·TP / (2·TP + FP + FN); 0 for a class never
    predicted nor present."""
    scores = []
    for label in range(num_classes):
        true_positive = int(np.sum((predicted == label) & (gold == label)))
        false_positive = int(np.sum((predicted == label) & (gold != label)))
        false_negative = int(np.sum((predicted != label) & (gold == label)))
        denominator = 2 * true_positive + false_positive + false_negative
        scores.append(2 * true_positive / denominator if denominator else 0.0)
    return float(np.mean(scores))


def draw_new_weights(model: nn.Module, parameter_names: Iterable[str], seed: int, std: float) -> None:
    """Re-draw the named parameters (those a checkpoint lacked) in place, as BERT initialises them: matrices
    ~ N(0, ``std``), LayerNorm weights 1, other vectors (biases) 0. Each matrix has its own generator, seeded by
    (``seed``, its name): the same new head for every model, however many numbers loading the rest consumed."""
    with torch.no_grad():
        for name in sorted(parameter_names):
            parameter = model.get_parameter(name)
            if parameter.dim() >= 2:
                state = np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(2, np.uint32)
                generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
            elif name.endswith("weight") and isinstance(model.get_submodule(name.rpartition(".")[0]), nn.LayerNorm):
                parameter.fill_(1.0)
            else:
                parameter.zero_()


def epoch_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices of each batch of one epoch: a random order, cut into pools of ``BUCKET_BATCHES`` batches that
    are sorted by length (less padding: ~1.5× faster on sentences), then the batches themselves shuffled."""
    order = rng.permutation(len(lengths))
    pool_size = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(order), pool_size):
        pool = order[start : start + pool_size]
        pool = pool[np.argsort(lengths[pool], kind="stable")]
        batches += [pool[offset : offset + batch_size] for offset in range(0, len(pool), batch_size)]
    return [batches[index] for index in rng.permutation(len(batches))]


def _train(
    model: nn.Module, train: EncodedSet, recipe: ClassifierRecipe, seed: int, device: torch.device, progress: tqdm
) -> None:
    steps_per_epoch = math.ceil(len(train) / recipe.batch_size)
    total_steps = steps_per_epoch * recipe.epochs
    groups = parameter_groups(model, recipe.learning_rate, recipe.weight_decay)
    optimizer = build_optimizer(groups, recipe.learning_rate, 1e-8, device)
    scheduler = build_scheduler(optimizer, total_steps, warmup_steps_for(total_steps, recipe.warmup_proportion))
    lengths = np.asarray([len(ids) for ids in train.input_ids])
    model.train()
    for epoch in range(recipe.epochs):
        for rows in epoch_batches(lengths, recipe.batch_size, np.random.default_rng([seed, epoch])):
            batch = collate(train, rows, device)
            loss = model(**batch).loss
            loss.backward()
            if recipe.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            progress.update(1)


def predict(model: nn.Module, encoded: EncodedSet, batch_size: int, device: torch.device) -> np.ndarray:
    """Predicted class index (N,) of every sentence, in eval mode (no dropout)."""
    model.eval()
    predictions = []
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            batch = collate(encoded, np.arange(start, min(start + batch_size, len(encoded))), device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            predictions.append(logits.argmax(dim=-1).cpu().numpy())
    return np.concatenate(predictions) if predictions else np.zeros(0, dtype=np.int64)


def steps_per_run(num_train: int, recipe: ClassifierRecipe) -> int:
    """Optimizer steps of one classifier's training."""
    return math.ceil(num_train / recipe.batch_size) * recipe.epochs


def train_and_score(
    make_classifier: ClassifierFactory,
    train: EncodedSet,
    test: EncodedSet,
    num_classes: int,
    recipe: ClassifierRecipe,
    seed: int,
    device: torch.device,
    progress: tqdm | None = None,
) -> tuple[float, float]:
    """(accuracy, macro-F1) on ``test`` of a classifier trained on ``train`` with ``seed``; caller's RNG untouched."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = make_classifier(num_classes, seed).to(device)
        torch.manual_seed(seed)  # dropout's stream: the same for every model, whatever loading it drew
        bar = progress if progress is not None else tqdm(disable=True)
        _train(model, train, recipe, seed, device, bar)
        predicted = predict(model, test, recipe.eval_batch_size, device)
    return accuracy_score(test.label_ids, predicted), macro_f1_score(test.label_ids, predicted, num_classes)


def _load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    from bert_domain_ft.model.pretraining import quiet_transformers

    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, TypeError) as error:
        raise UserError(
            f"{name}: cannot load a tokenizer ({first_line(error)}); give a model directory with tokenizer files "
            "or name one with --tokenizer"
        ) from None


def classifier_from_pretrained(model: str) -> ClassifierFactory:
    """A ``ClassifierFactory`` loading ``model``; the weights it lacks (the classification layer, a missing
    pooler) are drawn from the seed alone, so every model probed with a seed starts from the same head."""

    def make(num_labels: int, seed: int) -> Any:
        from transformers import AutoModelForSequenceClassification

        from bert_domain_ft.model.pretraining import quiet_transformers

        try:
            with quiet_transformers():
                classifier, loading = AutoModelForSequenceClassification.from_pretrained(
                    model, num_labels=num_labels, output_loading_info=True
                )
        except (OSError, ValueError) as error:
            raise UserError(f"{model}: cannot load the model ({first_line(error)}); give a model directory") from None
        std = float(getattr(classifier.config, "initializer_range", 0.02))
        draw_new_weights(classifier, loading.get("missing_keys", ()), seed, std)
        return classifier

    return make


def check_positions(model: str, max_seq_len: int) -> None:
    """Refuse a ``max_seq_len`` longer than ``model`` takes (``usable_positions``: RoBERTa-style models 2 fewer
    than their table), from its configuration alone, before any classifier trains."""
    from transformers import AutoConfig

    from bert_domain_ft.model.loading import usable_positions
    from bert_domain_ft.model.pretraining import quiet_transformers

    try:
        with quiet_transformers():
            settings = AutoConfig.from_pretrained(model)
    except (OSError, ValueError, KeyError):
        return  # loading the model says why, in one line
    if isinstance(getattr(settings, "max_position_embeddings", None), int):
        limit = usable_positions(settings)
        if max_seq_len > limit:
            raise UserError(
                f"--max_seq_len {max_seq_len}: {model} takes at most {limit} tokens; give --max_seq_len {limit} or less"
            )


class Prober:
    """The labelled data read and checked once, then ``probe(model)`` for as many models as needed."""

    def __init__(self, config: ProbeConfig):
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
    """Probe every model of ``config`` (``names``, else ``config.names``, else ``short_model_names`` label them in
    tables and the chart); writes the JSON and PNG it asks for."""
    from bert_domain_ft.model.loading import check_model_files

    if names is not None and len(names) != len(config.models):
        raise ValueError(f"{len(names)} names for {len(config.models)} models; give one name per model")
    if config.plot_output is not None:
        require_matplotlib()  # fail before the minutes of training, not after
    for model in config.models:  # a damaged model is one line now, not a traceback after the others' training
        check_model_files(model)
        check_positions(model, config.max_seq_len)
    prober = Prober(config)
    logger.info("probe: %s", prober.describe())
    labels = list(names or config.names or short_model_names(config.models))
    results = [prober.probe(model, name=label) for model, label in zip(config.models, labels)]
    if config.json_output is not None:
        write_probe_json(config.json_output, results)
    if config.plot_output is not None:
        write_probe_plot(config.plot_output, results, prober.describe())
    return results
