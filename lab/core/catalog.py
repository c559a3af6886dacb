"""What a node holds of the spec's columns, without its rows: types, counts and histograms, small
counts hidden, and its table's problems against the spec."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lab.core.analytics import nice
from lab.core.data import as_levels, check_column, check_frame, is_blank, read_raw
from lab.core.disclosure import protect_counts
from lab.core.spec import Level, TaskSpec
from lab.errors import DataError

__all__ = ["HISTOGRAM_BINS", "build_catalog", "describe", "preflight"]

logger = logging.getLogger(__name__)

#: About how many bins a numeric column's histogram in the catalog has (of a round width).
HISTOGRAM_BINS = 10


def _count(n: int, min_rows: int) -> int | str:
    """The table's row count, or "<min_rows" when it is smaller: small counts can identify people."""
    return n if n == 0 or n >= min_rows else f"<{min_rows}"


def _shown(counts: list[int], total: int, min_rows: int) -> list[int | str]:
    """Counts adding up to the row count, with small ones and their complements held back."""
    released = protect_counts(counts, total, min_rows)
    return ["hidden" if value is None else value for value in released]


def _column_type(name: str, spec: TaskSpec) -> str:
    """How the catalog describes a column of the spec: numeric or categorical."""
    if name == spec.target.column:
        return "numeric" if spec.target.kind == "regression" else "categorical"
    return {f.name: f.type for f in spec.features}[name]


def _spec_levels(name: str, spec: TaskSpec) -> tuple[Level, ...]:
    """The values a categorical column of the spec may hold (a class target's raw values)."""
    if name == spec.target.column:
        target = spec.target
        return target.classes if target.kind == "multiclass" else target.negative + target.positive
    return {f.name: f.levels for f in spec.features}[name]


def _edges(values: np.ndarray) -> list[float]:
    """``HISTOGRAM_BINS`` or so bins of a round width over the values, their outer edges rounded
    outwards to that width: the edges say where the values lie, never one of them exactly."""
    low, high = float(values.min()), float(values.max())
    width = nice((high - low) / HISTOGRAM_BINS) if high > low else nice(max(abs(low), 1.0) / HISTOGRAM_BINS)
    start = math.floor(low / width) * width
    count = max(1, math.floor((high - start) / width) + 1)
    return [round(start + i * width, 10) for i in range(count + 1)]


def build_catalog(path: str | Path, spec: TaskSpec, *, node: str | None = None, min_rows: int = 10) -> dict[str, Any]:
    """The spec's columns in the node's table: types, missing counts, level counts and histograms
    (``describe``'s catalog)."""
    return describe(path, spec, node=node, min_rows=min_rows)[0]


def describe(
    path: str | Path, spec: TaskSpec, *, node: str | None = None, min_rows: int = 10
) -> tuple[dict[str, Any], list[np.ndarray], pd.DataFrame]:
    """What the node holds of the spec's columns, without its rows, and the rows behind each count
    it releases (one boolean mask over the file's lines each), with the raw table they were read from.

    Only the spec's columns are described: a column the spec does not name (an identifier, a date
    of birth) is not mentioned. A categorical column (and a binary or multiclass target) gives the
    count of each of the spec's levels and of values the spec does not list (``unknown``: a count,
    never the values); a numeric one (and a regression target) a histogram over round edges that
    cover its values (``HISTOGRAM_BINS`` or so bins; the outer edges are rounded outwards, so no
    value is given exactly), whether every value is an integer, and how many are not numbers. Each
    column's counts and its missing count are protected together as one table adding up to the row
    count (lab.core.disclosure: counts under ``min_rows`` and their complements are "hidden"); a
    histogram is given only for a column with at least ``min_rows`` values.
    """
    file_format = spec.format_for(node)
    frame, offset = read_raw(path, file_format)
    rows = len(frame)
    size = rows + 2  # lab.node.releases.line_count: a line is a row's position plus 1 or 2
    lines = np.arange(rows) + offset
    released: list[np.ndarray] = []

    def on_lines(mask: np.ndarray) -> np.ndarray:
        out = np.zeros(size, dtype=bool)
        out[lines[mask]] = True
        return out

    def shown(parts: list[np.ndarray]) -> list[int | str]:
        """Counts of disjoint row sets adding up to the row count, small ones and their complements hidden."""
        counts = [int(p.sum()) for p in parts]
        out = _shown(counts, rows, min_rows)
        released.extend(on_lines(p) for p, value in zip(parts, out, strict=True) if value != "hidden")
        return out

    declared = {f.name for f in spec.features}
    columns = []
    for name in spec.raw_columns:
        if name not in frame.columns:
            continue  # the pre-flight says the file lacks it
        raw = frame[name]
        blank = is_blank(raw, file_format).to_numpy(dtype=bool)
        present = ~blank
        kind = _column_type(name, spec)
        entry: dict[str, Any] = {
            "column": name,
            "role": "target" if name == spec.target.column else ("feature" if name in declared else "unused"),
            "type": kind,
        }
        if kind == "categorical":
            levels = _spec_levels(name, spec)
            mapped = as_levels(raw.where(~blank), levels)
            parts = [(mapped == level).to_numpy(dtype=bool) & present for level in levels]
            unknown = present & mapped.isna().to_numpy(dtype=bool)
            counted = shown([*parts, unknown, blank])
            entry["levels"] = {_label(level): value for level, value in zip(levels, counted, strict=False)}
            entry["unknown"], entry["missing"] = counted[-2], counted[-1]
        else:
            numbers = pd.to_numeric(raw.where(~blank), errors="coerce").to_numpy(dtype=float)
            readable = ~np.isnan(numbers)
            unreadable = present & ~readable
            if int(readable.sum()) >= min_rows:
                edges = _edges(numbers[readable])
                index = np.clip(np.searchsorted(edges, numbers, side="right") - 1, 0, len(edges) - 2)
                parts = [readable & (index == b) for b in range(len(edges) - 1)]
                counted = shown([*parts, unreadable, blank])
                integer = bool(np.all(numbers[readable] == np.round(numbers[readable])))
                entry["histogram"] = {"edges": edges, "integer": integer, "counts": counted[:-2]}
            else:
                counted = shown([readable, unreadable, blank])
            entry["not_numbers"], entry["missing"] = counted[-2], counted[-1]
        columns.append(entry)
    if rows >= min_rows:  # the row count is released (else as "<min_rows")
        released.append(on_lines(np.ones(rows, dtype=bool)))
    return {"rows": _count(rows, min_rows), "columns": columns}, released, frame


def _label(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def preflight(path: str | Path, spec: TaskSpec, *, node: str | None = None) -> list[dict[str, str]]:
    """Every problem of the node's table against the spec, one per column (empty when it fits), as
    it may leave the node: no path, line or value (the node's log has those, for its operator)."""
    file_format = spec.format_for(node)
    problems: list[dict[str, str]] = []

    def found(column: str, exc: DataError) -> None:
        logger.warning("pre-flight of %s: %s", column, exc)
        problems.append({"column": column, "problem": exc.off_node()})

    try:
        frame, offset = read_raw(path, file_format)
    except DataError as exc:
        found("(file)", exc)
        return problems
    problems += [
        {"column": name, "problem": "missing from the table"} for name in spec.raw_columns if name not in frame
    ]
    lines = np.arange(len(frame)) + offset
    for feature in spec.features:
        if feature.name in frame.columns:
            try:
                check_column(frame[feature.name], feature, file_format, str(path), lines)
            except DataError as exc:
                found(feature.name, exc)
    if not problems:
        try:
            check_frame(frame, spec, source=str(path), file_format=file_format, offset=offset)
        except DataError as exc:
            found(spec.target.column, exc)
    return problems
