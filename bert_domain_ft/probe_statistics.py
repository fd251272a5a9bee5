"""Paired comparison of two models' probe scores over the same seeds, with a Student's t confidence interval.

Both models are probed with the same seeds, so seed s gives each of them the same classifier initialisation and
data order: the per-seed difference d_s = score_model(s) − score_reference(s) removes the part of the spread that
the seed causes in both. The interval is mean(d) ± t_{(1+c)/2, n−1} · stdev(d) / √n over the n seeds; when it
covers 0, the seeds' noise can explain the difference. The t quantile is computed here (no scipy): bisection on
the t CDF, itself from the regularized incomplete beta function (continued fraction). Pure Python, no torch.

    difference = paired_difference(model.accuracies, base.accuracies)   # → mean, low, high, verdict
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
