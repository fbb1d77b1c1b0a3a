"""The uncertainty of what the suite reports: every accuracy with its interval, "A beats B" only
with a paired test on the same images, a mean over seeds with its spread.

    wilson(correct=430, n=500)            -> (0.829, 0.889)   95% interval of an accuracy
    fraction_interval(0.86, n=500)        -> the same, from the fraction
    mcnemar(a_correct, b_correct)         -> Paired(a_only=31, b_only=12, p_value=0.005)
    over_seeds([0.52, 0.55, 0.50])        -> Spread(mean, sd, low, high, n)   t interval

Plain Python and SciPy (imported when a test statistic is computed): no torch, so the report
and the tables use it too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile: two-sided 95%


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of an accuracy `correct / n` (95% by default): unlike the
    normal approximation it stays inside [0, 1] and is honest near 0 and 1 and for small n."""
    if n <= 0:
        raise ValueError(f"an accuracy needs n > 0 images, got {n}")
    if not 0 <= correct <= n:
        raise ValueError(f"correct={correct} is not a count out of n={n}")
    if correct in (0, n):  # the closed form: one bound is exactly 0 or 1
        edge = n / (n + z * z)
        return (0.0, 1 - edge) if correct == 0 else (edge, 1.0)
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return centre - half, centre + half


def fraction_interval(fraction: float, n: int) -> tuple[float, float]:
    """The 95% Wilson interval of a fraction (an accuracy or an error rate) of n images, given
    as the fraction: what a table or a summary has at hand."""
    return wilson(round(fraction * n), n)


def binomial_se(correct: int, n: int) -> float:
    """The standard error of an accuracy `correct / n`, sqrt(p (1 - p) / n)."""
    p = correct / n
    return math.sqrt(p * (1 - p) / n)


@dataclass(frozen=True)
class Paired:
    """McNemar's exact test of two classifiers on the same images: the images only A gets right,
    those only B gets right, and the two-sided p-value that they differ (binomial, p = 1/2)."""

    a_only: int
    b_only: int
    p_value: float

    def beats(self, alpha: float = 0.05) -> str:
        """ "A", "B", or "neither" (no significant difference at `alpha`)."""
        if self.p_value >= alpha or self.a_only == self.b_only:
            return "neither"
        return "A" if self.a_only > self.b_only else "B"


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> Paired:
    """Paired test of "A is right" against "B is right", image by image (same images, same
    order): only the images where they disagree count."""
    if len(a_correct) != len(b_correct):
        raise ValueError(f"paired results of {len(a_correct)} and {len(b_correct)} images")
    a_only = sum(1 for a, b in zip(a_correct, b_correct, strict=True) if a and not b)
    b_only = sum(1 for a, b in zip(a_correct, b_correct, strict=True) if b and not a)
    if a_only + b_only == 0:
        return Paired(0, 0, 1.0)
    from scipy.stats import binomtest

    p = binomtest(min(a_only, b_only), a_only + b_only, 0.5, alternative="two-sided").pvalue
    return Paired(a_only, b_only, float(min(1.0, p)))


@dataclass(frozen=True)
class Spread:
    """A mean over seeds, their standard deviation and the 95% t interval of the mean."""

    mean: float
    sd: float
    low: float
    high: float
    n: int


def over_seeds(values: Sequence[float]) -> Spread:
    """Mean, standard deviation (n - 1) and the 95% Student-t interval of the mean of per-seed
    values; one seed has no spread (sd 0, the interval is the value itself: say "1 seed")."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values to summarise")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return Spread(mean, 0.0, mean, mean, 1)
    from scipy.stats import t

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return Spread(mean, sd, mean - half, mean + half, n)
