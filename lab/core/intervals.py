"""How sure a score is: 95% Wilson intervals of accuracies (SciPy's), and what two of them say.

An accuracy measured on n test rows is a proportion of n: its Wilson score interval (Wilson 1927;
Brown, Cai and DasGupta 2001 recommend it for small n) says where the true accuracy lies. The
federation's accuracy is pooled from the nodes' counts of correct rows, so it is the accuracy on
all their test rows together, with the interval of that count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from lab.core.metrics import AUC_MIN_CLASS_ROWS

__all__ = ["AUC_MIN_CLASS_ROWS", "LEVEL", "Interval", "compare", "pooled_accuracy", "wilson"]

#: The confidence level of every interval the lab shows.
LEVEL = 0.95

Interval = tuple[float, float]


def wilson(accuracy: float | None, rows: int) -> Interval | None:
    """The 95% Wilson interval of an accuracy measured on ``rows`` rows (None without a score)."""
    if accuracy is None or not math.isfinite(accuracy) or rows <= 0:
        return None
    from scipy.stats import binomtest  # SciPy's statistics take a second to import: only when asked

    correct = min(rows, max(0, round(accuracy * rows)))
    found = binomtest(correct, rows).proportion_ci(confidence_level=LEVEL, method="wilson")
    return float(found.low), float(found.high)


def pooled_accuracy(scores: Iterable[tuple[float | None, int]]) -> tuple[float, int, Interval] | None:
    """The accuracy over every node's test rows from (accuracy, rows) pairs: the correct rows summed
    over the rows summed, with its interval (None when no node reported an accuracy)."""
    correct = total = 0
    for accuracy, rows in scores:
        if accuracy is None or not math.isfinite(accuracy) or rows <= 0:
            continue
        correct += round(accuracy * rows)
        total += rows
    if total == 0:
        return None
    interval = wilson(correct / total, total)
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
