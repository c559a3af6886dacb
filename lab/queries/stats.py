"""The analytics query (`lab stats`): each node summarises its own table with small counts held
back, and the coordinator pools the summaries exactly (lab.core.analytics)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from lab.contract.events import Refused
from lab.contract.results import StatsAnswer
from lab.contract.settings import RunSettings
from lab.core.analytics import StatsRequest, default_edges, is_categorical, pool, stats_frame, summarise
from lab.core.data import check_frame, read_raw
from lab.core.disclosure import POOLED_MIN_NODES, subtraction_reveals
from lab.core.sources import TableSource
from lab.core.spec import TaskSpec
from lab.errors import QueryError, Refusal, RunFailedError
from lab.node.limits import Limits
from lab.node.releases import line_count
from lab.node.site import NodeSite
from lab.queries.base import Ask, Emit, QueryKind

if TYPE_CHECKING:  # the nodes import the queries too: no MLflow there
    from lab.registry.tracking import Tracker

__all__ = ["KIND", "Stats", "check_bins", "check_cells", "histogram_figure"]


def check_bins(request: StatsRequest, frame: Any, limits: Limits) -> None:
    """Refuse bins narrower than ``limits.min-bin-width`` standard deviations of the column here."""
    for column, edges in request.edges.items():
        values = np.asarray(frame[column], dtype=float)
        values = values[~np.isnan(values)]
        spread = float(values.std()) if len(values) > 1 else 0.0
        narrowest = float(np.diff(edges).min())
        if spread > 0 and narrowest < limits.min_bin_width * spread:
            raise Refusal(
                "limits.min-bin-width",
                f"a bin of {column!r} {narrowest:g} wide is narrower than {limits.min_bin_width:g} of the column's "
                "standard deviations here: so narrow a bin holds one person's value",
            )


def check_cells(summary: dict[str, Any], limits: Limits) -> None:
    """Refuse an answer of more counts than ``limits.max-cells`` (shown or suppressed)."""
    cells = sum(len(entry["n"]) + sum(map(len, entry.get("counts", []))) for entry in summary["columns"].values())
    cells += sum(map(len, summary.get("crosstab", {}).get("cells", [])))
    if cells > limits.max_cells:
        raise Refusal("limits.max-cells", f"the answer would hold {cells} counts, more than {limits.max_cells}")


def _on_lines(mask: np.ndarray, lines: np.ndarray, size: int) -> np.ndarray:
    """A mask over a table's kept rows, as a mask over the lines of its file."""
    out = np.zeros(size, dtype=bool)
    out[lines[mask]] = True
    return out


class Stats(QueryKind[StatsRequest]):
    name = "stats"
    outputs = frozenset({"analytics"})

    def parse_request(self, text: str) -> StatsRequest:
        return StatsRequest.from_json(text)

    def answer(self, spec: TaskSpec, request: StatsRequest, site: NodeSite, run_id: int) -> dict[str, Any]:
        """The node's summary, held to its limits (the spec's groups, bins no narrower than its
        clause, no more counts than its clause) and to everything it released before: an answer
        that would let a small count be worked out with earlier ones is refused."""
        try:
            request.check(spec)
        except QueryError as exc:  # groups and bins come from the spec; a request cannot name its own
            raise Refusal("spec", str(exc)) from None
        request = replace(request, min_count=site.min_count(request.min_count))
        file_format = spec.format_for(site.name)
        raw, offset = read_raw(site.table_path(), file_format)
        source = TableSource.of(site.table_path()).label
        table = check_frame(raw, spec, source=source, file_format=file_format, offset=offset)
        frame = stats_frame(table, spec)
        agreement = site.agreement
        if agreement is not None:
            check_bins(request, frame, agreement.limits)
        summary, cells = summarise(frame, spec, request)
        if agreement is not None:
            check_cells(summary, agreement.limits)
            history = site.releases(raw)
            lines = [_on_lines(mask, table.line, line_count(len(raw))) for mask in cells]
            if history.audit(lines, request.min_count) is not None:
                raise Refusal(
                    "allow.min-rows",
                    f"with what this node answered before, this answer would let a count under {request.min_count} "
                    "rows be worked out by differencing; ask for groups, bins and columns that do not overlap "
                    "earlier ones so closely",
                )
            history.keep(lines)
        return {
            "summary": summary,
            "publish": bool(agreement and agreement.node_figures),
            "suppressed": "; ".join(summary["notes"]),
        }

    def coordinate(
        self, spec: TaskSpec, request: StatsRequest, settings: RunSettings, ask: Ask, tracker: Tracker, emit: Emit
    ) -> StatsAnswer:
        """Ask every node, pool, record.

        Histogram edges the analyst did not give are set from a first pass of pooled means and
        standard deviations, so no bin edge is one person's value. Per-node figures are kept only
        for nodes whose agreement allows them to be shown.
        """
        request.check(spec)
        numeric = [c for c in request.columns if c not in request.edges and not is_categorical(c, spec)]
        if numeric:
            first = replace(request, moments_only=True)  # the same rows as the second pass: nothing new leaves
            summaries = {n: a.answer["summary"] for n, a in ask(first).answers.items()}
            pooled = pool(summaries, first) if summaries else {"columns": {}}
            moments = {c: pooled["columns"][c]["groups"]["all"] for c in numeric if c in pooled["columns"]}
            request = replace(request, edges={**default_edges(moments), **request.edges})
        gathered = ask(request)
        for node, reason in gathered.refusals.items():
            emit(Refused(node=node, reason=reason))
        answers = {name: node.answer["summary"] for name, node in gathered.answers.items()}
        if len(answers) < settings.min_nodes:
            detail = "; ".join(gathered.refusals.values()) or "no node answered"
            raise RunFailedError(
                f"{len(answers)} node(s) answered, fewer than min-nodes = {settings.min_nodes}: {detail}"
            )
        shown = {name: answers[name] for name, node in sorted(gathered.answers.items()) if node.answer["publish"]}
        _check_not_subtractable(sorted(set(answers) - set(shown)), len(answers))
        result = pool(answers, request)
        notes = {name: answer["notes"] for name, answer in answers.items() if answer["notes"]}
        _record(tracker, request, result, notes, shown, gathered.refusals)
        return StatsAnswer(result, json.loads(request.to_json()), notes, list(shown))


def _check_not_subtractable(hidden: list[str], answered: int) -> None:
    """Hold back pooled figures from which a reader could subtract a hidden node's own.

    Raises
    ------
    RunFailedError
        Naming the node(s) whose figures would show, and the fix.
    """
    why = subtraction_reveals(hidden, answered)
    if why is None:
        return
    raise RunFailedError(
        f"the pooled figures are held back: {why}, and the agreement of {', '.join(hidden)} keeps its figures to "
        f"itself (allow.node-figures = false); ask {POOLED_MIN_NODES} or more nodes, of which two or more keep "
        "their figures"
    )


def _record(
    tracker: Tracker,
    request: StatsRequest,
    result: dict[str, Any],
    notes: dict[str, list[str]],
    shown: dict[str, Any],
    refusals: dict[str, str],
) -> None:
    """The pooled figures as metrics and JSON, the histograms as a plot, what was suppressed."""
    tracker.log_params(
        {
            "query": "stats",
            "columns": ",".join(request.columns),
            "by": request.by or "",
            "crosstab": ",".join(request.crosstab or ()),
            "min_count": request.min_count,
            "num_nodes": len(result["nodes"]),
        }
    )
    metrics: dict[str, float] = {}
    for column, figures in result["columns"].items():
        for group, values in figures["groups"].items():
            for key in ("n", "mean", "sd"):
                value = values.get(key)
                if isinstance(value, float) and math.isfinite(value):
                    metrics[f"stats.{column}.{group}.{key}"] = value
    tracker.log_metrics(metrics, step=0)
    tracker.log_text(json.dumps(result, indent=2), "analytics/pooled.json")
    tracker.log_text(json.dumps({"suppressed": notes, "refused": refusals}, indent=2), "analytics/suppressed.json")
    if shown:
        tracker.log_text(json.dumps(shown, indent=2), "analytics/nodes.json")
    figure = histogram_figure(result)
    if figure is not None:
        tracker.log_figure(figure, "analytics/histograms.png")


def histogram_figure(result: dict[str, Any]) -> Any:
    """One bar chart per numeric column of the pooled histogram (None when there is none)."""
    columns = [(c, f) for c, f in result["columns"].items() if f["kind"] == "numeric" and "counts" in f]
    if not columns:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(columns), figsize=(4.5 * len(columns), 3.5), squeeze=False)
    for ax, (column, figures) in zip(axes[0], columns, strict=True):
        edges = figures["bins"]
        counts = figures["histogram"]
        labels = [f"<{edges[0]:g}"] + [f"{a:g}-{b:g}" for a, b in zip(edges, edges[1:], strict=False)]
        labels.append(f">={edges[-1]:g}")
        ax.bar(range(len(counts)), counts, color="#4c72b0")
        ax.set_xticks(range(len(counts)), labels, rotation=60, fontsize=7)
        ax.set_title(f"{column} (pooled over {len(result['nodes'])} nodes)")
        ax.set_ylabel("rows")
    figure.tight_layout()
    return figure


KIND = Stats()
