"""A training run's report: one self-contained HTML page built from its MLflow record, and logged to it."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

from lab.contract.results import SIDES, Contributions, RunSummary
from lab.node.agreement import FIELDS
from lab.registry.report_figures import contributions_chart, round_curves
from lab.registry.run_record import AGREEMENTS, CONTRIBUTIONS, FINGERPRINTS, REFUSALS, SUMMARY, RunRecord, read_run

__all__ = ["NOT_RECORDED", "REPORT_ARTIFACT", "build_report", "log_report", "number", "render", "with_interval"]

#: Where the page goes in the run's artifacts.
REPORT_ARTIFACT = "report/report.html"
#: What the page says for a part the run did not record (an older run).
NOT_RECORDED = "not recorded for this run"

_SETTINGS = (
    "strategy",
    "num_rounds",
    "local_steps",
    "batch_size",
    "learning_rate",
    "proximal_mu",
    "server_learning_rate",
    "seed",
    "min_nodes",
    "baseline_epochs",
    "environment_policy",
    "secure_aggregation",
    "dp_target_epsilon",
    "dp_noise_multiplier",
    "dp_clipping_norm",
    "dp_delta",
)


def build_report(tracking_uri: str, run_id: str) -> str:
    """The HTML page of training run ``run_id`` (raises UsageError for no such run, or not a training run)."""
    return render(read_run(tracking_uri, run_id))


def log_report(tracking_uri: str, run_id: str, html: str) -> None:
    """Keep the page with the run, as its artifact ``report/report.html``."""
    from lab.registry.tracking import store, tracking_errors

    with tracking_errors(f"cannot log the report to run {run_id!r}", "check the tracking store and your account"):
        store(tracking_uri).log_text(run_id, html, REPORT_ARTIFACT)


def render(record: RunRecord) -> str:
    """The page of ``record``: autoescaped HTML, its figures inline, nothing fetched from the network."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    environment = Environment(
        loader=PackageLoader("lab.registry", "templates"), autoescape=select_autoescape(default=True)
    )
    return environment.get_template("report.html").render(page=_page(record), not_recorded=NOT_RECORDED)


# --- what the page shows, worked out from the record -------------------------------------------------


@dataclass
class _Row:
    """One line of the per-organisation table."""

    node: str
    organisation: str = ""
    train_rows: str = ""
    test_rows: str = ""
    cells: list[str] = field(default_factory=list)  # per metric: federated, local-only
    comparison: str = ""
    kind: str = "node"  # node, mean or pooled (styled apart)


def _page(record: RunRecord) -> dict[str, Any]:
    metrics = list(record.spec.metrics)
    private = _private(record)
    table = _table(record, metrics)
    if private:  # lab.queries.prepare: nothing trained without DP leaves a node in a DP run
        table["notes"].append("A run with differential privacy trains no local-only model (it would leave without DP).")
    return {
        "title": f"{record.spec.name}: run {record.name or record.run_id}",
        "run": _run_facts(record),
        "settings": [(k, record.params[k]) for k in _SETTINGS if k in record.params],
        "metrics": metrics,
        "table": table,
        "curves": _curves(record, metrics[0], private) if metrics else None,
        "first_metric": metrics[0] if metrics else "",
        "contributions": _contributions(record),
        "privacy": _privacy(record),
        "fingerprints": _fingerprints(record),
        "agreements": _agreements(record),
        "refusals": _refusals(record),
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _run_facts(record: RunRecord) -> list[tuple[str, str]]:
    def when(ms: int | None) -> str:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ms else "n/a"

    took = f" ({(record.end_ms - record.start_ms) / 1000:.0f} s)" if record.end_ms else ""
    return [
        ("MLflow run", record.run_id),
        ("experiment", record.experiment),
        ("status", record.status),
        ("started", when(record.start_ms)),
        ("ended", when(record.end_ms) + took),
        ("nodes", ", ".join(record.nodes) or "none"),
        ("model", record.model or "not registered"),
        ("tracking store", record.tracking_uri),
    ]


#: A cell whose figure the node's agreement keeps (or a pooled one that would give it away).
HELD = "held back"


def number(value: Any) -> str:
    """A score as the page shows it: 2 decimals under 10, fewer above (n/a for none or NaN)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "n/a"
    size = abs(value)
    return f"{value:.0f}" if size >= 1000 else f"{value:.1f}" if size >= 10 else f"{value:.2f}"


def with_interval(value: Any, interval: Any) -> str:
    """``0.78 (0.69–0.85)``; the value alone without an interval."""
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        return f"{number(value)} ({number(interval[0])}–{number(interval[1])})"
    return number(value)


def _table(record: RunRecord, metrics: list[str]) -> dict[str, Any]:
    summary = record.artifacts.get(SUMMARY)
    return _summary_table(RunSummary.of(summary), metrics) if summary else _metrics_table(record, metrics)


def _summary_table(summary: RunSummary, metrics: list[str]) -> dict[str, Any]:
    """The table from the coordinator's nodes/summary.json: scores, intervals, comparison."""
    rows, unreliable = [], False
    for node in summary.nodes:
        if node.held_back:  # the node's agreement keeps its own figures (allow.node-figures = false)
            rows.append(
                _Row(
                    node=node.node,
                    organisation=node.organisation,
                    train_rows=HELD,
                    test_rows=HELD,
                    cells=[HELD] * (2 * len(metrics)),
                    comparison=HELD,
                )
            )
            continue
        cells = []
        for metric in metrics:
            for side in SIDES:
                cell = with_interval(node.score(side, metric), node.interval(side, metric))
                if metric == "auc" and node.auc_unreliable:
                    cell, unreliable = cell + " †", True
                cells.append(cell)
        rows.append(
            _Row(
                node=node.node,
                organisation=node.organisation,
                train_rows=_count(node.train_rows),
                test_rows=_count(node.test_rows),
                cells=cells,
                comparison=node.comparison or "",
            )
        )
    rows.append(
        _Row(
            "mean",
            cells=[
                HELD if summary.mean_held_back(side, metric) else number(summary.mean_of(side, metric))
                for metric in metrics
                for side in SIDES
            ],
            kind="mean",
        )
    )
    notes = []
    if "federated" in summary.pooled:
        cells = []
        for metric in metrics:  # accuracy only: the correct rows of every node over all their rows
            for side in SIDES:
                found = summary.pooled.get(side)
                shown = metric == "accuracy" and found is not None
                cells.append(with_interval(found.accuracy, found.interval) if found is not None and shown else "")
        rows.append(
            _Row(
                "pooled",
                test_rows=str(summary.pooled["federated"].test_rows),
                cells=cells,
                comparison=summary.pooled_comparison,
                kind="pooled",
            )
        )
        notes.append("pooled: the accuracy over every node's test rows together (their correct rows summed).")
    if summary.hidden:
        subtracted = ", ".join(sorted(summary.held_back))
        notes.append(
            f"held back: the figures of {', '.join(summary.hidden)}, whose agreement keeps them (allow.node-figures "
            "= false)" + (f"; and {subtracted}, which would give them by subtraction" if subtracted else "") + "."
        )
    level = summary.level
    shown_level = f"the {level:.0%} Wilson interval" if level is not None else "the interval"
    notes.append(f"In brackets: {shown_level} the coordinator recorded with the score ({SUMMARY}).")
    if unreliable:
        notes.append("†: the AUC rests on too few cases of one class at that node to be relied on.")
    return {"rows": rows, "notes": notes, "compared": True}


def _count(value: int | None) -> str:
    return "" if value is None else str(value)


def _metrics_table(record: RunRecord, metrics: list[str]) -> dict[str, Any]:
    """The table of a run without nodes/summary.json: its final metrics, without intervals."""
    members = (record.artifacts.get(FINGERPRINTS) or {}).get("members", {})
    rows = []
    for node in record.nodes:
        facts = members.get(node, {})
        rows.append(
            _Row(
                node=node,
                organisation=str(facts.get("organisation", "")),
                train_rows=str(facts.get("train_rows", record.params.get(f"node.{node}.train_rows", ""))),
                test_rows=str(facts.get("test_rows", "")),
                cells=[number(record.node_metric(node, name)) for m in metrics for name in (m, f"baseline.{m}")],
            )
        )
    means = [number(record.last(f"final.{s}.{m}")) for m in metrics for s in ("federated", "local_only")]
    rows.append(_Row("mean", cells=means, kind="mean"))
    note = f"Intervals and the comparison of federated with local-only: {NOT_RECORDED} (no {SUMMARY})."
    return {"rows": rows, "notes": [note], "compared": False}


def _curves(record: RunRecord, metric: str, private: bool) -> str:
    per_node = {n: record.histories.get(f"node.{n}.{metric}", []) for n in record.nodes}
    losses = {
        n: record.histories[f"node.{n}.train_loss"] for n in record.nodes if f"node.{n}.train_loss" in record.histories
    }
    no_loss = "nodes training with differential privacy\nkeep their loss to themselves" if private else NOT_RECORDED
    mean, loss = record.histories.get(f"mean.{metric}", []), record.histories.get("train_loss", [])
    return round_curves(metric, per_node, mean, loss, losses, no_loss=no_loss)


def _contributions(record: RunRecord) -> dict[str, Any]:
    if not record.artifacts.get(CONTRIBUTIONS):
        return {"missing": NOT_RECORDED}
    recorded = Contributions.of(record.artifacts[CONTRIBUTIONS])
    if recorded.unavailable:
        return {"missing": f"not computed for this run: {recorded.unavailable}"}
    shapley = {n: v.shapley for n, v in recorded.nodes.items()}
    errors = {n: v.standard_error for n, v in recorded.nodes.items()}
    leave_one_out = {n: v.leave_one_out for n, v in recorded.nodes.items()}
    method = recorded.method + (f", {recorded.permutations} permutations" if recorded.permutations else "")
    return {
        "facts": [
            ("utility", recorded.utility),
            ("method", method),
            ("rounds", str(recorded.rounds)),
            ("no node (the initial model)", number(recorded.empty_model)),
            ("every node", number(recorded.full_model)),
        ],
        "rows": [
            (
                n,
                number(shapley[n]) + (f" ± {number(errors[n])}" if errors[n] is not None else ""),
                number(leave_one_out[n]),
            )
            for n in recorded.nodes
        ]
        + [(n, HELD, HELD) for n in recorded.held_back],
        "chart": contributions_chart(shapley, errors, leave_one_out) if recorded.nodes else None,
        "note": recorded.note,
    }


def _private(record: RunRecord) -> bool:
    """Whether the run trained with differential privacy (a target epsilon or a noise multiplier)."""
    return any((_float(record.params.get(k)) or 0.0) > 0 for k in ("dp_target_epsilon", "dp_noise_multiplier"))


def _privacy(record: RunRecord) -> dict[str, Any]:
    params = record.params
    private = _private(record)
    summarised = {row.node: row.epsilon for row in RunSummary.of(record.artifacts.get(SUMMARY) or {}).nodes}
    spent = {n: record.node_metric(n, "epsilon") or summarised.get(n) for n in record.nodes}
    rows = [
        (
            n,
            number(spent[n]),
            number(_float(params.get(f"node.{n}.dp_planned_epsilon"))),
            number(_float(params.get(f"node.{n}.dp_noise_multiplier"))),
        )
        for n in record.nodes
    ]
    if not private and not any(v is not None for v in spent.values()):
        return {"private": False, "rows": []}
    delta, clipping = params.get("dp_delta", ""), params.get("dp_clipping_norm", "")
    return {"private": True, "rows": rows, "delta": delta, "clipping": clipping}


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _fingerprints(record: RunRecord) -> dict[str, Any]:
    provenance, tags = record.provenance, record.tags
    lock = str(provenance.get("environment_fingerprint", ""))
    members = (record.artifacts.get(FINGERPRINTS) or {}).get("members", {})
    rows = []
    for node in record.nodes:
        facts = members.get(node, {})
        environment = str(facts.get("environment") or record.params.get(f"node.{node}.env_fingerprint", ""))
        notes = [str(facts[k]) for k in ("warning", "suppressed") if facts.get(k)]
        rows.append(
            {
                "node": node,
                "environment": environment,
                "matches": bool(lock) and environment == lock,
                "data": str(facts.get("data_sha256") or record.params.get(f"node.{node}.data_sha256", "")),
                "notes": "; ".join(notes),
            }
        )
    return {
        "run": [
            ("environment lock", lock or NOT_RECORDED),
            (
                "environment policy",
                str(provenance.get("environment_policy") or record.params.get("environment_policy", "")),
            ),
            ("task spec sha256", tags.get("lab.spec_sha256", record.params.get("spec_sha256", ""))),
            ("app (FAB) sha256", tags.get("lab.code.fab_hash", record.params.get("code.fab_hash", ""))),
            ("code version", tags.get("lab.code.version", "unknown")),
        ],
        "rows": rows,
        "lock": lock,
    }


def _agreements(record: RunRecord) -> dict[str, Any]:
    recorded = record.artifacts.get(AGREEMENTS)
    if not recorded:
        return {"missing": NOT_RECORDED}
    nodes = [n for n in record.nodes if n in recorded] + sorted(set(recorded) - set(record.nodes))
    without = {n: str(recorded[n].get("agreement", "")) for n in nodes if "agreement" in recorded[n]}
    holding = [n for n in nodes if n not in without]
    clauses = [c for c in FIELDS if any(c in recorded[n] for n in holding)]
    return {
        "nodes": holding,
        "rows": [(c, FIELDS[c], [_clause(c, recorded[n].get(c)) for n in holding]) for c in clauses],
        "without": without,
    }


def _clause(name: str, value: Any) -> str:
    """A clause's value in a few words (hashes cut to 12 characters)."""
    if name == "tasks" and isinstance(value, dict):
        return ", ".join(f"{t} ({h[:12]}…)" if h else f"{t}: not covered" for t, h in value.items())
    if name == "allow.apps" and isinstance(value, list):
        return ", ".join(f"{h[:12]}…" for h in value)
    if name == "allow.differential-privacy":
        return "required" if value else "not required"
    if name == "allow.node-figures":
        return "own figures shown" if value else "pooled figures only"
    if value is None:
        return "none"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _refusals(record: RunRecord) -> list[tuple[str, str, str]]:
    """(node, when, why) for every node refused at preparation or during the rounds."""
    refused = (record.artifacts.get(FINGERPRINTS) or {}).get("refused", {})
    rows = [(str(n), "preparation", str(r)) for n, r in refused.items()]
    for entry in record.artifacts.get(REFUSALS) or []:
        rows.append(
            (
                str(entry.get("node", "")),
                f"round {entry.get('round')} ({entry.get('stage')})",
                str(entry.get("reason", "")),
            )
        )
    return rows
