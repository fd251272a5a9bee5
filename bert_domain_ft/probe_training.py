"""The probe's inner loop: fine-tune one sequence classifier with one seed, then score it on the test sentences.

Deliberately small and fully determined by the seed, and the same for every model probed with that seed: each
weight the checkpoint lacks (the classification layer; the pooler of a checkpoint without one) is drawn from its
own generator seeded by (seed, parameter name) (``draw_new_weights``), so two encoders start from the same head
whatever else their loading drew; dropout draws from ``torch.manual_seed(seed)`` set again once the model is
built; and the order of the training sentences in epoch e is drawn from ``numpy.random.default_rng([seed, e])``
(``epoch_batches``). Everything runs inside ``torch.random.fork_rng`` so the caller's random state is left exactly
as it was.

    encoded = encode_set(tokenizer, texts, label_ids, max_seq_len=64)
    accuracy, macro_f1 = train_and_score(make_classifier, train, test, ClassifierRecipe(), seed=0, device=cpu)
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .training.optimization import build_optimizer, build_scheduler, parameter_groups, warmup_steps_for

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
