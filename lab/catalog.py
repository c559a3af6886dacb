"""What a node holds, without its rows: columns, types, counts and ranges, small counts hidden."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lab.data import check_column, check_frame, is_blank, read_raw
from lab.errors import DataError
from lab.spec import TaskSpec

__all__ = ["build_catalog", "preflight"]


def _count(n: int, min_rows: int) -> int | str:
    """A count, or "<min_rows" when it is smaller: small counts can identify people."""
    return n if n == 0 or n >= min_rows else f"<{min_rows}"


def build_catalog(path: str | Path, spec: TaskSpec, *, node: str | None = None, min_rows: int = 10) -> dict[str, Any]:
    """Columns of the node's table with their types, missing counts, ranges and level counts.

    Counts under ``min_rows`` are shown as ``<min_rows``; ranges are given only for columns with
    at least ``min_rows`` values (a minimum or maximum of a few rows is one person's value).
    """
    file_format = spec.format_for(node)
    frame, _ = read_raw(path, file_format)
    declared = {f.name: f for f in spec.features}
    columns = []
    for name in frame.columns:
        raw = frame[name]
        blank = is_blank(raw, file_format)
        present = int((~blank).sum())
        entry: dict[str, Any] = {
            "column": str(name),
            "role": "target" if name == spec.target.column else ("feature" if name in declared else "unused"),
            "type": declared[name].type if name in declared else "",
            "missing": _count(int(blank.sum()), min_rows),
        }
        numbers = pd.to_numeric(raw.where(~blank), errors="coerce")
        if numbers.notna().sum() == present and present >= min_rows:
            entry["range"] = [float(np.nanmin(numbers)), float(np.nanmax(numbers))]
        if name in declared and declared[name].type == "categorical":
            counts = raw.where(~blank).dropna().astype(str).str.strip().value_counts()
            entry["levels"] = {level: _count(int(n), min_rows) for level, n in sorted(counts.items())}
        columns.append(entry)
    return {"rows": _count(len(frame), min_rows), "columns": columns}


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
