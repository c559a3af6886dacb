"""`lab stats`: its options read into a query, and the pooled figures as tables (the query itself
is lab.queries.stats, run on a federation by lab.runtime.federation)."""

from __future__ import annotations

from rich.table import Table as RichTable

from lab.cli.options import fmt
from lab.contract.results import StatsAnswer
from lab.core.analytics import bin_labels
from lab.errors import UsageError

__all__ = ["parse_bins", "stats_tables"]


def parse_bins(items: list[str]) -> dict[str, list[float]]:
    """``col=lo:hi:width`` (or ``col=e1,e2,e3``) into inner bin edges per column."""
    edges: dict[str, list[float]] = {}
    for item in items:
        column, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            if ":" in value:
                lo, hi, width = (float(v) for v in value.split(":"))
                if width <= 0 or hi <= lo:
                    raise ValueError
                count = round((hi - lo) / width)
                edges[column] = [lo + i * width for i in range(count + 1)]
            else:
                edges[column] = [float(v) for v in value.split(",")]
        except ValueError:
            raise UsageError(
                f"--bins {item!r}: give COLUMN=LOW:HIGH:WIDTH (e.g. age=30:80:10) or COLUMN=E1,E2,..."
            ) from None
    return edges


def _cell(value: float | None, incomplete: bool) -> str:
    shown = fmt(value) if isinstance(value, float) and not float(value).is_integer() else str(int(value or 0))
    return f"{shown}+" if incomplete else shown


def stats_tables(answer: StatsAnswer) -> list[RichTable]:
    """The pooled figures as tables: moments per column and group, histograms and level counts,
    the crosstab and the correlation matrix. A ``+`` marks a pooled count that some node held
    back a small count from (a lower bound)."""
    stats = answer.pooled
    tables: list[RichTable] = []
    moments = RichTable(title=f"Pooled over {len(stats['nodes'])} nodes: {', '.join(stats['nodes'])}")
    for header in ("column", "group", "n", "mean", "sd", "median (approx.)", "nodes"):
        moments.add_column(header, justify="left" if header in ("column", "group") else "right")
    for column, figures in stats["columns"].items():
        median = figures.get("quantiles", {}).get("values", {}).get("q50")
        median_text = "" if median is None else median if isinstance(median, str) else fmt(median)
        for group, values in figures["groups"].items():
            moments.add_row(
                column,
                group,
                _cell(values["n"], values["incomplete"]),
                fmt(values.get("mean")),
                fmt(values.get("sd")),
                median_text if group == "all" else "",
                str(values["nodes"]),
            )
    tables.append(moments)
    for column, figures in stats["columns"].items():
        if "histogram" not in figures:
            continue
        labels = bin_labels(figures)
        table = RichTable(title=f"{column}: {'histogram' if figures['kind'] == 'numeric' else 'levels'}, all nodes")
        table.add_column("bin" if figures["kind"] == "numeric" else "level")
        table.add_column("rows", justify="right")
        for label, count, gap in zip(labels, figures["histogram"], figures["histogram_incomplete"], strict=True):
            table.add_row(label, _cell(count, gap))
        tables.append(table)
    if "crosstab" in stats:
        cross = stats["crosstab"]
        a, b = answer.request["crosstab"]
        table = RichTable(title=f"Crosstab {a} (rows) x {b} (columns), all nodes")
        table.add_column(a)
        for level in [*cross["columns"], "total"]:
            table.add_column(str(level), justify="right")
        for level, row, gaps in zip([*cross["rows"], "total"], cross["counts"], cross["incomplete"], strict=True):
            table.add_row(str(level), *[_cell(v, g) for v, g in zip(row, gaps, strict=True)])
        tables.append(table)
    if "correlation" in stats:
        corr = stats["correlation"]
        table = RichTable(title=f"Correlation over {int(corr['n'])} complete rows, {corr['nodes']} nodes")
        table.add_column("")
        for column in corr["columns"]:
            table.add_column(column, justify="right")
        for column, row in zip(corr["columns"], corr["matrix"], strict=True):
            table.add_row(column, *[fmt(v) for v in row])
        tables.append(table)
    return tables
