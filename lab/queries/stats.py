"""The analytics query (`lab stats`): each node summarises its own table with small counts held
back, and the coordinator pools the summaries exactly (lab.core.analytics)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from lab.contract.settings import RunSettings
from lab.core.analytics import StatsRequest, default_edges, is_categorical, node_summary, pool, stats_frame
from lab.core.data import load_table
from lab.core.spec import TaskSpec
from lab.errors import RunFailedError
from lab.node.site import NodeSite
from lab.queries.base import Ask, Emit, QueryKind

if TYPE_CHECKING:  # the nodes import the queries too: no MLflow there
    from lab.registry.tracking import Tracker

__all__ = ["KIND", "Stats", "histogram_figure"]


class Stats(QueryKind[StatsRequest]):
    name = "stats"
    outputs = frozenset({"analytics"})

    def parse_request(self, text: str) -> StatsRequest:
        return StatsRequest.from_json(text)

    def answer(self, spec: TaskSpec, request: StatsRequest, site: NodeSite, run_id: int) -> dict[str, Any]:
        request.check(spec)
        request = replace(request, min_count=site.min_count(request.min_count))
        table = load_table(site.table_path(), spec, node=site.name)
        summary = node_summary(stats_frame(table, spec), spec, request)
        agreement = site.agreement
        return {
            "summary": summary,
            "publish": bool(agreement and agreement.node_figures),
            "suppressed": "; ".join(summary["notes"]),
        }

    def coordinate(
        self, spec: TaskSpec, request: StatsRequest, settings: RunSettings, ask: Ask, tracker: Tracker, emit: Emit
    ) -> dict[str, Any]:
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
            emit("refused", node=node, reason=reason)
        answers = {name: node.answer["summary"] for name, node in gathered.answers.items()}
        if len(answers) < settings.min_nodes:
            detail = "; ".join(gathered.refusals.values()) or "no node answered"
            raise RunFailedError(
                f"{len(answers)} node(s) answered, fewer than min-nodes = {settings.min_nodes}: {detail}"
            )
        result = pool(answers, request)
        notes = {name: answer["notes"] for name, answer in answers.items() if answer["notes"]}
        shown = {name: answers[name] for name, node in sorted(gathered.answers.items()) if node.answer["publish"]}
        _record(tracker, request, result, notes, shown, gathered.refusals)
        return {"stats": result, "request": json.loads(request.to_json()), "notes": notes, "node_figures": shown}


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
