"""How sure a score is: 95% Wilson intervals of accuracies (SciPy's), and what two of them say.

An accuracy measured on n test rows is a proportion of n: its Wilson score interval (Wilson 1927;
Brown, Cai and DasGupta 2001 recommend it for small n) says where the true accuracy lies. The
federation's accuracy is pooled from the nodes' counts of correct rows, so it is the accuracy on
all their test rows together, with the interval of that count. A node releases its scores with
Gaussian noise of a known standard deviation (lab.core.scores): each side of the interval is
widened by it, the two added in quadrature (sampling and noise are independent).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from lab.core.metrics import AUC_MIN_CLASS_ROWS

__all__ = ["AUC_MIN_CLASS_ROWS", "LEVEL", "Interval", "compare", "pooled_accuracy", "wilson"]

#: The confidence level of every interval the lab shows.
LEVEL = 0.95

Interval = tuple[float, float]


#: The normal quantile of LEVEL, two-sided.
Z = 1.959963984540054


def wilson(accuracy: float | None, rows: int, noise: float = 0.0) -> Interval | None:
    """The 95% Wilson interval of an accuracy measured on ``rows`` rows and released with Gaussian
    noise of standard deviation ``noise`` (None without a score)."""
    if accuracy is None or not math.isfinite(accuracy) or rows <= 0:
        return None
    from scipy.stats import binomtest  # SciPy's statistics take a second to import: only when asked

    correct = min(rows, max(0, round(accuracy * rows)))
    found = binomtest(correct, rows).proportion_ci(confidence_level=LEVEL, method="wilson")
    low, high = float(found.low), float(found.high)
    if noise <= 0:
        return low, high
    centre, spread = correct / rows, Z * noise
    return (
        max(0.0, centre - math.hypot(centre - low, spread)),
        min(1.0, centre + math.hypot(high - centre, spread)),
    )


def pooled_accuracy(
    scores: Iterable[tuple[float | None, int] | tuple[float | None, int, float]],
) -> tuple[float, int, Interval] | None:
    """The accuracy over every node's test rows from (accuracy, rows[, noise]) triples: the correct
    rows summed over the rows summed, with its interval, the nodes' noise pooled with them (None
    when no node reported an accuracy)."""
    correct, total, variance = 0.0, 0, 0.0
    for accuracy, rows, *noise in scores:
        if accuracy is None or not math.isfinite(accuracy) or rows <= 0:
            continue
        correct += accuracy * rows
        total += rows
        variance += (noise[0] * rows) ** 2 if noise else 0.0
    if total == 0:
        return None
    interval = wilson(correct / total, total, math.sqrt(variance) / total)
    assert interval is not None
    return correct / total, total, interval


def compare(first: Interval | None, second: Interval | None, names: tuple[str, str]) -> str:
    """What two intervals let one say: which is higher when they do not overlap, else that they overlap."""
    if first is None or second is None:
        return "no interval"
    if first[0] > second[1]:
        return f"{names[0]} higher"
    if second[0] > first[1]:
        return f"{names[1]} higher"
    return "intervals overlap"
