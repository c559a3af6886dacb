"""The coordinator's side of federated analytics: ask every node, pool, record (`lab stats`)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from federation.preparation import wait_for_nodes
from federation.recorder import EventLog
from lab.contract import keys
from lab.contract.records import config_of, error_reason, text
from lab.contract.settings import RunSettings
from lab.core.analytics import StatsRequest, default_edges, is_categorical, pool
from lab.core.spec import TaskSpec
from lab.errors import RunFailedError
from lab.registry.tracking import Tracker

__all__ = ["federated_stats"]

logger = logging.getLogger(__name__)


def federated_stats(
    grid: Grid, spec: TaskSpec, settings: RunSettings, tracker: Tracker, events: EventLog
) -> dict[str, Any]:
    """Run the analytics query in the settings on every connected node and pool the answers.

    Histogram edges the analyst did not give are set from a first pass of pooled means and
    standard deviations, so no bin edge is one person's value. Per-node figures are kept only for
    nodes whose agreement allows them to be shown.
    """
    request = StatsRequest.from_json(settings.stats_request)
    request.check(spec)
    node_ids = wait_for_nodes(grid, max(settings.expected_nodes, settings.min_nodes), settings.node_wait_seconds)
    numeric = [c for c in request.columns if c not in request.edges and not is_categorical(c, spec)]
    if numeric:
        first = replace(request, moments_only=True)  # the same rows as the second pass: nothing new leaves
        answers, _, _ = _ask(grid, node_ids, spec, first, settings)
        pooled = pool(answers, first) if answers else {"columns": {}}
        moments = {c: pooled["columns"][c]["groups"]["all"] for c in numeric if c in pooled["columns"]}
        request = replace(request, edges={**default_edges(moments), **request.edges})
    answers, published, refusals = _ask(grid, node_ids, spec, request, settings)
    for node, reason in refusals.items():
        events.emit("refused", node=node, reason=reason)
    if len(answers) < settings.min_nodes:
        detail = "; ".join(refusals.values()) or "no node answered"
        raise RunFailedError(f"{len(answers)} node(s) answered, fewer than min-nodes = {settings.min_nodes}: {detail}")
    result = pool(answers, request)
    notes = {name: answer["notes"] for name, answer in answers.items() if answer["notes"]}
    shown = {name: answers[name] for name in sorted(published)}
    _record(tracker, request, result, notes, shown, refusals)
    return {"stats": result, "request": json.loads(request.to_json()), "notes": notes, "node_figures": shown}


def _ask(
    grid: Grid, node_ids: list[int], spec: TaskSpec, request: StatsRequest, settings: RunSettings
) -> tuple[dict[str, dict[str, Any]], set[str], dict[str, str]]:
    """Every node's summary, the nodes whose own figures may be shown, and the refusals."""
    config = ConfigRecord({keys.TASK_SPEC: spec.text, keys.STATS_REQUEST: request.to_json()})
    messages = [
        Message(RecordDict({keys.CONFIG: config}), dst_node_id=node_id, message_type=keys.STATS_MESSAGE_TYPE)
        for node_id in node_ids
    ]
    answers: dict[str, dict[str, Any]] = {}
    published: set[str] = set()
    refusals: dict[str, str] = {}
    replies = list(grid.send_and_receive(messages, timeout=settings.round_timeout))
    for reply in replies:
        if reply.has_error():
            refusals[f"node-{reply.metadata.src_node_id}"] = error_reason(reply)
            continue
        node = config_of(reply, keys.NODE)
        name = text(node, keys.NODE_NAME)
        answers[name] = json.loads(text(node, keys.STATS_JSON))
        if node.get(keys.PUBLISH_NODE_FIGURES):
            published.add(name)
    for missing in set(node_ids) - {r.metadata.src_node_id for r in replies}:
        refusals[f"node-{missing}"] = f"no reply within {settings.round_timeout:.0f} s"
    return answers, published, refusals


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
            "mode": "stats",
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
