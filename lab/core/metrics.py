"""Metrics the spec can report, computed the same way at a node and in a rerun."""

from __future__ import annotations

import numpy as np

from lab.core.spec import TaskSpec

__all__ = ["AUC_MIN_CLASS_ROWS", "compute_metrics", "predictions"]

#: An AUC is marked unreliable where a class has fewer test rows than this.
AUC_MIN_CLASS_ROWS = 5


def predictions(scores: np.ndarray, spec: TaskSpec) -> np.ndarray:
    """Hard predictions: class codes (threshold 0.5 for binary) or values."""
    if spec.target.kind == "binary":
        hard: np.ndarray = (scores >= 0.5).astype(np.float64)
        return hard
    if spec.target.kind == "multiclass":
        classes: np.ndarray = scores.argmax(axis=1).astype(np.float64)
        return classes
    return scores


def compute_metrics(scores: np.ndarray, y: np.ndarray, spec: TaskSpec, *, loss: float) -> dict[str, float]:
    """The spec's metrics for these scores against targets ``y``."""
    y = np.asarray(y, dtype=np.float64)
    pred = predictions(scores, spec)
    out: dict[str, float] = {"loss": loss}
    if spec.target.kind in ("binary", "multiclass"):
        out["accuracy"] = float(np.mean(pred == y))
    if spec.target.kind == "binary":
        out["auc"] = roc_auc(scores, y)
    if spec.target.kind == "regression":
        err = pred - y
        out["rmse"] = float(np.sqrt(np.mean(err**2)))
        out["mae"] = float(np.mean(np.abs(err)))
        spread = float(np.sum((y - y.mean()) ** 2))
        out["r2"] = float(1.0 - np.sum(err**2) / spread) if spread > 0 else 0.0
    return {k: v for k, v in out.items() if k in spec.metrics}


def roc_auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half).

    NaN when the rows hold only one class: the AUC is then undefined, not 0.5.
    """
    scores, y = np.asarray(scores, dtype=np.float64), np.asarray(y)
    labelled = (y == 1) | (y == 0)
    scores, positive = scores[labelled], y[labelled] == 1
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # The positives' rank sum (ties share their average rank) counts, for each positive, the
    # negatives below it and half those tied with it: O(n log n), not one comparison per pair.
    order = np.argsort(scores, kind="mergesort")
    _, group, counts = np.unique(scores[order], return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = np.empty(len(scores))
    ranks[order] = ((ends - counts + 1 + ends) / 2.0)[group]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
