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
    pos = scores[y == 1]
    neg = scores[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))
