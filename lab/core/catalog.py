"""What a node holds, without its rows: columns, types, counts and ranges, small counts hidden."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lab.core.data import check_column, check_frame, is_blank, read_raw
from lab.core.disclosure import protect_counts
from lab.core.spec import TaskSpec
from lab.errors import DataError

__all__ = ["HISTOGRAM_BINS", "build_catalog", "preflight"]

#: Bins of a numeric column's histogram in the catalog, equal-width over its released range.
HISTOGRAM_BINS = 10


def _count(n: int, min_rows: int) -> int | str:
    """The table's row count, or "<min_rows" when it is smaller: small counts can identify people."""
    return n if n == 0 or n >= min_rows else f"<{min_rows}"


def _shown(counts: list[int], total: int, min_rows: int) -> list[int | str]:
    """Counts adding up to the row count, with small ones and their complements held back."""
    released = protect_counts(counts, total, min_rows)
    return ["hidden" if value is None else value for value in released]


def _column_type(name: str, spec: TaskSpec) -> str:
    """How the catalog describes a column of the spec: numeric or categorical ("" if unused)."""
    if name == spec.target.column:
        return "numeric" if spec.target.kind == "regression" else "categorical"
    declared = {f.name: f.type for f in spec.features}
    return declared.get(name, "")


def _bins(values: np.ndarray) -> tuple[list[float], list[int]]:
    """Equal-width bins over the values' range and their counts (one bin when all are equal)."""
    low, high = float(values.min()), float(values.max())
    if low == high:
        return [low, high], [len(values)]
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(low, high))
    return [float(e) for e in edges], [int(n) for n in counts]


def build_catalog(path: str | Path, spec: TaskSpec, *, node: str | None = None, min_rows: int = 10) -> dict[str, Any]:
    """Columns of the node's table with their types, missing counts, ranges, histograms and level counts.

    Counts under ``min_rows``, and the counts that would let one be recomputed from the row
    count, are shown as "hidden" (lab.core.disclosure); ranges are given only for columns with at
    least ``min_rows`` values (the minimum and maximum are still single values). A categorical
    column (and a binary or multiclass target) gives its level counts; a numeric one (and a
    regression target) with a range gives a histogram: ``HISTOGRAM_BINS`` equal-width bins over the
    range (the last one closed), whether every value is an integer, and the bins' counts, protected
    together with the missing count as one table adding up to the row count.
    """
    file_format = spec.format_for(node)
    frame, _ = read_raw(path, file_format)
    rows = len(frame)
    declared = {f.name: f for f in spec.features}
    columns = []
    for name in frame.columns:
        raw = frame[name]
        blank = is_blank(raw, file_format)
        present = int((~blank).sum())
        kind = _column_type(str(name), spec)
        entry: dict[str, Any] = {
            "column": str(name),
            "role": "target" if name == spec.target.column else ("feature" if name in declared else "unused"),
            "type": kind,
        }
        numbers = pd.to_numeric(raw.where(~blank), errors="coerce")
        ranged = bool(numbers.notna().sum() == present and present >= min_rows)
        if kind == "categorical":
            counts = raw.where(~blank).dropna().astype(str).str.strip().value_counts()
            levels = sorted(counts.items())
            shown = _shown([int(n) for _, n in levels] + [rows - present], rows, min_rows)
            entry["missing"] = shown[-1]
            entry["levels"] = {level: value for (level, _), value in zip(levels, shown, strict=False)}
        elif kind == "numeric" and ranged:
            values = numbers.dropna().to_numpy(dtype=float)
            edges, counts = _bins(values)
            shown = _shown(counts + [rows - present], rows, min_rows)
            entry["missing"] = shown[-1]
            integer = bool(np.all(values == np.round(values)))
            entry["histogram"] = {"edges": edges, "integer": integer, "counts": shown[:-1]}
        else:
            entry["missing"] = _shown([present, rows - present], rows, min_rows)[1]
        if ranged:
            entry["range"] = [float(np.nanmin(numbers)), float(np.nanmax(numbers))]
        columns.append(entry)
    return {"rows": _count(rows, min_rows), "columns": columns}


def preflight(path: str | Path, spec: TaskSpec, *, node: str | None = None) -> list[dict[str, str]]:
    """Every problem of the node's table against the spec, one per column (empty when it fits)."""
    file_format = spec.format_for(node)
    try:
        frame, offset = read_raw(path, file_format)
    except DataError as exc:
        return [{"column": "(file)", "problem": str(exc)}]
    problems = [
        {"column": name, "problem": f"missing from the file, which has {list(map(str, frame.columns))!r}"}
        for name in spec.raw_columns
        if name not in frame.columns
    ]
    lines = np.arange(len(frame)) + offset
    for feature in spec.features:
        if feature.name in frame.columns:
            try:
                check_column(frame[feature.name], feature, file_format, str(path), lines)
            except DataError as exc:
                problems.append({"column": feature.name, "problem": str(exc)})
    if not problems:
        try:
            check_frame(frame, spec, source=str(path), file_format=file_format, offset=offset)
        except DataError as exc:
            problems.append({"column": spec.target.column, "problem": str(exc)})
    return problems
