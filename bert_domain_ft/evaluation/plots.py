"""Training curves of a finetune run as one PNG: MLM loss, NSP loss, accuracies and learning rate against steps.

Reads ``metrics.jsonl`` of a run directory (one JSON object a line): ``"kind": "train"`` records (step, lr,
mlm_loss, mlm_accuracy, nsp_loss, nsp_accuracy; mlm_acc, nsp_acc in runs of earlier versions); ``"kind": "eval"`` records with the held-out metrics of ``heldout``, the
general held-out set's as ``general_*``, drawn beside the domain's; ``"kind": "head_warmup"`` records of the
heads-only phase, drawn left of step 0; ``"kind": "probe"`` records of the downstream probe, drawn with the
accuracies. matplotlib is an optional extra, imported only when drawing (``matplotlib_figure``, which the probe's
chart uses too) and drawn with the Agg canvas (no display, no global pyplot state).

    png_path = plot_run(Path("finetuned_lm"))   # -> finetuned_lm/training_curves.png
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bert_domain_ft.errors import UserError, at_location
from bert_domain_ft.files import write_bytes_atomic

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training_curves.png"
SMOOTHING_WINDOW_FRACTION = 0.05  # moving-average window as a fraction of the logged training points
_FIGURE_SIZE_INCHES = (12.0, 8.0)
GENERAL_LABEL = "general held-out"  # the --general_holdout curves ("general_*" keys): forgetting shows there
DPI = 110  # of every chart the package draws


@dataclass
class RunMetrics:
    """The records of one run, each list sorted by step with one record per step (the latest logged wins)."""

    train: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    head_warmup: list[dict[str, Any]] = field(default_factory=list)  # "kind": "head_warmup", by warmup_step
    probes: list[dict[str, Any]] = field(default_factory=list)  # "kind": "probe": downstream accuracy per step


def parse_metrics_line(line: str) -> tuple[Any, bool]:
    """(one ``metrics.jsonl`` line parsed, whether it held a NaN or infinite number). Such numbers are not JSON
    (``NaN``, ``Infinity`` and overflowing literals like ``1e400``, which Python's json writes and reads but other
    readers refuse) and mean no value here: they are read as ``None``, like the ``null`` the log writes now."""
    replaced: list[str] = []

    def missing(text: str) -> None:
        replaced.append(text)

    def number(text: str) -> float | None:
        value = float(text)
        return value if math.isfinite(value) else missing(text)

    return json.loads(line, parse_constant=missing, parse_float=number), bool(replaced)


def has_step(record: Any) -> bool:
    """Whether ``record`` is a dict with a usable (finite) ``step``."""
    step = record.get("step") if isinstance(record, dict) else None
    return isinstance(step, int) or (isinstance(step, float) and math.isfinite(step))


def _parse_lines(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records, non_finite = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record, replaced = parse_metrics_line(line)
        except json.JSONDecodeError:
            if number == len(lines):  # a run killed mid-write leaves a cut last line: the rest is still good
                logger.warning("%s", at_location(path, number, "incomplete last line skipped"))
                continue
            raise UserError(
                at_location(path, number, "not a JSON object; the file is damaged, remove this line")
            ) from None
        non_finite += [number] if replaced else []
        if has_step(record):
            records.append(record)
    if non_finite:
        more = f", here and on {len(non_finite) - 1} more lines" if len(non_finite) > 1 else ""
        problem = f"NaN or infinite numbers (not JSON) read as missing values{more}"
        logger.warning("%s", at_location(path, non_finite[0], problem))
    return records


def _warmup_step(record: dict[str, Any]) -> bool:
    return isinstance(record.get("warmup_step", 0), (int, float))  # None where the log held NaN


def _latest_per_step(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A resumed run logs again from its checkpoint step: keeping the last record per step gives one curve.
    by_step = {int(record["step"]): record for record in records}
    return [by_step[step] for step in sorted(by_step)]


def read_run_metrics(run_dir: Path) -> RunMetrics:
    """Parse ``run_dir/metrics.jsonl`` (a ``UserError`` when it is missing or holds no step record)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise UserError(at_location(path, None, "not found; give the --output_dir of a finetune run"))
    records = _parse_lines(path)
    train = [record for record in records if record.get("kind", "train") == "train"]
    evaluations = [record for record in records if record.get("kind") == "eval"]
    if not train and not evaluations:
        raise UserError(at_location(path, None, "holds no training or evaluation records yet; plot after a few steps"))
    warmup = {int(r.get("warmup_step", 0)): r for r in records if r.get("kind") == "head_warmup" and _warmup_step(r)}
    return RunMetrics(
        train=_latest_per_step(train),
        evaluations=_latest_per_step(evaluations),
        head_warmup=[warmup[step] for step in sorted(warmup)],
        probes=_latest_per_step([record for record in records if record.get("kind") == "probe"]),
    )


def series(records: list[dict[str, Any]], *keys: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the first of ``keys`` each record has, skipping records without a finite value."""
    steps, values = [], []
    for record in records:
        value = next((record[key] for key in keys if record.get(key) is not None), None)
        if isinstance(value, (int, float)) and math.isfinite(value):
            steps.append(record["step"])
            values.append(float(value))
    return np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` points (shorter at the start), same length as ``values``."""
    if window <= 1 or values.size == 0:
        return values
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    ends = np.arange(1, values.size + 1)
    starts = np.maximum(0, ends - window)
    return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def matplotlib_figure(needed_by: str = "plotting", alternative: str = "") -> Any:
    """matplotlib's ``Figure`` class (the Agg canvas: no display, no pyplot state), or a ``UserError`` saying that
    ``needed_by`` needs it and how to install it (``alternative``: another way out, appended)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError(
            f"{needed_by} needs matplotlib, which is not installed; run `pip install bert_domain_ft[plot]`{alternative}"
        ) from None
    return Figure


def png_bytes(figure: Any) -> bytes:
    """A matplotlib figure rendered as PNG (at the figure's own dpi)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _plot_train(axes: Any, steps: np.ndarray, values: np.ndarray, label: str, color: str) -> None:
    if steps.size == 0:
        return
    window = max(1, int(round(steps.size * SMOOTHING_WINDOW_FRACTION)))
    if window > 1:
        axes.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
        label = f"{label} (mean of {window} logs)"
    axes.plot(steps, moving_average(values, window), color=color, linewidth=1.6, label=label)


def _plot_eval(axes: Any, steps: np.ndarray, values: np.ndarray, label: str, color: str) -> None:
    if steps.size:
        axes.plot(steps, values, color=color, marker="o", markersize=4, linewidth=1.2, label=label)


def _finish(axes: Any, title: str, ylabel: str) -> None:
    axes.set_title(title)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    else:
        axes.text(0.5, 0.5, "not logged in this run", ha="center", va="center", transform=axes.transAxes)


def warmup_series(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, values) of head warm-up records, x = warmup_step − warmup_steps: the phase sits left of step 0."""
    points = [
        (int(r["warmup_step"]) - int(r.get("warmup_steps", r["warmup_step"])), float(r[key]))
        for r in records
        if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) and "warmup_step" in r
    ]
    return np.asarray([x for x, _ in points], dtype=np.int64), np.asarray([v for _, v in points], dtype=np.float64)


def _plot_warmup(axes: Any, metrics: RunMetrics, key: str) -> None:
    steps, values = warmup_series(metrics.head_warmup, key)
    if steps.size:
        axes.plot(steps, values, color="tab:gray", linewidth=1.4, label="head warm-up, encoder frozen (steps < 0)")


def _draw_losses(grid: Any, metrics: RunMetrics) -> None:
    mlm, nsp = grid[0][0], grid[0][1]
    _plot_warmup(mlm, metrics, "mlm_loss")
    _plot_warmup(nsp, metrics, "nsp_loss")
    _plot_train(mlm, *series(metrics.train, "mlm_loss"), "training", "tab:blue")
    _plot_eval(mlm, *series(metrics.evaluations, "mlm_loss"), "held-out", "tab:red")
    _plot_eval(mlm, *series(metrics.evaluations, "general_mlm_loss"), GENERAL_LABEL, "tab:orange")
    _finish(mlm, "Masked-LM loss", "cross-entropy (nats/token)")
    if series(metrics.train, "nsp_loss")[0].size or not series(metrics.train, "drift")[0].size:
        _plot_train(nsp, *series(metrics.train, "nsp_loss"), "training", "tab:blue")
        _plot_eval(nsp, *series(metrics.evaluations, "nsp_loss"), "held-out", "tab:red")
        _plot_eval(nsp, *series(metrics.evaluations, "general_nsp_loss"), GENERAL_LABEL, "tab:orange")
        _finish(nsp, "Next-sentence prediction loss", "cross-entropy (nats/pair)")
    else:  # masked LM only: the panel shows how far the weights moved from where they started instead
        steps, drift = series(metrics.train, "drift")
        nsp.plot(steps, drift, color="tab:purple", linewidth=1.6, label="‖θ − θ₀‖ of the weights from the checkpoint")
        _finish(nsp, "Drift from the starting weights", "L2 distance")


def _draw_accuracy_and_rate(grid: Any, metrics: RunMetrics) -> None:
    accuracy, rate = grid[1][0], grid[1][1]
    train_steps, train_nsp = series(metrics.train, "nsp_accuracy", "nsp_acc")  # the second: earlier versions
    _plot_train(accuracy, train_steps, 100 * train_nsp, "training NSP", "tab:cyan")
    train_steps, train_mlm = series(metrics.train, "mlm_accuracy", "mlm_acc")
    _plot_train(accuracy, train_steps, 100 * train_mlm, "training MLM", "tab:olive")
    eval_steps, eval_nsp = series(metrics.evaluations, "nsp_accuracy")
    _plot_eval(accuracy, eval_steps, 100 * eval_nsp, "held-out NSP", "tab:red")
    eval_steps, eval_mlm = series(metrics.evaluations, "mlm_accuracy")
    _plot_eval(accuracy, eval_steps, 100 * eval_mlm, "held-out MLM", "tab:purple")
    eval_steps, general_mlm = series(metrics.evaluations, "general_mlm_accuracy")
    _plot_eval(accuracy, eval_steps, 100 * general_mlm, f"{GENERAL_LABEL} MLM", "tab:orange")
    probes = [r for r in metrics.probes if isinstance(r.get("accuracy_mean"), (int, float))]
    if probes:  # the downstream probe: mean ± std over its seeds
        accuracy.errorbar(
            [r["step"] for r in probes],
            [100 * r["accuracy_mean"] for r in probes],
            yerr=[100 * float(r.get("accuracy_std") or 0.0) for r in probes],
            color="black",
            marker="s",
            markersize=4,
            capsize=3,
            linewidth=1.2,
            label="downstream probe (± std over seeds)",
        )
    _finish(accuracy, "Accuracy", "accuracy (%)")
    lr_steps, learning_rates = series(metrics.train, "lr", "learning_rate")
    if lr_steps.size:
        rate.plot(lr_steps, learning_rates, color="tab:green", linewidth=1.6, label="learning rate")
    rate.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    _finish(rate, "Learning rate schedule", "learning rate")


def draw_run(metrics: RunMetrics, title: str) -> bytes:
    """The 2×2 figure of a run as PNG bytes."""
    figure_class = matplotlib_figure()
    figure = figure_class(figsize=_FIGURE_SIZE_INCHES, dpi=DPI, layout="constrained")
    grid = figure.subplots(2, 2)
    _draw_losses(grid, metrics)
    _draw_accuracy_and_rate(grid, metrics)
    last_step = max([record["step"] for record in metrics.train + metrics.evaluations])
    figure.suptitle(f"{title} — {int(last_step):,} optimizer steps")
    return png_bytes(figure)


def plot_run(run_dir: Path, output: Path | None = None) -> Path:
    """Draw the curves of ``run_dir/metrics.jsonl`` into ``output`` (default ``run_dir/training_curves.png``)."""
    run_dir = Path(run_dir)
    metrics = read_run_metrics(run_dir)
    output = Path(output) if output is not None else run_dir / PLOT_FILE
    title = "/".join(run_dir.resolve().parts[-2:])  # "experiment/model" says more than "model"
    write_bytes_atomic(output, draw_run(metrics, title))
    return output


def plot_run_if_possible(run_dir: Path) -> Path | None:
    """``plot_run`` at the end of a training run: a missing matplotlib or empty log is a warning, not a failure."""
    try:
        path = plot_run(run_dir)
    except UserError as error:
        logger.warning("no training curves: %s", error)
        return None
    logger.info("training curves: %s", path)
    return path
