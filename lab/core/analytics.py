"""Federated analytics: each node summarises its own table, the coordinator pools the summaries.

Nothing here sees a row it does not own. A node answers with sums and counts only, and every
count under the minimum cell count is suppressed *at the node*, together with enough other cells
that it cannot be recomputed by subtracting the released ones from a released total
(``protect``). The coordinator pools what the nodes sent: counts add, and means, variances and
correlations are computed from the pooled sums, so they equal those of the concatenated tables
exactly whenever nothing was suppressed.

Quantiles cannot be pooled exactly from sums; they are interpolated from the pooled histogram and
labelled as such (their error is at most one bin width).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lab.core.data import Table
from lab.core.disclosure import DEFAULT_MIN_COUNT, protect, with_margins
from lab.core.preprocess import ColumnSums
from lab.core.spec import TaskSpec
from lab.errors import QueryError

__all__ = [
    "bin_labels",
    "DEFAULT_MIN_COUNT",
    "StatsRequest",
    "default_edges",
    "is_categorical",
    "nice",
    "node_summary",
    "pool",
    "protect",
    "protect_column_sums",
    "stats_frame",
]

#: Quantiles reported for numeric columns.
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Inner bins of a default histogram (plus two open-ended outer bins).
DEFAULT_BINS = 10


@dataclass(frozen=True)
class StatsRequest:
    """What the coordinator asks every node to summarise.

    ``edges`` gives each numeric column's inner bin edges; values below the first edge and from
    the last edge up fall into two open-ended outer bins, so no bin reveals an extreme value.
    ``moments_only`` asks for counts, sums and sums of squares only (the first of two passes,
    from which default edges are set). The groups of a ``by`` or ``crosstab`` column are the
    spec's levels of it or, for a numeric column the spec lists none of, its bins (``edges``):
    groups are never taken from a node's data, nor from the request, where they could single out
    one person's value.

    Every figure of one reply is computed over the same rows: those with a value in every column
    the request names (and, for ``by`` and ``crosstab`` columns, one of the groups). Figures over
    different row sets could be subtracted from each other; the node's audit across answers
    (lab.node.releases) refuses the combinations that would.
    """

    columns: tuple[str, ...]
    by: str | None = None
    crosstab: tuple[str, str] | None = None
    correlation: bool = False
    edges: dict[str, list[float]] = field(default_factory=dict)
    min_count: int = DEFAULT_MIN_COUNT
    moments_only: bool = False

    @property
    def used(self) -> list[str]:
        """Every column the request names, each once."""
        names = [*self.columns, *([self.by] if self.by else []), *(self.crosstab or ())]
        return list(dict.fromkeys(names))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> StatsRequest:
        raw = json.loads(text)
        return cls(
            columns=tuple(raw["columns"]),
            by=raw.get("by"),
            crosstab=(str(raw["crosstab"][0]), str(raw["crosstab"][1])) if raw.get("crosstab") else None,
            correlation=bool(raw.get("correlation")),
            edges={k: [float(e) for e in v] for k, v in raw.get("edges", {}).items()},
            min_count=int(raw.get("min_count", DEFAULT_MIN_COUNT)),
            moments_only=bool(raw.get("moments_only")),
        )

    def check(self, spec: TaskSpec) -> None:
        """Raise QueryError naming a column the spec does not have, or a bad edge list."""
        known = [f.name for f in spec.features] + [spec.target.column]
        wanted = list(self.columns) + ([self.by] if self.by else []) + list(self.crosstab or ())
        for column in wanted:
            if column not in known:
                raise QueryError(f"column {column!r} is not in task {spec.name!r}; choose from {known!r}")
        if not self.columns and not self.crosstab:
            raise QueryError("name at least one column, e.g. `lab stats age chol --by sex`")
        for column, edges in self.edges.items():
            finite = all(isinstance(e, float) and math.isfinite(e) for e in edges)
            if len(edges) < 2 or not finite or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
                raise QueryError(f"bins for {column!r} = {edges!r}; give increasing edges, e.g. {column}=30:80:10")
        if self.min_count < DEFAULT_MIN_COUNT:
            raise QueryError(f"min-count {self.min_count} is below the floor of {DEFAULT_MIN_COUNT}")
        for column in [*([self.by] if self.by else []), *(self.crosstab or ())]:
            _grouping(column, spec, self)  # the spec's levels, or bins: a numeric column without either fails
        grouping = {*([self.by] if self.by else []), *(self.crosstab or ())}
        for column in set(self.edges) - set(self.columns) - grouping:
            raise QueryError(
                f"--bins names {column!r}, which is not among the columns asked for {list(self.columns)!r}"
            )


def stats_frame(table: Table, spec: TaskSpec) -> pd.DataFrame:
    """The node's rows as analytics sees them: the spec's features and the (encoded) target."""
    frame = table.features.copy()
    if table.target is not None:
        frame[spec.target.column] = table.target
    return frame


def is_categorical(column: str, spec: TaskSpec) -> bool:
    """Whether analytics counts a column by level: a categorical feature, or a class target."""
    for feature in spec.features:
        if feature.name == column:
            return feature.type == "categorical"
    return spec.target.column == column and spec.target.kind != "regression"


def spec_levels(column: str, spec: TaskSpec) -> list[str] | None:
    """A column's levels as the spec gives them (a feature's, or a class target's), as text; None
    for a numeric column the spec lists no levels of."""
    for feature in spec.features:
        if feature.name == column and feature.levels:
            return [_label(level) for level in feature.levels]
    if column == spec.target.column and spec.target.kind == "binary":
        return ["0", "1"]
    if column == spec.target.column and spec.target.kind == "multiclass":
        return [str(i) for i in range(len(spec.target.classes))]
    return None


def _grouping(
    column: str, spec: TaskSpec, request: StatsRequest
) -> tuple[list[str], Callable[[pd.Series], np.ndarray]]:
    """A grouping column's groups and a function giving each row's group (-1: none of them): the
    spec's levels, or for a numeric column without them the request's bins; never a node's values."""
    levels = spec_levels(column, spec)
    if levels is not None:
        lookup = {level: i for i, level in enumerate(levels)}

        def by_level(values: pd.Series) -> np.ndarray:
            index: np.ndarray = values.map(lambda v: lookup.get(_label_or_none(v) or "", -1)).to_numpy(dtype=int)
            return index

        return levels, by_level
    edges = request.edges.get(column)
    if not edges:
        raise QueryError(
            f"column {column!r} is numeric and the spec lists no levels of it: give its groups as bins, e.g. "
            f"--bins {column}=30:80:10 (groups are never read from a node's data)"
        )

    def by_bin(values: pd.Series) -> np.ndarray:
        x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
        index = _bin_index(x, edges).astype(int)
        index[np.isnan(x)] = -1
        return np.asarray(index)

    return bin_labels({"kind": "numeric", "bins": edges}), by_bin


def _label(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _released(full: np.ndarray, hidden: np.ndarray) -> list[list[float | None]]:
    return [[None if h else float(v) for v, h in zip(r, hr, strict=True)] for r, hr in zip(full, hidden, strict=True)]


def _count_table(counts: np.ndarray, min_count: int, *, margins: bool = True) -> dict[str, Any]:
    """Counts with margins, suppressed cells as None, and how many were suppressed."""
    counts = np.atleast_2d(counts)
    rows = counts.shape[0]
    full = with_margins(counts)
    hidden = protect(counts, min_count, margins=margins)
    kept = rows + (1 if margins else 0)  # without margins the column-total row is not released at all
    primary = int(((full[:kept] > 0) & (full[:kept] < min_count)).sum())
    return {"cells": _released(full, hidden), "suppressed": int(hidden[:kept].sum()), "primary": primary}


def _bin_index(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Bin of each value: 0 below the first edge, len(edges) from the last edge up."""
    return np.searchsorted(np.asarray(edges), values, side="right")


def node_summary(frame: pd.DataFrame, spec: TaskSpec, request: StatsRequest) -> dict[str, Any]:
    """This node's summary for ``request``, small cells already suppressed (``summarise``'s figures)."""
    return summarise(frame, spec, request)[0]


def summarise(frame: pd.DataFrame, spec: TaskSpec, request: StatsRequest) -> tuple[dict[str, Any], list[np.ndarray]]:
    """This node's summary for ``request``, small cells already suppressed, and the rows behind
    every count it releases (one boolean mask over ``frame``'s rows each; a sum is released only
    with the count of its rows).

    For each column and each group of ``request.by`` (one group when None): the count, sum and
    sum of squares (numeric), a histogram over the request's edges (numeric) or level counts
    (categorical); then the crosstab and the correlation sums if asked. A group's sums are
    released only with its count. ``notes`` says what was suppressed and why.
    """
    m = request.min_count
    notes: list[str] = []
    common = _common_mask(frame, spec, request)
    if request.by:
        groups, group_index = _grouping(request.by, spec, request)
        of_group = np.where(common, group_index(frame[request.by]), -1)
    else:
        groups, of_group = ["all"], np.where(common, 0, -1)
    out: dict[str, Any] = {"groups": groups, "columns": {}, "notes": notes}
    released: list[np.ndarray] = []
    for column in request.columns:
        categorical = is_categorical(column, spec)
        values = frame[column]
        if categorical:
            cats, level_index = _grouping(column, spec, request)
            of_bin, n_bins = np.where(common, level_index(values), -1), len(cats)
        elif column in request.edges:
            x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
            of_bin, n_bins = np.where(common, _bin_index(x, request.edges[column]), -1), len(request.edges[column]) + 1
        else:
            of_bin, n_bins = np.where(common, 0, -1), 1
        counts = np.zeros((len(groups), n_bins))
        sums = np.zeros(len(groups))
        squares = np.zeros(len(groups))
        for g in range(len(groups)):
            in_group = of_group == g
            counts[g] = np.bincount(of_bin[in_group & (of_bin >= 0)], minlength=n_bins)[:n_bins]
            if not categorical:
                x = pd.to_numeric(values[in_group], errors="coerce").to_numpy(dtype=float)
                sums[g], squares[g] = float(x.sum()), float((x**2).sum())
        # One count table per column (groups x bins or levels, with margins): the group sizes are
        # its row totals, so hiding a small group and hiding a small cell follow the same rule.
        table = _count_table(counts, m, margins=request.by is not None)
        cells = table["cells"]
        grand = cells[len(groups)][-1] if request.by else cells[0][-1]
        sizes = [cells[g][-1] for g in range(len(groups))] + [grand]
        entry: dict[str, Any] = {"kind": "categorical" if categorical else "numeric", "n": sizes}
        if not categorical:
            entry["sum"] = [None if sizes[g] is None else sums[g] for g in range(len(groups))]
            entry["squares"] = [None if sizes[g] is None else squares[g] for g in range(len(groups))]
            entry["total_sum"] = float(sums.sum()) if grand is not None else None
            entry["total_squares"] = float(squares.sum()) if grand is not None else None
        shown_bins = categorical or (column in request.edges and not request.moments_only)
        if shown_bins:
            entry["counts"] = cells
            entry["bins"] = cats if categorical else request.edges[column]
        released += _cell_masks(cells, of_group, of_bin, with_bins=shown_bins)
        if table["suppressed"]:
            notes.append(
                f"{column}: {table['primary']} count(s) under {m} suppressed, and "
                f"{table['suppressed'] - table['primary']} more so they cannot be recomputed from totals"
            )
        out["columns"][column] = entry
    if request.crosstab and not request.moments_only:
        a, b = request.crosstab
        (la, index_a), (lb, index_b) = _grouping(a, spec, request), _grouping(b, spec, request)
        xa, xb = np.where(common, index_a(frame[a]), -1), np.where(common, index_b(frame[b]), -1)
        cells_ab = np.array([[float(((xa == i) & (xb == j)).sum()) for j in range(len(lb))] for i in range(len(la))])
        table = _count_table(cells_ab, m)
        out["crosstab"] = {"rows": la, "columns": lb, "cells": table["cells"]}
        released += _cell_masks(table["cells"], xa, xb, with_bins=True)
        if table["suppressed"]:
            notes.append(f"crosstab {a} x {b}: {table['suppressed']} cell(s) suppressed ({table['primary']} under {m})")
    if request.correlation and not request.moments_only:
        numeric = [c for c in request.columns if not is_categorical(c, spec)]
        complete = frame[common][numeric].astype(float)  # the common rows: no value is missing
        if len(complete) >= m and numeric:
            x = complete.to_numpy()
            out["correlation"] = {
                "columns": numeric,
                "n": len(x),
                "sum": x.sum(axis=0).tolist(),
                "products": (x.T @ x).tolist(),
            }
            released.append(common.copy())
        else:
            notes.append(f"correlation: {len(complete)} complete rows, under {m}; not released")
    return out, released


def _cell_masks(
    cells: list[list[float | None]], of_row: np.ndarray, of_column: np.ndarray, *, with_bins: bool
) -> list[np.ndarray]:
    """The rows behind each released count of a table with margins (rows x columns, the last of
    each a total): ``of_row`` and ``of_column`` give each row's row and column (-1: neither)."""
    rows, columns = len(cells) - 1, len(cells[0]) - 1
    masks = []
    for i, line in enumerate(cells):
        for j, value in enumerate(line):
            if value is None or (j < columns and not with_bins):
                continue
            in_row = of_row == i if i < rows else of_row >= 0
            in_column = of_column == j if j < columns else of_column >= 0
            masks.append(in_row & in_column)
    return masks


def _common_mask(frame: pd.DataFrame, spec: TaskSpec, request: StatsRequest) -> np.ndarray:
    """The rows every figure of the reply is computed over: a value in every named column, and
    one of the groups of each grouping or crosstab column."""
    keep = pd.Series(True, index=frame.index)
    for column in request.used:
        keep &= frame[column].map(lambda v: v is not None and not _nan(v))
    keep_array: np.ndarray = np.array(keep, dtype=bool)
    for column in [*([request.by] if request.by else []), *(request.crosstab or ())]:
        keep_array &= _grouping(column, spec, request)[1](frame[column]) >= 0
    return keep_array


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _label_or_none(value: Any) -> str | None:
    return None if value is None or _nan(value) else _label(value)


def bin_labels(figures: dict[str, Any]) -> list[str]:
    """The labels of a pooled column's histogram bins (``< a``, ``a to b``, ``>= z``) or levels."""
    edges = figures["bins"]
    if figures["kind"] != "numeric":
        return [str(level) for level in edges]
    inner = [f"{a:g} to {b:g}" for a, b in zip(edges, edges[1:], strict=False)]
    return [f"< {edges[0]:g}", *inner, f">= {edges[-1]:g}"]


def default_edges(moments: dict[str, dict[str, float]], bins: int = DEFAULT_BINS) -> dict[str, list[float]]:
    """Inner bin edges from pooled means and standard deviations: ``bins`` bins of a round width
    spanning about mean +- 2.5 sd. They come from pooled figures, never from one person's value."""
    edges: dict[str, list[float]] = {}
    for column, m in moments.items():
        mean, sd = m.get("mean"), m.get("sd")
        if mean is None or sd is None or not math.isfinite(mean) or not math.isfinite(sd) or sd <= 0:
            continue
        width = nice(5 * sd / bins)
        start = math.floor((mean - 2.5 * sd) / width) * width
        edges[column] = [round(start + i * width, 10) for i in range(bins + 1)]
    return edges


def nice(x: float) -> float:
    """1, 2, 2.5 or 5 times a power of ten, at least ``x``."""
    power = 10.0 ** math.floor(math.log10(x))
    for step in (1.0, 2.0, 2.5, 5.0):
        if step * power >= x:
            return step * power
    return 10.0 * power


def _add(cells: list[list[float | None]], into: np.ndarray, incomplete: np.ndarray) -> None:
    for i, row in enumerate(cells):
        for j, v in enumerate(row):
            if v is None:
                incomplete[i, j] = True
            else:
                into[i, j] += v


def pool(replies: dict[str, dict[str, Any]], request: StatsRequest) -> dict[str, Any]:
    """Federation-wide figures from the nodes' summaries.

    Counts add; a pooled cell to which some node contributed a suppressed count is flagged
    incomplete (its value is then a lower bound). Means and variances come from pooled sums over
    the nodes that released them: the exact figures of the concatenated tables when no node
    suppressed anything.
    """
    first = next(iter(replies.values()))
    groups = first["groups"]
    result: dict[str, Any] = {"groups": groups, "nodes": sorted(replies), "columns": {}}
    for column in request.columns:
        entries = [r["columns"][column] for r in replies.values()]
        kind = entries[0]["kind"]
        col: dict[str, Any] = {"kind": kind, "groups": {}}
        for g, group in enumerate([*groups, "all"] if request.by else ["all"]):
            index = g if group != "all" or not request.by else len(groups)
            ns = [e["n"][index] for e in entries]
            released = [i for i, n in enumerate(ns) if n is not None]
            n = float(sum(ns[i] for i in released))
            figures: dict[str, Any] = {"n": n, "nodes": len(released), "incomplete": len(released) < len(entries)}
            if kind == "numeric":
                if group == "all":
                    s = sum(entries[i]["total_sum"] for i in released)
                    q = sum(entries[i]["total_squares"] for i in released)
                else:
                    s = sum(entries[i]["sum"][index] for i in released)
                    q = sum(entries[i]["squares"][index] for i in released)
                figures["mean"] = s / n if n else None
                figures["sd"] = math.sqrt(max(q - s * s / n, 0.0) / (n - 1)) if n > 1 else None
            col["groups"][group] = figures
        if "counts" in entries[0]:
            shape = np.array(entries[0]["counts"], dtype=object).shape
            total = np.zeros(shape)
            incomplete = np.zeros(shape, dtype=bool)
            for e in entries:
                _add(e["counts"], total, incomplete)
            col["bins"] = entries[0]["bins"]
            col["counts"] = total.tolist()
            col["incomplete"] = incomplete.tolist()
            # Over all groups: the column totals, or the only row when there are no groups.
            margin = total[-1] if request.by else total[0]
            gaps = incomplete[-1] if request.by else incomplete[0]
            col["histogram"] = margin[:-1].tolist()
            col["histogram_incomplete"] = gaps[:-1].tolist()
            if kind == "numeric":
                col["quantiles"] = _quantiles(margin[:-1], gaps[:-1], col["bins"])
        result["columns"][column] = col
    crosstabs = [r["crosstab"] for r in replies.values() if "crosstab" in r]
    if crosstabs:
        shape = np.array(crosstabs[0]["cells"], dtype=object).shape
        total, incomplete = np.zeros(shape), np.zeros(shape, dtype=bool)
        for c in crosstabs:
            _add(c["cells"], total, incomplete)
        result["crosstab"] = {
            "rows": crosstabs[0]["rows"],
            "columns": crosstabs[0]["columns"],
            "counts": total.tolist(),
            "incomplete": incomplete.tolist(),
        }
    parts = [r["correlation"] for r in replies.values() if "correlation" in r]
    if parts:
        n = float(sum(p["n"] for p in parts))
        s = np.sum([p["sum"] for p in parts], axis=0)
        xx = np.sum([p["products"] for p in parts], axis=0)
        cov = (xx - np.outer(s, s) / n) / (n - 1)
        sd = np.sqrt(np.diag(cov))
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = cov / np.outer(sd, sd)
        result["correlation"] = {
            "columns": parts[0]["columns"],
            "n": n,
            "nodes": len(parts),
            "matrix": corr.tolist(),
        }
    return result


def _quantiles(counts: np.ndarray, incomplete: np.ndarray, edges: list[float]) -> dict[str, Any]:
    """Quantiles interpolated linearly inside the pooled histogram's bins.

    Bin 0 is below ``edges[0]`` and the last bin from ``edges[-1]`` up; a quantile that falls in
    an open-ended bin is reported as a bound. Approximate: the error is at most one bin width,
    more when cells were suppressed (then ``incomplete`` is true).
    """
    total = counts.sum()
    out: dict[str, Any] = {"approximate": True, "incomplete": bool(incomplete.any()), "values": {}}
    if total <= 0:
        return out
    cumulative = np.cumsum(counts)
    for q in QUANTILES:
        target = q * total
        b = int(np.searchsorted(cumulative, target, side="left"))
        if b == 0:
            value: float | str = f"< {edges[0]:g}"
        elif b >= len(edges):
            value = f">= {edges[-1]:g}"
        else:
            before = cumulative[b - 1]
            inside = counts[b]
            lo, hi = edges[b - 1], edges[b]
            value = lo + (hi - lo) * ((target - before) / inside if inside else 0.0)
        out["values"][f"q{int(q * 100):02d}"] = value
    return out


def protect_column_sums(sums: ColumnSums, spec: TaskSpec, rows: int, min_count: int) -> tuple[ColumnSums, list[str]]:
    """The prepare reply's column sums with small counts held back.

    The sums of an indicator column are a level's count, and a numeric column's count says how
    many values are missing; with the row count known, each feature is a one-row count table
    (levels, or present and missing). A column whose count ``protect`` hides is sent as zeros: the
    node does not contribute to that column of the federated scaler.
    """
    count, total, squares = sums.count.copy(), sums.total.copy(), sums.squares.copy()
    notes: list[str] = []
    col = 0
    for feature in spec.features:
        if feature.type == "numeric":
            width, cells = 1, np.array([count[col], rows - count[col]])
        else:
            kept = feature.levels[1:] if feature.drop_first else feature.levels
            width = len(kept)
            cells = np.array([*total[col : col + width], rows - total[col : col + width].sum()])
        hidden = protect(cells.reshape(1, -1), min_count, margins=False, public_total=True)[0, :width]
        if hidden.any():
            for k in np.flatnonzero(hidden):
                count[col + k] = total[col + k] = squares[col + k] = 0.0
            held = int(hidden.sum())
            notes.append(f"scaler sums of {feature.name!r}: {held} column(s) with a count under {min_count} held back")
        col += width
    return ColumnSums(count, total, squares), notes
