"""How probe results are shown: a side-by-side table, a JSON list, and a bar chart with error bars (PNG).

Every model after the first is also compared with the first seed by seed (``ProbeResult.paired_with``): the table
adds a paired section (mean difference in points, 95% interval, verdict), the JSON adds ``paired_vs_first`` and
``paired_macro_f1_vs_first`` ({reference, mean, low, high, verdict, seeds}; fractions), the chart adds the
difference and verdict under each model's name.

The chart uses matplotlib's Agg canvas (no display, no pyplot state), imported only when drawing; matplotlib is
the optional ``plot`` extra. No torch here.

    print(format_probe_table(results)); write_probe_json(Path("probe.json"), results)
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic_files import write_bytes_atomic, write_json_atomic
from .errors import UserError
from .text_table import render_table

if TYPE_CHECKING:
    from .probe import ProbeResult

_FIGURE_HEIGHT_INCHES = 4.5
_DPI = 110
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
    Student's t over the seeds, verdict; for accuracy and macro-F1. With one seed there is no interval: it says so."""
    reference = results[0]
    seeds = len(reference.seeds)
    if seeds < 2:
        return (
            f"paired against {reference.label}: one seed, so no interval; the differences above cannot be told "
            "from the seeds' noise (run with --seeds 5)"
        )
    heading = (
        f"paired against {reference.label} over the same {seeds} seeds "
        f"(mean difference, 95% interval from Student's t with {seeds - 1} df):"
    )
    rows = [[title, "accuracy", "verdict", "macro-F1", "verdict"]]
    for result in results[1:]:
        accuracy, macro_f1 = result.paired_with(reference), result.paired_with(reference, "macro_f1")
        rows.append(
            [result.label, accuracy.describe_points(), accuracy.verdict, macro_f1.describe_points(), macro_f1.verdict]
        )
    return heading + "\n" + render_table(rows)


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
    """matplotlib's ``Figure`` class, or a ``UserError`` saying how to install it."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError(
            "the probe's chart needs matplotlib, which is not installed; run `pip install bert_domain_ft[plot]` "
            "or leave the chart out with --no_plot"
        ) from None
    return Figure


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
    figure = figure_class(figsize=(width_inches, _FIGURE_HEIGHT_INCHES), dpi=_DPI, layout="constrained")
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
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_probe_plot(path: Path, results: Sequence[ProbeResult], subtitle: str = "") -> Path:
    """``draw_probe_chart`` written atomically to ``path``."""
    write_bytes_atomic(Path(path), draw_probe_chart(results, subtitle))
    return Path(path)
