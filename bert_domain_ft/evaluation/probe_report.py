"""Probe results and how they are shown: per-seed scores, paired comparisons, a table, a JSON list and a chart.

A ``ProbeResult`` holds one model's test scores, one per seed. Every model is probed with the same seeds, so seed
s gives each the same classifier initialisation and data order: the per-seed difference d_s = score_model(s) −
score_reference(s) removes the part of the spread that the seed causes in both (``paired_difference``). The
interval is mean(d) ± t_{(1+c)/2, n−1} · stdev(d) / √n over the n seeds; when it covers 0, the seeds' noise can
explain the difference. The t quantile is computed here (no scipy): bisection on the t CDF, itself from the
regularized incomplete beta function (continued fraction).

Every model after the first is compared with the first: the table adds a paired section (mean difference in
points, 95% interval, verdict), the JSON adds ``paired_vs_first`` and ``paired_macro_f1_vs_first`` ({reference,
mean, low, high, verdict, seeds}; fractions), the chart adds the difference and verdict under each model's name.
The chart uses matplotlib's Agg canvas (no display, no pyplot state), imported only when drawing; matplotlib is
the optional ``plot`` extra. No torch here.

    difference = model.paired_with(base)                  # → mean, low, high, verdict
    print(format_probe_table(results)); write_probe_json(Path("probe.json"), results)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from bert_domain_ft.evaluation.heldout import render_table
from bert_domain_ft.evaluation.plots import DPI, matplotlib_figure, png_bytes
from bert_domain_ft.files import write_bytes_atomic, write_json_atomic

CONFIDENCE = 0.95
BETTER = "better"
WORSE = "worse"
NO_DIFFERENCE = "no measurable difference"
ONE_SEED = "one seed: no interval"

_FRACTION_ITERATIONS = 300  # the continued fraction converges in far fewer for the t distribution's arguments
_TINY = 1e-300  # keeps the continued fraction's terms away from division by zero


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b) for 0 ≤ x ≤ 1 and a, b > 0, to about 1e-14."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The fraction converges fast for x below the mean of the Beta(a, b) shape; above it, use I_x = 1 − I_{1−x}(b, a).
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(1.0 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of the incomplete beta function, evaluated by the modified Lentz method."""

    def nonzero(value: float) -> float:
        return value if abs(value) > _TINY else _TINY

    numerator_ratio, denominator = 1.0, 1.0 / nonzero(1.0 - (a + b) * x / (a + 1.0))
    result = denominator
    for m in range(1, _FRACTION_ITERATIONS + 1):
        # Each m contributes an even term m(b−m)x / ((a+2m−1)(a+2m)) and an odd term −(a+m)(a+b+m)x / ((a+2m)(a+2m+1)).
        for term in (
            m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0)),
        ):
            denominator = 1.0 / nonzero(1.0 + term * denominator)
            numerator_ratio = nonzero(1.0 + term / numerator_ratio)
            change = denominator * numerator_ratio
            result *= change
        if abs(change - 1.0) < 1e-15:
            break
    return result


def t_cdf(t: float, degrees_of_freedom: float) -> float:
    """P(T ≤ t) for Student's t with ``degrees_of_freedom`` (> 0)."""
    tail = 0.5 * regularized_incomplete_beta(
        degrees_of_freedom / (degrees_of_freedom + t * t), degrees_of_freedom / 2, 0.5
    )
    return 1.0 - tail if t > 0 else tail


def t_quantile(probability: float, degrees_of_freedom: float) -> float:
    """The t with P(T ≤ t) = ``probability`` (0 < p < 1), by bisection on ``t_cdf`` to 1e-12."""
    if not 0.0 < probability < 1.0:
        raise ValueError(f"a quantile needs 0 < probability < 1, got {probability}")
    if degrees_of_freedom <= 0:
        raise ValueError(f"Student's t needs positive degrees of freedom, got {degrees_of_freedom}")
    if probability < 0.5:
        return -t_quantile(1.0 - probability, degrees_of_freedom)
    low, high = 0.0, 1.0
    while t_cdf(high, degrees_of_freedom) < probability:  # t_{0.9999995, 1} ≈ 6.4e5: about 20 doublings at most
        low, high = high, 2.0 * high
    while high - low > 1e-12 * max(1.0, high):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if t_cdf(middle, degrees_of_freedom) < probability else (low, middle)
    return 0.5 * (low + high)


@dataclass(frozen=True)
class PairedDifference:
    """Mean of the per-seed differences (model − reference, in the scores' unit) and its confidence interval;
    ``low``/``high`` are None with a single seed (no spread to measure)."""

    mean: float
    low: float | None
    high: float | None
    seeds: int
    confidence: float = CONFIDENCE

    @property
    def verdict(self) -> str:
        """``better`` / ``worse`` when the interval excludes 0, else ``no measurable difference`` (or one seed)."""
        if self.low is None or self.high is None:
            return ONE_SEED
        if self.low > 0:
            return BETTER
        if self.high < 0:
            return WORSE
        return NO_DIFFERENCE

    @property
    def beats_reference(self) -> bool:
        """The model is better than the reference beyond the seeds' noise (the interval lies above 0)."""
        return self.verdict == BETTER

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "verdict": self.verdict, "seeds": self.seeds}

    def describe_points(self) -> str:
        """E.g. ``+0.80 pts [-1.20, +2.80]`` for fractions 0..1 (percentage points; no interval with one seed)."""
        text = f"{100 * self.mean:+.2f} pts"
        if self.low is not None and self.high is not None:
            text += f" [{100 * self.low:+.2f}, {100 * self.high:+.2f}]"
        return text


def paired_difference(
    values: Sequence[float], reference: Sequence[float], confidence: float = CONFIDENCE
) -> PairedDifference:
    """``values[s] − reference[s]`` over the seeds s (same seeds, same order): mean and Student's t interval."""
    if len(values) != len(reference) or not values:
        raise ValueError(
            f"a paired difference needs the same seeds on both sides, got {len(values)} and {len(reference)}"
        )
    differences = [value - base for value, base in zip(values, reference)]
    mean = statistics.fmean(differences)
    if len(differences) == 1:
        return PairedDifference(mean, None, None, 1, confidence)
    half_width = t_quantile((1.0 + confidence) / 2, len(differences) - 1) * statistics.stdev(differences)
    half_width /= math.sqrt(len(differences))
    return PairedDifference(mean, mean - half_width, mean + half_width, len(differences), confidence)


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


_FIGURE_HEIGHT_INCHES = 4.5
_MAX_LABEL_CHARACTERS = 28  # longer model names are shortened from the left in the chart


def _percent(mean: float, std: float) -> str:
    return f"{100 * mean:.2f}% ± {100 * std:.2f}"


def format_probe_table(results: Sequence[ProbeResult], title: str = "model") -> str:
    """Accuracy and macro-F1 (mean ± std over seeds, in %) per model; with several models, the change in mean
    accuracy against the first one, in percentage points."""
    seeds = len(results[0].seeds) if results else 0
    header = [title, f"accuracy ({seeds} seeds)", "macro-F1"]
    with_change = len(results) > 1
    if with_change:
        header.append(f"vs {results[0].label}")
    rows = [header]
    for result in results:
        row = [
            result.label,
            _percent(result.accuracy_mean, result.accuracy_std),
            _percent(result.macro_f1_mean, result.macro_f1_std),
        ]
        if with_change:
            row.append(f"{100 * (result.accuracy_mean - results[0].accuracy_mean):+.2f} pts")
        rows.append(row)
    table = render_table(rows)
    return table + "\n\n" + format_paired_table(results, title) if with_change else table


def format_paired_table(results: Sequence[ProbeResult], title: str = "model") -> str:
    """Each model after the first minus the first, seed by seed: mean difference (points), 95% interval from
    Student's t over the seeds, verdict; a row for accuracy and one for macro-F1 (so the table stays within about
    80 columns). With one seed there is no interval: it says so."""
    reference = results[0]
    seeds = len(reference.seeds)
    if seeds < 2:
        return (
            f"paired against {reference.label}: one seed, so no interval; the differences above cannot be told "
            "from the seeds' noise (run with --seeds 5)"
        )
    heading = f"paired against {reference.label}, same {seeds} seeds (95% interval from Student's t, {seeds - 1} df):"
    rows = [[title, "metric", "difference [95% interval]", "verdict"]]
    for result in results[1:]:
        for metric, label in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
            difference = result.paired_with(reference, metric)
            name = result.label if metric == "accuracy" else ""
            rows.append([name, label, difference.describe_points(), difference.verdict])
    return heading + "\n" + render_table(rows)


def short_model_names(models: Sequence[str]) -> list[str]:
    """A short name per model for tables and charts: its last path component (a Hub id's name), with as many of
    the components before it as tell it apart from the others (``run1/best``, ``run2/best``); the text as given
    where even the whole path cannot (``run`` and ``./run``)."""
    parts = [[part for part in PurePosixPath(model).parts if part != "/"] or [model] for model in models]
    depths = [1] * len(models)
    while True:
        names = ["/".join(part[-depth:]) for part, depth in zip(parts, depths)]
        clashing = [index for index, name in enumerate(names) if names.count(name) > 1]
        longer = [index for index in clashing if depths[index] < len(parts[index])]
        if not longer:
            return [name if names.count(name) == 1 else model for name, model in zip(names, models)]
        for index in longer:
            depths[index] += 1


def probe_json(results: Sequence[ProbeResult]) -> list[dict[str, Any]]:
    """One object per model; every model after the first also gets its paired differences against the first."""
    objects = [result.to_json() for result in results]
    for result, item in zip(results[1:], objects[1:]):
        for key, metric in (("paired_vs_first", "accuracy"), ("paired_macro_f1_vs_first", "macro_f1")):
            item[key] = {"reference": results[0].model, **result.paired_with(results[0], metric).to_json()}
    return objects


def write_probe_json(path: Path, results: Sequence[ProbeResult]) -> None:
    """``probe_json(results)`` as a JSON list (model, accuracy_mean/std, macro_f1_mean/std, seeds, per-seed scores,
    and for every model after the first ``paired_vs_first`` / ``paired_macro_f1_vs_first``)."""
    write_json_atomic(Path(path), probe_json(results))


def require_matplotlib() -> Any:
    """matplotlib's ``Figure`` class, or a ``UserError`` saying how to install it (or do without the chart)."""
    return matplotlib_figure("the probe's chart", " or leave the chart out with --no_plot")


def _short(label: str) -> str:
    return label if len(label) <= _MAX_LABEL_CHARACTERS else "…" + label[-(_MAX_LABEL_CHARACTERS - 1) :]


def _tick_labels(results: Sequence[ProbeResult]) -> list[str]:
    """Model names; under each one after the first, its paired accuracy difference against the first and verdict."""
    labels = [_short(result.label) for result in results]
    for index, result in enumerate(results[1:], start=1):
        difference = result.paired_with(results[0])
        labels[index] += f"\n{difference.describe_points()}\n{difference.verdict}"
    return labels


def draw_probe_chart(results: Sequence[ProbeResult], subtitle: str = "") -> bytes:
    """Grouped bars (accuracy, macro-F1, in %) per model with ± one standard deviation over seeds, as PNG bytes."""
    figure_class = require_matplotlib()
    width_inches = max(6.0, 1.6 * len(results) + 2.0)
    figure = figure_class(figsize=(width_inches, _FIGURE_HEIGHT_INCHES), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    positions = list(range(len(results)))
    bar_width = 0.38
    metrics = (
        ("accuracy", "accuracy_mean", "accuracy_std", "tab:blue"),
        ("macro-F1", "macro_f1_mean", "macro_f1_std", "tab:orange"),
    )
    for offset, (label, mean_name, std_name, color) in zip((-bar_width / 2, bar_width / 2), metrics):
        means = [100 * getattr(result, mean_name) for result in results]
        errors = [100 * getattr(result, std_name) for result in results]
        bars = axes.bar(
            [p + offset for p in positions], means, bar_width, yerr=errors, capsize=4, color=color, label=label
        )
        # Inside the bars, so the error bars above them stay readable.
        labels = [f"{mean:.1f}" for mean in means]
        axes.bar_label(bars, labels=labels, label_type="center", color="white", fontsize="small", fontweight="bold")
    axes.set_xticks(positions, _tick_labels(results), rotation=15 if len(results) > 3 else 0)
    axes.set_ylabel("test score (%), mean ± std over seeds")
    axes.set_ylim(0, 115)  # room for the legend above 100%
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize="small", loc="upper center", ncols=2)
    axes.set_title("Downstream probe" + (f"\n{subtitle}" if subtitle else ""), fontsize="medium")
    return png_bytes(figure)


def write_probe_plot(path: Path, results: Sequence[ProbeResult], subtitle: str = "") -> Path:
    """``draw_probe_chart`` written atomically to ``path``."""
    write_bytes_atomic(Path(path), draw_probe_chart(results, subtitle))
    return Path(path)
