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

__all__ = ["build_catalog", "preflight"]


def _count(n: int, min_rows: int) -> int | str:
    """The table's row count, or "<min_rows" when it is smaller: small counts can identify people."""
    return n if n == 0 or n >= min_rows else f"<{min_rows}"


def _shown(counts: list[int], total: int, min_rows: int) -> list[int | str]:
    """Counts adding up to the row count, with small ones and their complements held back."""
    released = protect_counts(counts, total, min_rows)
    return ["hidden" if value is None else value for value in released]


def build_catalog(path: str | Path, spec: TaskSpec, *, node: str | None = None, min_rows: int = 10) -> dict[str, Any]:
    """Columns of the node's table with their types, missing counts, ranges and level counts.

    Counts under ``min_rows``, and the counts that would let one be recomputed from the row
    count, are shown as "hidden" (lab.core.disclosure); ranges are given only for columns with at
    least ``min_rows`` values (the minimum and maximum are still single values).
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
        entry: dict[str, Any] = {
            "column": str(name),
            "role": "target" if name == spec.target.column else ("feature" if name in declared else "unused"),
            "type": declared[name].type if name in declared else "",
        }
        if name in declared and declared[name].type == "categorical":
            counts = raw.where(~blank).dropna().astype(str).str.strip().value_counts()
            levels = sorted(counts.items())
            shown = _shown([int(n) for _, n in levels] + [rows - present], rows, min_rows)
            entry["missing"] = shown[-1]
            entry["levels"] = {level: value for (level, _), value in zip(levels, shown, strict=False)}
        else:
            entry["missing"] = _shown([present, rows - present], rows, min_rows)[1]
        numbers = pd.to_numeric(raw.where(~blank), errors="coerce")
        if numbers.notna().sum() == present and present >= min_rows:
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
