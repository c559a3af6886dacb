"""Preprocessing that travels with the model: encoding raw columns and scaling them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lab.core.spec import TaskSpec

__all__ = ["ColumnSums", "Scaler", "encode"]


def encode(features: pd.DataFrame, spec: TaskSpec) -> np.ndarray:
    """Turn typed feature columns into the model's input matrix (unscaled, NaN where missing).

    Numeric columns pass through; a categorical column becomes one indicator per kept
    level (all zero when the value is missing).
    """
    blocks: list[np.ndarray] = []
    for feature in spec.features:
        column = features[feature.name]
        if feature.type == "numeric":
            blocks.append(pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)[:, None])
            continue
        kept = feature.levels[1:] if feature.drop_first else feature.levels
        values = column.to_numpy(dtype=object)
        blocks.append(np.stack([values == level for level in kept], axis=1).astype(np.float64))
    return np.concatenate(blocks, axis=1)


@dataclass(frozen=True)
class ColumnSums:
    """Per-column count, sum and sum of squares: what a node shares to build the scaler."""

    count: np.ndarray
    total: np.ndarray
    squares: np.ndarray

    @classmethod
    def of(cls, matrix: np.ndarray) -> ColumnSums:
        """Sums over the non-missing entries of each column."""
        present = ~np.isnan(matrix)
        values = np.where(present, matrix, 0.0)
        return cls(present.sum(axis=0).astype(np.float64), values.sum(axis=0), (values**2).sum(axis=0))

    def __add__(self, other: ColumnSums) -> ColumnSums:
        return ColumnSums(self.count + other.count, self.total + other.total, self.squares + other.squares)


@dataclass(frozen=True)
class Scaler:
    """Standardisation with a mean and std per encoded column.

    Missing entries become 0 after scaling, i.e. the mean: that is the ``impute`` policy.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def identity(cls, width: int) -> Scaler:
        """No scaling."""
        return cls(np.zeros(width), np.ones(width))

    @classmethod
    def from_lists(cls, mean: list[float], std: list[float]) -> Scaler:
        """A scaler sent as plain lists (``to_lists``)."""
        return cls(np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64))

    @classmethod
    def from_sums(cls, sums: ColumnSums) -> Scaler:
        """The pooled mean and (population) std; constant columns keep std 1."""
        count = np.maximum(sums.count, 1.0)
        mean = sums.total / count
        var = np.maximum(sums.squares / count - mean**2, 0.0)
        std = np.sqrt(var)
        return cls(mean, np.where(std > 1e-12, std, 1.0))

    @classmethod
    def fit(cls, matrix: np.ndarray) -> Scaler:
        """Mean and std of one node's own rows (the local-only baseline uses this)."""
        return cls.from_sums(ColumnSums.of(matrix))

    def transform(self, matrix: np.ndarray) -> np.ndarray:
        """Scaled float32 matrix, missing entries set to the mean (0)."""
        scaled = (matrix - self.mean) / self.std
        out: np.ndarray = np.nan_to_num(scaled, nan=0.0).astype(np.float32)
        return out

    def to_lists(self) -> tuple[list[float], list[float]]:
        """Plain lists, for a ConfigRecord or JSON."""
        return [float(v) for v in self.mean], [float(v) for v in self.std]
