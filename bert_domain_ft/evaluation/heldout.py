"""Held-out evaluation of a pretraining model: masked-LM loss, perplexity, MLM accuracy (NSP accuracy for BERT).

Losses and correct counts are summed exactly over fixed, consecutive batches with the model in eval mode, so the
same model on the same data gives the same numbers every time. The MLM logits are computed at the masked
positions only (``pretraining.pretraining_losses``, any masked-LM model): memory stays bounded whatever the
vocabulary. Held-out instances of several corpora carry ``corpus_ids``; they are evaluated in batches of one
corpus each (``batches_by_corpus``), so every batch's sums belong to exactly one corpus and the per-corpus results
are exact too. The results print as plain-text tables (``render_table``: every table of the tool lines up alike).
A finished run's table (``print_run_before_after``) compares its step-0 evaluation, taken after the head-only steps
and so of the warmed base it keeps as ``base/`` when its checkpoint lacked a head (``warmed_base_note``), with the
last.

    result = evaluate_pretraining(model, open_holdout(Path("pregenerated")), batch_size=64, device="cpu")
    print(format_result_table(result))
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from bert_domain_ft.data.epoch_format import MANIFEST_NAME, EpochArrays, open_holdout, read_manifest
from bert_domain_ft.data.loader import collate_rows
from bert_domain_ft.errors import UserError
from bert_domain_ft.model.pretraining import pretraining_losses


def render_table(rows: Sequence[Sequence[str]]) -> str:
    """``rows[0]`` is the header: first column left-aligned, the others right-aligned, a dashed rule below the
    header, two spaces between columns, no trailing spaces."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


# Per-corpus columns of the table (the overall table above it has NSP rows when there are NSP labels).
CORPUS_COLUMNS = (("mlm_loss", "MLM loss"), ("perplexity", "perplexity"), ("mlm_accuracy", "MLM accuracy"))


def batches_by_corpus(
    corpus_ids: np.ndarray | None, num_instances: int, batch_size: int
) -> Iterator[tuple[int | None, np.ndarray]]:
    """(corpus index, row indices) of consecutive batches; each batch within one corpus (None: a single corpus)."""
    if corpus_ids is None:
        for start in range(0, num_instances, batch_size):
            yield None, np.arange(start, min(start + batch_size, num_instances))
        return
    corpus_ids = np.asarray(corpus_ids)
    for corpus in np.unique(corpus_ids):
        members = np.flatnonzero(corpus_ids == corpus)
        for start in range(0, len(members), batch_size):
            yield int(corpus), members[start : start + batch_size]


def corpus_names(manifest: Mapping[str, Any] | None, count: int) -> list[str]:
    """Names of the manifest's corpora (``corpus_<i>`` when it names fewer than ``count``)."""
    corpora = list((manifest or {}).get("corpora") or [])
    if len(corpora) >= count:
        return [str(corpus["name"]) for corpus in corpora]
    return [f"corpus_{index}" for index in range(count)]


FLAT_KEYS = ("mlm_loss", "perplexity", "mlm_accuracy", "nsp_loss", "nsp_accuracy")


def flatten_corpus_metrics(corpora: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """``{"zul/mlm_loss": 2.1, …}``: per-corpus metrics as flat keys, for ``metrics.jsonl`` records."""
    return {
        f"{name}/{key}": float(values[key])
        for name, values in corpora.items()
        for key in FLAT_KEYS
        if values.get(key) is not None
    }


def _cell(key: str, value: float) -> str:
    if key.endswith("accuracy"):
        return f"{100 * value:.2f}%"
    if key == "perplexity":
        return f"{value:,.2f}" if math.isfinite(value) else "inf"
    return f"{value:.4f}"


def format_corpus_table(corpora: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per corpus: instances, MLM loss (nats/token), perplexity, MLM accuracy."""
    header = ["corpus", "instances", *(label for _, label in CORPUS_COLUMNS)]
    rows = [header]
    for name, values in corpora.items():
        cells = [_cell(key, float(values[key])) for key, _ in CORPUS_COLUMNS]
        rows.append([name, f"{int(values['num_instances']):,}", *cells])
    return render_table(rows)


# The keys of an evaluation record, in display order (also the keys of the training loop's "eval" records).
METRIC_KEYS = ("mlm_loss", "perplexity", "mlm_accuracy", "nsp_loss", "nsp_accuracy")
# Keys of the general (out-of-domain) held-out set's metrics in the same records: general_mlm_loss, …
GENERAL_PREFIX = "general_"


@dataclass(frozen=True)
class EvaluationResult:
    """Metrics of one model on one set of pregenerated instances."""

    mlm_loss: float  # mean cross-entropy over all masked tokens, in nats per token
    perplexity: float  # exp(mlm_loss); inf when that overflows
    mlm_accuracy: float  # fraction (0..1) of masked tokens whose top prediction is the original token
    nsp_loss: float | None  # mean NSP cross-entropy per instance (nats); None without NSP labels
    nsp_accuracy: float | None  # fraction (0..1) of instances whose is-random-next prediction is right
    num_instances: int
    num_masked_tokens: int
    corpora: dict[str, dict[str, Any]] | None = None  # several corpora: each one's metrics (these keys), by name

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """The numeric metrics without the ``None`` ones (what the training loop logs); per corpus as "name/key"."""
        values = {key: value for key, value in self.to_json().items() if value is not None and key != "corpora"}
        return {**values, **flatten_corpus_metrics(self.corpora or {})}


def perplexity_of(loss: float) -> float:
    """exp(loss) for a loss in nats, ``inf`` instead of an OverflowError for a hopeless model."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def first_instances(epoch: EpochArrays, count: int | None) -> EpochArrays:
    """The first ``count`` instances of ``epoch`` (still memmapped); all of them when ``count`` is None."""
    if count is None or count >= epoch.num_instances:
        return epoch

    def head(array: np.ndarray | None) -> np.ndarray | None:
        return None if array is None else array[:count]

    return replace(
        epoch,
        input_ids=epoch.input_ids[:count],
        lengths=epoch.lengths[:count],
        segment_a_lengths=epoch.segment_a_lengths[:count],
        masked_positions=head(epoch.masked_positions),
        masked_labels=head(epoch.masked_labels),
        num_masked=head(epoch.num_masked),
        is_random_next=head(epoch.is_random_next),
        corpus_ids=head(epoch.corpus_ids),
    )


def _check_evaluable(epoch: EpochArrays) -> None:
    if epoch.masked_positions is None:
        raise UserError(
            f"{epoch.directory}: instances have no fixed masks (pregenerated with --dynamic_masking), so metrics "
            "would change from run to run; evaluate data pregenerated without --dynamic_masking"
        )
    if epoch.num_instances == 0:
        raise UserError(f"{epoch.directory}: holds no instances; use a larger corpus or --holdout_fraction")


class _Totals:
    """Exact sums over batches (float64 for losses, integers for counts)."""

    def __init__(self) -> None:
        self.mlm_loss_sum = 0.0
        self.mlm_correct = 0
        self.mlm_count = 0
        self.nsp_loss_sum = 0.0
        self.nsp_correct = 0
        self.nsp_count = 0
        self.instances = 0

    def add(self, output: Any, instances: int = 0) -> None:
        self.instances += instances
        self.mlm_loss_sum += float(output.mlm_loss_sum)
        self.mlm_correct += int(output.mlm_correct)
        self.mlm_count += int(output.mlm_count)
        if output.nsp_loss is not None:
            count = int(output.nsp_count)
            # nsp_loss is the batch mean: times the batch size gives the sum, so the overall mean is exact.
            self.nsp_loss_sum += float(output.nsp_loss) * count
            self.nsp_correct += int(output.nsp_correct)
            self.nsp_count += count

    def result(self, num_instances: int, directory: Path) -> EvaluationResult:
        if self.mlm_count == 0:
            raise UserError(f"{directory}: no masked tokens to evaluate; pregenerate with --masked_lm_prob > 0")
        mlm_loss = self.mlm_loss_sum / self.mlm_count
        with_nsp = self.nsp_count > 0
        return EvaluationResult(
            mlm_loss=mlm_loss,
            perplexity=perplexity_of(mlm_loss),
            mlm_accuracy=self.mlm_correct / self.mlm_count,
            nsp_loss=self.nsp_loss_sum / self.nsp_count if with_nsp else None,
            nsp_accuracy=self.nsp_correct / self.nsp_count if with_nsp else None,
            num_instances=num_instances,
            num_masked_tokens=self.mlm_count,
        )


def evaluate_pretraining(
    model: nn.Module,
    epoch: EpochArrays,
    batch_size: int,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
    show_progress: bool = True,
    names: Sequence[str] | None = None,
) -> EvaluationResult:
    """Masked-LM (and, for a ``BertForPreTraining`` on NSP data, NSP) metrics of ``model`` over ``epoch``.

    The model is put in eval mode for the pass (no dropout) and returned to the mode it was in. ``autocast_dtype``
    (e.g. ``torch.bfloat16``) runs the forward pass under autocast; losses are still summed in float64. When the
    instances come from several corpora the result also holds each corpus's metrics, under ``names`` (the
    manifest's corpus names; ``corpus_<i>`` by default).
    """
    _check_evaluable(epoch)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = torch.device(device)
    totals, per_corpus = _Totals(), {}
    batches = list(batches_by_corpus(epoch.corpus_ids, epoch.num_instances, batch_size))
    was_training = model.training
    model.eval()
    try:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None),
        ):
            for corpus, rows in tqdm(batches, desc="evaluating", unit="batch", disable=not show_progress):
                batch = {name: tensor.to(device) for name, tensor in collate_rows(epoch, rows).items()}
                output = pretraining_losses(model, batch, fused=False)  # no gradients: plain logits
                totals.add(output)
                if corpus is not None:  # every batch is within one corpus: its sums are that corpus's
                    per_corpus.setdefault(corpus, _Totals()).add(output, instances=len(rows))
    finally:
        model.train(was_training)
    result = totals.result(epoch.num_instances, epoch.directory)
    if not per_corpus:
        return result
    labels = list(names) if names is not None else corpus_names(None, max(per_corpus) + 1)
    corpora = {
        labels[corpus]: sums.result(sums.instances, epoch.directory) for corpus, sums in sorted(per_corpus.items())
    }
    return replace(result, corpora={name: corpus.metrics() for name, corpus in corpora.items()})


def build_evaluator(
    holdout: EpochArrays,
    batch_size: int,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
    max_instances: int | None = None,
    show_progress: bool = False,
    names: Sequence[str] | None = None,
) -> Callable[[nn.Module], dict[str, float]]:
    """The ``evaluate(model) -> metrics`` callable the training loop calls before, during and after training.

    ``max_instances`` evaluates only the first instances (always the same ones), to bound the time per call;
    ``names`` are the corpus names of data from several corpora (per-corpus keys "name/mlm_loss", …).
    """
    subset = first_instances(holdout, max_instances)
    _check_evaluable(subset)

    def evaluate(model: nn.Module) -> dict[str, float]:
        result = evaluate_pretraining(model, subset, batch_size, device, autocast_dtype, show_progress, names)
        return result.metrics()

    return evaluate


def with_general(
    domain: Callable[[nn.Module], dict[str, float]] | None, general: Callable[[nn.Module], dict[str, float]]
) -> Callable[[nn.Module], dict[str, float]]:
    """One evaluator of both sets: the domain's metrics (if any) and the general set's under ``GENERAL_PREFIX``."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        results = domain(model) if domain is not None else {}
        return {**results, **{GENERAL_PREFIX + key: value for key, value in general(model).items()}}

    return evaluate


def holdout_evaluator(
    pregenerated_dir: Path,
    batch_size: int,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
    max_instances: int | None = None,
) -> Callable[[nn.Module], dict[str, float]] | None:
    """``build_evaluator`` on the held-out set of a pregenerated directory, or ``None`` when it has none."""
    holdout = open_holdout(Path(pregenerated_dir))
    if holdout is None:
        return None
    return manifest_evaluator(holdout, Path(pregenerated_dir), batch_size, device, autocast_dtype, max_instances)


def open_holdout_data(directory: Path, vocab_fingerprint: str, verify_checksum: bool = False) -> EpochArrays:
    """The held-out set of the ``--holdout_data`` directory a run names; a ``UserError`` (never a run evaluated on
    nothing) when it is no pregenerated directory, holds no held-out set, or was made with another vocabulary
    than the training data's (``vocab_fingerprint``)."""
    manifest = read_manifest(directory, flag="--holdout_data")
    tokenizer = manifest["tokenizer"]
    if tokenizer["vocab_fingerprint"] != vocab_fingerprint:
        raise UserError(
            f"{Path(directory) / MANIFEST_NAME}: --holdout_data was pregenerated with the vocabulary of "
            f"{tokenizer['name']}, not the training data's; pregenerate it with the run's --bert_model"
        )
    holdout = open_holdout(directory, verify_checksum=verify_checksum)
    if holdout is None:
        raise UserError(f"{directory}: --holdout_data: holds no held-out set; pregenerate it with --holdout_fraction "
                        "(e.g. 0.05), or leave --holdout_data out to use the training data's own")  # fmt: skip
    return holdout


def manifest_evaluator(
    evaluation_set: EpochArrays,
    directory: Path,
    batch_size: int,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
    max_instances: int | None = None,
) -> Callable[[nn.Module], dict[str, float]]:
    """``build_evaluator`` on a held-out set of the pregenerated ``directory``, its results per corpus when that
    directory's manifest names several corpora."""
    names = corpus_names(read_manifest(directory), 0) or None
    return build_evaluator(evaluation_set, batch_size, device, autocast_dtype, max_instances, names=names)


# ---------------------------------------------------------------------------------------------------- formatting

_LABELS = {
    "mlm_loss": "MLM loss (nats/token)",
    "perplexity": "perplexity",
    "mlm_accuracy": "MLM accuracy",
    "nsp_loss": "NSP loss",
    "nsp_accuracy": "NSP accuracy",
}


def _format_value(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    if key.endswith("accuracy"):
        return f"{100 * value:.2f}%"
    if key == "perplexity":
        return f"{value:,.2f}" if math.isfinite(value) else "inf"
    return f"{value:.4f}"


def _format_change(key: str, before: float, after: float) -> str:
    if key.endswith("accuracy"):
        return f"{100 * (after - before):+.2f} pts"
    if key == "perplexity":
        if not (math.isfinite(before) and math.isfinite(after)) or before == 0:
            return "-"
        return f"{100 * (after / before - 1):+.1f}%"
    return f"{after - before:+.4f}"


def _as_mapping(result: EvaluationResult | Mapping[str, Any]) -> Mapping[str, Any]:
    return result.to_json() if isinstance(result, EvaluationResult) else result


def format_result_table(result: EvaluationResult | Mapping[str, Any], title: str = "held-out set") -> str:
    """A two-column table of the metrics, headed by how many instances and masked tokens they cover."""
    values = _as_mapping(result)
    rows = [[title, "value"]]
    rows += [[_LABELS[key], _format_value(key, values.get(key))] for key in METRIC_KEYS if values.get(key) is not None]
    summary = f"{int(values['num_instances']):,} instances, {int(values['num_masked_tokens']):,} masked tokens"
    table = render_table(rows) + "\n" + summary
    return table + "\n\nper corpus:\n" + format_corpus_table(values["corpora"]) if values.get("corpora") else table


def format_before_after_table(
    before: EvaluationResult | Mapping[str, Any], after: EvaluationResult | Mapping[str, Any], title: str = "held-out"
) -> str:
    """Metrics before and after training side by side, with the change (points for accuracies); the general
    held-out set's metrics (``GENERAL_PREFIX`` keys), when present, follow as "general …" rows."""
    first, last = _as_mapping(before), _as_mapping(after)
    rows = [[title, "before", "after", "change"]]
    for prefix, label in (("", ""), (GENERAL_PREFIX, "general ")):
        for key in METRIC_KEYS:
            value_before, value_after = first.get(prefix + key), last.get(prefix + key)
            if value_before is None or value_after is None:
                continue
            value_before, value_after = float(value_before), float(value_after)
            rows.append(
                [
                    label + _LABELS[key],
                    _format_value(key, value_before),
                    _format_value(key, value_after),
                    _format_change(key, value_before, value_after),
                ]
            )
    return render_table(rows)


def print_before_after(
    before: EvaluationResult | Mapping[str, Any],
    after: EvaluationResult | Mapping[str, Any],
    file: TextIO | None = None,
) -> None:
    """Print ``format_before_after_table`` (to stdout unless ``file`` is given)."""
    print(format_before_after_table(before, after), file=file, flush=True)


# finetune saves the base model with its fresh heads warmed (step 0, after the head-only steps) beside the run, when
# the checkpoint lacked its masked-LM head: the fair "before" (a random head's guesses are not).
WARMED_BASE_DIRECTORY = "base"


def warmed_base_note(run_dir: Path) -> str | None:
    """A line saying what a run's "before" is when it kept its warmed base (the ``"kind": "warmed_base"`` record
    of its metrics.jsonl), with the random head's loss logged before the head-only steps; None without one."""
    found: dict[str, dict[str, Any]] = {}
    try:
        lines = (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a damaged line is reported by the readers of the curves, not here
        if isinstance(record, dict) and record.get("kind") in ("warmed_base", "head_warmup_eval"):
            found[record["kind"]] = record
    if "warmed_base" not in found:
        return None
    base = found["warmed_base"]
    note = (f"before: the base model with its fresh heads trained alone for {base.get('head_only_steps')} head-only "
            f"steps, saved as {Path(run_dir) / str(base.get('directory', WARMED_BASE_DIRECTORY))}")  # fmt: skip
    fresh = found.get("head_warmup_eval", {}).get("mlm_loss")
    return note + (f" (with its heads at random the MLM loss was {fresh:.4f})" if fresh is not None else "")


def run_before_after(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The first and last held-out evaluations logged in ``run_dir/metrics.jsonl`` (None with fewer than two).

    Read from the log rather than kept in memory, so a resumed run still compares against its step-0 evaluation.
    """
    from bert_domain_ft.evaluation.plots import read_run_metrics

    try:
        evaluations = read_run_metrics(Path(run_dir)).evaluations
    except UserError:
        return None
    if len(evaluations) < 2:
        return None
    return evaluations[0], evaluations[-1]


def print_run_before_after(run_dir: Path, file: TextIO | None = None) -> bool:
    """Print the before/after table of a finished run; ``False`` (nothing printed) when it was not evaluated."""
    pair = run_before_after(run_dir)
    if pair is None:
        return False
    before, after = pair
    print(f"held-out evaluation, step {before['step']} → step {after['step']}:", file=file)
    note = warmed_base_note(run_dir)
    if note is not None and before["step"] == 0:
        print(note, file=file)
    print_before_after(before, after, file)
    if GENERAL_PREFIX + "mlm_loss" in after:
        print(
            "general rows: the --general_holdout text, outside the domain; a rising loss there is forgetting", file=file
        )
    return True
