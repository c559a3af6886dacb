"""Mock rows for one node, drawn from its catalog answer alone: to write code against, never real.

Each column of the spec is drawn on its own, from what the node's catalog (lab.core.catalog)
releases and nothing else: a categorical column (and a binary or multiclass target) from its level
counts, a numeric one (and a regression target) from its histogram, uniformly within the drawn bin
(over the bin's integers when every value of the column is one), and the missing rate from the
missing count. A count the catalog hides gets an equal share of what the released counts leave
of the row count. Rows are independent draws, so a mock row equals a real row only by chance, and
no pattern across columns (no correlation, no row) survives.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lab.core.data import as_levels
from lab.core.spec import Level, TaskSpec
from lab.errors import DataError, UsageError

__all__ = ["SYNTHETIC_COLUMN", "mock_name", "mock_table", "write_mock"]

#: The column that marks every mock row as synthetic (true on every row).
SYNTHETIC_COLUMN = "synthetic"

_MISSING = object()  # the draw of a missing value


def mock_name(spec: TaskSpec, node: str) -> str:
    """The file name of ``node``'s mock: ``NODE.synthetic.csv`` or ``NODE.synthetic.parquet``."""
    return f"{node}.synthetic.{spec.format_for(node).format}"


def mock_table(catalog: Mapping[str, Any], spec: TaskSpec, *, node: str, rows: int, seed: int = 0) -> pd.DataFrame:
    """``rows`` mock rows of ``node``'s table: the spec's features and target, then ``synthetic``.

    Parameters
    ----------
    catalog : Mapping
        The node's catalog answer (``build_catalog``: ``rows`` and ``columns``).
    spec : TaskSpec
        The task: which columns, their types and levels, the missing-value policy.
    node : str
        The node's name, for errors.
    rows : int
        How many rows to draw (1 or more).
    seed : int (default: 0)
        Seed of the draws, with the node's name: the same catalog, spec, node and seed give the
        same rows.

    Returns
    -------
    DataFrame
        The spec's columns in its order, then ``synthetic`` (true): a level as the spec lists it, a
        number as a float (an integer column's as an int), missing as None or NA.

    Raises
    ------
    UsageError
        If ``rows`` is under 1.
    DataError
        If the catalog lacks what a column needs (the node's row count or every count of the column
        hidden, no histogram, a column the table lacks), naming the node, the column and the fix; or
        if no drawn row would survive the spec's ``drop-row`` policy.
    """
    if rows <= 0:
        raise UsageError(f"rows = {rows!r}: give how many mock rows to draw, 1 or more")
    total = catalog.get("rows")
    if not isinstance(total, int) or isinstance(total, bool) or total <= 0:
        raise DataError(
            f"node {node!r}: its catalog gives {total!r} rows (a table under the node's minimum count shows no "
            "counts), so there is nothing to draw a mock from; ask the organisation how many rows it holds, "
            "or leave the node out of the mock"
        )
    entries = {str(entry["column"]): entry for entry in catalog.get("columns", [])}
    rng = np.random.default_rng([seed, zlib.crc32(node.encode())])  # each node's own stream
    columns: dict[str, pd.Series] = {}
    target = spec.target
    for name, levels in [(f.name, f.levels if f.type == "categorical" else None) for f in spec.features] + [
        (target.column, None if target.kind == "regression" else target.negative + target.positive + target.classes)
    ]:
        entry = entries.get(name)
        if entry is None:
            raise DataError(
                f"node {node!r}: its catalog has no column {name!r}, which the spec needs; the node's table lacks "
                "it (`lab check` shows which columns it has): correct the spec or the table"
            )
        if levels is None:
            integer = bool(entry.get("histogram", {}).get("integer", False))
            drawn = _numbers(entry, total, rng, rows, node)
            columns[name] = pd.Series(drawn, dtype="Int64" if integer else "float64")
        else:  # the spec's own values, kept as they are (a Parquet file stores them typed)
            columns[name] = pd.Series(_levels(entry, levels, total, rng, rows, node), dtype=object)
    frame = pd.DataFrame(columns)
    _check_survivors(frame, spec, node)
    frame[SYNTHETIC_COLUMN] = True
    return frame


def write_mock(table: pd.DataFrame, spec: TaskSpec, *, node: str, folder: Path) -> Path:
    """Write a mock in the format the spec gives ``node`` as ``folder/mock_name(spec, node)``.

    A CSV with a header or a Parquet file holds the spec's columns and ``synthetic``. A CSV
    without a header holds the spec's ``columns`` in their order (columns the task does not use are
    left missing) and no ``synthetic`` column: its columns are named by position, so one more would
    shift them; its file name still says it is synthetic.
    """
    file_format = spec.format_for(node)
    path = folder / mock_name(spec, node)
    try:
        if file_format.format == "parquet":
            table.to_parquet(path, index=False)
            return path
        if not file_format.header:
            table = table.reindex(columns=list(file_format.columns))
        table.to_csv(
            path,
            sep=file_format.delimiter,
            encoding=file_format.encoding,
            na_rep=file_format.missing_token,
            header=file_format.header,
            index=False,
        )
    except OSError as exc:
        raise DataError(f"cannot write the mock {str(path)!r}: {exc.strerror}; choose another folder") from None
    except UnicodeEncodeError as exc:
        raise DataError(
            f"cannot write the mock {str(path)!r} in {file_format.encoding}: {exc.object[exc.start : exc.end]!r} "
            "has no place in it; list the level in a form the node's encoding holds"
        ) from None
    return path


def _weights(cells: list[Any], missing: Any, total: int, what: str) -> np.ndarray:
    """Each cell's share of the rows (the missing count last): a released count as given, a hidden
    one an equal share of what the released counts leave of the total."""
    counts = [*cells, missing]
    released = [c for c in counts if not isinstance(c, str)]
    hidden = len(counts) - len(released)
    if not released:
        raise DataError(
            f"{what}: the catalog hides every count (each is under the node's minimum, or would give one "
            "away), so there is no distribution to draw from; leave the column out of the mock's spec, merge "
            "its rare levels, or ask the organisation whether its agreement's min-rows can be lower"
        )
    left = max(total - sum(float(c) for c in released), 0.0)
    return np.array([left / hidden if isinstance(c, str) else float(c) for c in counts])


def _draw(weights: np.ndarray, rng: np.random.Generator, rows: int, what: str) -> np.ndarray:
    if weights.sum() <= 0:
        raise DataError(
            f"{what}: the catalog's counts leave nothing to draw (every count the spec can use is 0); "
            "check the column with `lab check`"
        )
    return rng.choice(len(weights), size=rows, p=weights / weights.sum())


def _levels(
    entry: Mapping[str, Any], levels: tuple[Level, ...], total: int, rng: np.random.Generator, rows: int, node: str
) -> list[Any]:
    """A categorical column: levels in proportion to their counts, the spec's own values."""
    what = f"node {node!r}, column {entry['column']!r}"
    released = entry.get("levels")
    if not isinstance(released, dict):
        raise DataError(
            f"{what}: the catalog gives no level counts (the node's lab predates them for a target); "
            "update the lab at the node"
        )
    names = list(released)
    weights = _weights([released[n] for n in names], entry.get("missing", 0), total, what)
    # A level the spec does not list (the table does not fit it: `lab check` says so) is not drawn.
    mapped = as_levels(pd.Series(names, dtype=object), levels).tolist()
    usable = np.array([m is not None for m in mapped] + [True])
    index = _draw(np.where(usable, weights, 0.0), rng, rows, what)
    values = [*mapped, None]
    return [values[i] for i in index]


def _numbers(entry: Mapping[str, Any], total: int, rng: np.random.Generator, rows: int, node: str) -> list[Any]:
    """A numeric column: a histogram bin in proportion to its count, then a value within it."""
    what = f"node {node!r}, column {entry['column']!r}"
    histogram = entry.get("histogram")
    if histogram is None:
        if entry.get("missing") == total:
            return [None] * rows  # missing on every row, as in the table
        if "range" in entry:
            raise DataError(
                f"{what}: the catalog gives a range but no histogram (the node's lab predates histograms in "
                "the catalog); update the lab at the node"
            )
        raise DataError(
            f"{what}: the catalog gives no histogram (fewer values than the node's minimum count, or values that "
            "are not numbers: `lab check` says which); leave the column out of the mock's spec"
        )
    edges = [float(e) for e in histogram["edges"]]
    integer = bool(histogram.get("integer", False))
    bins = list(zip(edges[:-1], edges[1:], strict=True))
    weights = _weights(list(histogram["counts"]), entry.get("missing", 0), total, what)
    if integer:  # a bin without an integer in it holds no value of an integer column
        for i, (low, high) in enumerate(bins):
            if not _integers(low, high, i == len(bins) - 1):
                weights[i] = 0.0
    index = _draw(weights, rng, rows, what)
    values: list[Any] = []
    for i in index:
        if i == len(bins):
            values.append(None)
        elif integer:
            low, high = bins[i]
            choices = _integers(low, high, i == len(bins) - 1)
            values.append(int(choices[rng.integers(len(choices))]))
        else:
            low, high = bins[i]
            values.append(float(rng.uniform(low, high)) if high > low else low)
    return values


def _integers(low: float, high: float, last: bool) -> list[int]:
    """The integers of the bin [low, high), or [low, high] for the last one (as numpy's histogram)."""
    return list(range(math.ceil(low), (math.floor(high) if last else math.ceil(high) - 1) + 1))


def _check_survivors(frame: pd.DataFrame, spec: TaskSpec, node: str) -> None:
    """The mock must load: some row complete in every column the spec drops rows for."""
    dropping = [f.name for f in spec.features if f.missing == "drop-row"] + [spec.target.column]
    if frame[dropping].notna().all(axis=1).any():
        return
    worst = frame[dropping].isna().mean().idxmax()
    raise DataError(
        f"node {node!r}: no mock row is complete in the columns the spec drops rows for (column {worst!r} is "
        f"missing in {frame[worst].isna().mean():.0%} of them), so the mock, like such a table, would not load; "
        f'draw more rows, or set missing = "impute" for {worst!r} in the spec'
    )
