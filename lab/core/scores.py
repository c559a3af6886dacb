"""The scores a node releases, noised so that no model's score singles out one of its test rows.

A metric on a node's test split is a sum over its rows divided by their number, and every model
the coordinator has the node score is another sum over the same rows: two models that differ on
one row differ by one row's share, and enough models (thresholds on one column, say) spell out
every row's label. So a node releases each metric through the Gaussian mechanism on the sum behind
it, each row's part of that sum bounded first:

- accuracy: the count of correct rows (one row adds 0 or 1);
- loss: the sum of each row's loss clipped to ``LOSS_CLIP`` (log loss for classes; for a
  regression target, the squared error in its standardised units);
- AUC: the Mann-Whitney count of ordered pairs over the pairs, whose one row moves it by at most
  one over the smaller class's count (taken at the node's own counts; an AUC over a class smaller
  than the node's minimum is not released);
- RMSE, MAE and R²: sums of squared and absolute errors, and of the target's squares and values,
  each row's error and target clipped to ``TARGET_CLIP`` standard deviations of the target (the
  federation's, as the message carries it) from its mean.

Each noisy sum with noise ``scale`` times its bound costs ``1 / (2 scale²)`` in zero-concentrated
differential privacy (Bun and Steinke 2016, "Concentrated differential privacy: simplifications,
extensions, and lower bounds"), and those costs add up exactly over every release of a run;
``epsilon_of`` turns the total into an epsilon at a delta. A run's score budget (an epsilon) is
spread over the releases its plan declares (``scales``): the more models a coordinator has a
node score, the noisier each score. Noise is drawn from the operating system's entropy.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from lab.core.metrics import predictions, roc_auc
from lab.core.spec import TaskSpec

__all__ = [
    "LOSS_CLIP",
    "TARGET_CLIP",
    "WEIGHTS",
    "Released",
    "components",
    "epsilon_of",
    "release",
    "rho_of",
    "scales",
]

#: Largest loss one row adds to a released loss (log loss: a probability of about 1% on its class).
LOSS_CLIP = math.log(100.0)
#: Largest error or target deviation one row adds, in the target's standard deviations.
TARGET_CLIP = 4.0
#: How much of a run's score budget each kind of release gets, relative to the others: the final
#: model's and the local-only baseline's scores (the figures a run reports) four times a round's.
WEIGHTS = {"baseline": 4.0, "final": 4.0, "round": 1.0, "candidate": 1.0}


def epsilon_of(rho: float, delta: float) -> float:
    """The epsilon at ``delta`` of a zero-concentrated DP cost ``rho``: rho + 2 sqrt(rho ln(1/delta))."""
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta)) if rho > 0 else 0.0


def rho_of(epsilon: float, delta: float) -> float:
    """The zero-concentrated DP cost whose epsilon at ``delta`` is ``epsilon`` (``epsilon_of``'s inverse)."""
    tail = math.log(1.0 / delta)
    return (math.sqrt(tail + epsilon) - math.sqrt(tail)) ** 2


def components(spec: TaskSpec) -> int:
    """How many noisy sums one model's scores take: their share of the run's budget."""
    wanted = set(spec.metrics)
    if spec.target.kind == "regression":
        sums = set()
        for metric in wanted:
            sums |= {"rmse": {"sse"}, "loss": {"sse"}, "mae": {"sae"}, "r2": {"sse", "ssy", "sy"}}[metric]
        return len(sums)
    return len(wanted & {"accuracy", "auc", "loss"})


def scales(releases: Mapping[str, int], spec: TaskSpec, epsilon: float, delta: float) -> dict[str, float]:
    """The noise scale of each kind of release (``WEIGHTS``) when a run releases ``releases[kind]``
    models' scores of that kind within ``epsilon`` at ``delta``: the budget is shared by weight, and
    one model's share is spread evenly over its ``components``."""
    total = sum(WEIGHTS[kind] * count for kind, count in releases.items())
    if total <= 0:
        return {kind: 0.0 for kind in releases}
    rho = rho_of(epsilon, delta)
    parts = max(components(spec), 1)
    return {kind: math.sqrt(parts * total / (2.0 * rho * WEIGHTS[kind])) for kind in releases}


@dataclass(frozen=True)
class Released:
    """One model's released scores, each metric's noise (its standard deviation, in the metric's
    units) and the zero-concentrated DP cost of releasing them."""

    metrics: dict[str, float]
    noise: dict[str, float]
    rho: float


def release(
    scores: np.ndarray,
    y: np.ndarray,
    spec: TaskSpec,
    *,
    scale: float,
    loss_rows: np.ndarray,
    target_mean: float = 0.0,
    target_std: float = 1.0,
    min_class_rows: int = 1,
) -> Released:
    """The spec's metrics of ``scores`` against ``y``, each noised at ``scale`` (> 0) times its row
    bound. ``loss_rows``: each row's loss, as the model's loss function gives it."""
    if scale <= 0:
        raise ValueError(f"a noise scale of {scale!r}: exact scores are compute_metrics'")
    y = np.asarray(y, dtype=np.float64)
    rng = np.random.default_rng(secrets.randbits(128))
    n = len(y)
    wanted = set(spec.metrics)
    metrics: dict[str, float] = {}
    noise: dict[str, float] = {}
    spent = 0

    def noisy(total: float, bound: float) -> float:
        nonlocal spent
        spent += 1
        return float(total + rng.normal(0.0, scale * bound))

    if "loss" in wanted and spec.target.kind != "regression":
        metrics["loss"] = max(noisy(float(np.minimum(loss_rows, LOSS_CLIP).sum()), LOSS_CLIP) / n, 0.0)
        noise["loss"] = scale * LOSS_CLIP / n
    if spec.target.kind in ("binary", "multiclass") and "accuracy" in wanted:
        correct = float((predictions(scores, spec) == y).sum())
        metrics["accuracy"] = min(max(noisy(correct, 1.0) / n, 0.0), 1.0)
        noise["accuracy"] = scale / n
    if spec.target.kind == "binary" and "auc" in wanted:
        smaller = int(min((y == 1).sum(), (y == 0).sum()))
        if smaller >= max(min_class_rows, 1):
            metrics["auc"] = min(max(noisy(roc_auc(scores, y) * smaller, 1.0) / smaller, 0.0), 1.0)
            noise["auc"] = scale / smaller
    if spec.target.kind == "regression":
        bound = TARGET_CLIP * target_std
        error = np.clip(scores - y, -bound, bound)
        deviation = np.clip(y - target_mean, -bound, bound)
        sums: dict[str, float] = {}
        if wanted & {"rmse", "loss", "r2"}:
            sums["sse"] = max(noisy(float((error**2).sum()), bound**2), 0.0)
        if "mae" in wanted:
            sums["sae"] = max(noisy(float(np.abs(error).sum()), bound), 0.0)
        if "rmse" in wanted:
            metrics["rmse"] = math.sqrt(sums["sse"] / n)
            noise["rmse"] = scale * bound**2 / n / max(2 * metrics["rmse"], bound / math.sqrt(n))
        if "loss" in wanted:
            metrics["loss"] = sums["sse"] / n / target_std**2
            noise["loss"] = scale * bound**2 / n / target_std**2
        if "mae" in wanted:
            metrics["mae"] = sums["sae"] / n
            noise["mae"] = scale * bound / n
        if "r2" in wanted:
            squares = max(noisy(float((deviation**2).sum()), bound**2), 0.0)
            shift = noisy(float(deviation.sum()), bound)
            spread = squares - shift**2 / n
            metrics["r2"] = 1.0 - sums["sse"] / spread if spread > 0 else 0.0
            noise["r2"] = scale * bound**2 / max(spread, bound**2)
    return Released(metrics, noise, spent / (2.0 * scale**2))
