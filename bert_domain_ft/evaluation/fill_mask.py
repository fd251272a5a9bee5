"""``fill-mask``: what each model predicts for masked words, side by side, to see what adaptation changed.

Every text's ``[MASK]`` (or ``<mask>``) becomes the model's own mask token; each model in turn (one in memory at a
time) gives its ``top_k`` tokens and their probabilities at every masked position, and the results print as one
table per mask with a column per model. With ``from_holdout`` the texts also come from a pregenerated held-out
set: its rows get their masked tokens back (``masked_labels`` at ``masked_positions``), the first segment is
decoded to text, and one whole word (one the tokenizer keeps in a single piece, so one mask stands for all of
it) is masked; the word that was there is shown beside the table. A model without a trained masked-LM head
(an encoder saved without it) predicts at random: its column says so, and when a run among the models was trained
from it, one line names the run's warmed base (``RUN/base``: its head trained, encoder unchanged) to compare
instead: ``fill-mask --models RUN/base RUN``.

    print(format_fill_mask(fill_masks(FillMaskConfig(models=["base", "run"], texts=["The [MASK] was reset."]))))
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bert_domain_ft.data.epoch_format import EpochArrays, open_holdout
from bert_domain_ft.errors import UserError, first_line
from bert_domain_ft.evaluation.config import MASK_PLACEHOLDERS, FillMaskConfig
from bert_domain_ft.evaluation.heldout import WARMED_BASE_DIRECTORY, render_table
from bert_domain_ft.model.loading import load_masked_lm_model, usable_positions
from bert_domain_ft.model.pretraining import MLM_HEAD, quiet_transformers

logger = logging.getLogger(__name__)

MIN_WORD_CHARACTERS = 4  # shorter words ("the", "of") say little about a domain
WINDOW_WORDS = 24  # a held-out text is cut to this many words around the masked one
_PLACEHOLDER = re.compile("|".join(re.escape(mask) for mask in MASK_PLACEHOLDERS))


@dataclass(frozen=True)
class MaskedText:
    """A text with mask placeholders; ``answer`` is the word that was masked (held-out texts only)."""

    text: str
    answer: str | None = None


@dataclass(frozen=True)
class ModelPredictions:
    """One model's predictions: per text, per mask in it, ``top_k`` (token, probability) pairs."""

    label: str
    untrained_head: bool
    predictions: list[list[list[tuple[str, float]]]]


def _label(model: str, models: list[str]) -> str:
    name = Path(model).name or model
    return name if [Path(other).name for other in models].count(name) == 1 else model


def _load_tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as error:
        raise UserError(f"{model}: cannot load its tokenizer ({first_line(error)}); give a model directory") from None


def _display_token(tokenizer: Any, token_id: int) -> str:
    text = tokenizer.decode([token_id]).strip()
    return text or tokenizer.convert_ids_to_tokens(token_id)


def _encode(tokenizer: Any, text: str, positions_limit: int, name: str, model: str) -> dict[str, torch.Tensor]:
    """``text`` with its masks as the model's mask token, cut to the model's ``positions_limit`` tokens; a mask
    the cut would drop is a ``UserError`` (it would silently have no prediction)."""
    with quiet_transformers():  # no "sequence longer than the maximum" warning: the cut is checked here
        ids = tokenizer(_PLACEHOLDER.sub(tokenizer.mask_token, text))["input_ids"]
    last_kept = positions_limit - 2  # the cut keeps the closing separator in the last position
    beyond = [index for index, token in enumerate(ids) if token == tokenizer.mask_token_id and index > last_kept]
    if beyond:
        raise UserError(
            f"{name}: its {MASK_PLACEHOLDERS[0]} is token {beyond[0] + 1}, beyond the {positions_limit} positions of "
            f"{model}; shorten the text before the mask"
        )
    return tokenizer(
        _PLACEHOLDER.sub(tokenizer.mask_token, text), return_tensors="pt", truncation=True, max_length=positions_limit
    )


@torch.no_grad()
def predict_masks(model: str, texts: list[MaskedText], top_k: int, device: torch.device) -> tuple[bool, list[Any]]:
    """(whether the model's MLM head is untrained, the top-k predictions at each mask of each text)."""
    loaded = load_masked_lm_model(model)
    tokenizer = _load_tokenizer(model)
    if tokenizer.mask_token is None:
        raise UserError(f"{model}: its tokenizer has no mask token, so it cannot fill masks")
    vocabulary = int(loaded.model.config.vocab_size)
    if top_k > vocabulary:
        raise UserError(f"--top_k {top_k}: {model} has only {vocabulary} tokens; give --top_k {vocabulary} or less")
    network = loaded.model.to(device).eval()
    positions_limit = usable_positions(network.config)
    results = []
    for number, item in enumerate(texts, start=1):
        encoded = _encode(tokenizer, item.text, positions_limit, f"text {number} ({item.text[:40]!r}…)", model)
        encoded = {name: tensor.to(device) for name, tensor in encoded.items()}
        positions = (encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten()
        logits = network(**encoded).logits[0, positions].float()
        probabilities, token_ids = logits.softmax(dim=-1).topk(top_k, dim=-1)
        results.append(
            [
                [(_display_token(tokenizer, int(token)), float(p)) for token, p in zip(ids, probs)]
                for ids, probs in zip(token_ids.tolist(), probabilities.tolist())
            ]
        )
    untrained = MLM_HEAD in loaded.fresh_heads
    del network, loaded  # one model in memory at a time
    return untrained, results


def _restored_rows(holdout: EpochArrays, rows: np.ndarray) -> list[np.ndarray]:
    """The held-out rows' first segments with their masked tokens put back."""
    restored = []
    for row in rows:
        ids = np.array(holdout.input_ids[row], dtype=np.int64)
        if holdout.masked_positions is not None and holdout.masked_labels is not None:
            count = int(holdout.num_masked[row]) if holdout.num_masked is not None else 0
            ids[holdout.masked_positions[row][:count]] = holdout.masked_labels[row][:count]
        end = int(holdout.segment_a_lengths[row]) if holdout.segment_a_lengths is not None else 0
        end = end or int(holdout.lengths[row])
        restored.append(ids[1:end])  # without the leading [CLS]
    return restored


def _masked_text(tokenizer: Any, ids: np.ndarray, rng: np.random.Generator) -> MaskedText | None:
    """One whole single-piece word of the decoded segment masked (None when it has no such word)."""
    words = tokenizer.decode(ids.tolist(), skip_special_tokens=True).split()
    candidates = []
    for index, word in enumerate(words):
        core = word.strip(".,;:!?()[]\"'")
        if len(core) >= MIN_WORD_CHARACTERS and core.isalpha():
            if len(tokenizer(" " + core, add_special_tokens=False)["input_ids"]) == 1:
                candidates.append(index)
    if not candidates:
        return None
    index = int(rng.choice(candidates))
    word = words[index]
    core = word.strip(".,;:!?()[]\"'")
    words[index] = word.replace(core, MASK_PLACEHOLDERS[0], 1)
    start = max(0, index - WINDOW_WORDS // 2)
    return MaskedText(" ".join(words[start : start + WINDOW_WORDS]), answer=core)


def _same_model(first: str, second: str) -> bool:
    if Path(first).exists() and Path(second).exists():
        return Path(first).resolve() == Path(second).resolve()
    return first == second


def warmed_base_hint(model: str, models: list[str]) -> str | None:
    """For ``model`` without a trained masked-LM head: a line naming the warmed base that a run among ``models``
    trained from it keeps (``RUN/base``), the fair column to compare; None when there is none."""
    for run in models:
        base = Path(run) / WARMED_BASE_DIRECTORY
        try:
            arguments = json.loads((Path(run) / "training_args.json").read_text(encoding="utf-8"))
            started_from = str(arguments.get("training", arguments)["bert_model"])
            kept = arguments.get("warmed_base") == WARMED_BASE_DIRECTORY and (base / "config.json").is_file()
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # not a run (or not one of ours): nothing to say about it
        if kept and _same_model(started_from, model):
            return (f"{model} has no trained masked-LM head, so its column is noise; {base} is it with the head "
                    f"trained alone by finetune (head-only steps, encoder unchanged): compare --models {base} {run}")  # fmt: skip
    return None


def _holdout_directory(config: FillMaskConfig) -> Path:
    if config.holdout_data is not None:
        return config.holdout_data
    arguments_file = Path(config.models[-1]) / "training_args.json"
    try:
        arguments = json.loads(arguments_file.read_text(encoding="utf-8"))
        training = arguments.get("training", arguments)
        return Path(training["pregenerated_data"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise UserError(
            f"{arguments_file}: cannot tell which data the run was trained on; give --holdout_data DIR "
            "(a pregenerated directory with a held-out set)"
        ) from None


def holdout_texts(config: FillMaskConfig) -> list[MaskedText]:
    """``config.from_holdout`` held-out sentences with one whole word masked each (rows spread over the set)."""
    directory = _holdout_directory(config)
    holdout = open_holdout(directory) if directory.is_dir() else None
    if holdout is None:
        raise UserError(
            f"{directory}: no held-out set (pregenerate with --holdout_fraction, e.g. 0.05), so --from_holdout has "
            "no sentences; give texts with [MASK] instead"
        )
    tokenizer = _load_tokenizer(config.models[-1])
    rng = np.random.default_rng(config.seed)
    order, chunk = rng.permutation(holdout.num_instances), 4 * config.from_holdout
    texts: list[MaskedText] = []
    for start in range(0, len(order), chunk):  # rows in chunks of 4× the texts asked for, until enough
        for ids in _restored_rows(holdout, np.sort(order[start : start + chunk])):
            text = _masked_text(tokenizer, ids, rng)
            if text is not None and len(texts) < config.from_holdout:
                texts.append(text)
        if len(texts) == config.from_holdout:
            return texts
    if not texts:
        raise UserError(f"{directory}: no held-out sentence has a whole word to mask; give texts with [MASK] instead")
    logger.warning(
        "--from_holdout %d: the held-out set of %s gave only %d sentences with a whole word to mask (of %d "
        "held-out instances); showing those",
        config.from_holdout, directory, len(texts), holdout.num_instances,
    )  # fmt: skip
    return texts


def fill_masks(
    config: FillMaskConfig, names: list[str] | None = None
) -> tuple[list[MaskedText], list[ModelPredictions]]:
    """The texts (given, then held-out ones) and each model's predictions for them; ``names`` label the models'
    columns (default: their directory names)."""
    texts = [MaskedText(text) for text in config.texts]
    if config.from_holdout:
        texts += holdout_texts(config)
    device = torch.device("cuda" if torch.cuda.is_available() and not config.no_cuda else "cpu")
    results = []
    labels = names or [_label(model, config.models) for model in config.models]
    for model, label in zip(config.models, labels):
        untrained, predictions = predict_masks(model, texts, config.top_k, device)
        results.append(ModelPredictions(label, untrained, predictions))
        hint = warmed_base_hint(model, config.models) if untrained else None
        if hint is not None:
            logger.warning("%s", hint)
    return texts, results


def format_fill_mask(texts: list[MaskedText], results: list[ModelPredictions]) -> str:
    """One table per mask: rank, then each model's prediction and probability; held-out texts name their word."""
    blocks = []
    for number, item in enumerate(texts):
        masks = max((len(result.predictions[number]) for result in results), default=0)
        for mask in range(masks):
            heading = item.text + (f"   (mask {mask + 1} of {masks})" if masks > 1 else "")
            heading += f"   [held out; the word was: {item.answer}]" if item.answer else ""
            header = ["rank"] + [r.label + (" (untrained MLM head)" if r.untrained_head else "") for r in results]
            rows = [header]
            for rank in range(max(len(r.predictions[number][mask]) for r in results)):
                cells = [f"{token} {probability:.1%}" for token, probability in (r.predictions[number][mask][rank]
                         for r in results)]  # fmt: skip
                rows.append([str(rank + 1), *cells])
            blocks.append(heading + "\n" + render_table(rows))
    return "\n\n".join(blocks) if blocks else "no masks to fill"
