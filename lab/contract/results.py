"""What a run reports when it ends, typed: a training run's ``RunSummary``, the pre-flight's
``PreflightAnswer``, the statistics' ``StatsAnswer``. Each is built once where it is made (the
ServerApp's training, the query kinds' coordinator side), sent whole in the ``done`` event as
``to_json()``, and read back with ``of`` by every front end (the command line, the workbench, the
report). A training run's summary is also its record, ``nodes/summary.json``: ``RunSummary.of``
reads older runs' records too (a key a record lacks takes its default). A score is a float, or
None where a node sent none; a figure held back or not computed is NaN in the record and None in
an event (JSON has no NaN: events are sent as strict JSON), and every front end shows both as n/a.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from lab.core.intervals import Interval

__all__ = [
    "SIDES",
    "Contributions",
    "NodeCheck",
    "NodeRow",
    "NodeValue",
    "PooledAccuracy",
    "PreflightAnswer",
    "PreparedAnswer",
    "Reported",
    "RunSummary",
    "StatsAnswer",
    "read_reported",
]

#: The two models each node's row compares: the federated one and the node's own local-only one.
SIDES = ("federated", "local_only")

Scores = dict[str, float | None]


def _scores(value: Any) -> Scores:
    return {str(k): _number(v) for k, v in (value or {}).items()}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _or_nan(value: Any) -> float:
    found = _number(value)
    return math.nan if found is None else found


def _interval(value: Any) -> Interval | None:
    return (float(value[0]), float(value[1])) if isinstance(value, (list, tuple)) and len(value) == 2 else None


@dataclass(frozen=True)
class NodeRow:
    """One node's line: its rows, the federated and its local-only model's scores on its own test
    split, their noise, the accuracies' intervals and what they let one say, and the epsilon it
    spent. A node whose agreement keeps its own figures has its name alone, and ``held_back`` why."""

    node: str
    organisation: str
    held_back: str = ""
    train_rows: int | None = None
    test_rows: int | None = None
    federated: Scores = field(default_factory=dict)
    local_only: Scores = field(default_factory=dict)
    noise: dict[str, Scores] = field(default_factory=dict)  # by side: each score's noise (its sd)
    epsilon: float | None = None
    auc_unreliable: bool = False
    intervals: dict[str, dict[str, Interval]] | None = None  # by side and metric; None: accuracy is not scored
    comparison: str | None = None  # the accuracies' intervals compared; None: accuracy is not scored

    def score(self, side: str, metric: str) -> float | None:
        return (self.federated if side == "federated" else self.local_only).get(metric)

    def interval(self, side: str, metric: str) -> Interval | None:
        return (self.intervals or {}).get(side, {}).get(metric)

    def to_json(self) -> dict[str, Any]:
        if self.held_back:
            return {"node": self.node, "organisation": self.organisation, "held_back": self.held_back}
        row: dict[str, Any] = {
            "node": self.node,
            "organisation": self.organisation,
            "train_rows": self.train_rows,
            "test_rows": self.test_rows,
            "federated": self.federated,
            "local_only": self.local_only,
            "noise": self.noise,
            "epsilon": self.epsilon,
            "auc_unreliable": self.auc_unreliable,
        }
        if self.intervals is not None:
            row["intervals"] = {side: {m: list(i) for m, i in by.items()} for side, by in self.intervals.items()}
        if self.comparison is not None:
            row["comparison"] = self.comparison
        return row

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> NodeRow:
        intervals = row.get("intervals")
        return cls(
            node=str(row.get("node", "")),
            organisation=str(row.get("organisation", "")),
            held_back=str(row.get("held_back") or ""),
            train_rows=row.get("train_rows"),
            test_rows=row.get("test_rows"),
            federated=_scores(row.get("federated")),
            local_only=_scores(row.get("local_only")),
            noise={str(side): _scores(by) for side, by in (row.get("noise") or {}).items()},
            epsilon=_number(row.get("epsilon")),
            auc_unreliable=bool(row.get("auc_unreliable", False)),
            intervals=None
            if intervals is None
            else {
                str(side): {str(m): i for m, v in (by or {}).items() if (i := _interval(v)) is not None}
                for side, by in intervals.items()
            },
            comparison=None if row.get("comparison") is None else str(row["comparison"]),
        )


@dataclass(frozen=True)
class PooledAccuracy:
    """The accuracy over every node's test rows together (their correct rows summed), with its interval."""

    accuracy: float
    test_rows: int
    interval: Interval

    def to_json(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "test_rows": self.test_rows, "interval": list(self.interval)}

    @classmethod
    def of(cls, value: Any) -> PooledAccuracy | None:
        if not isinstance(value, Mapping) or _number(value.get("accuracy")) is None:
            return None
        interval = _interval(value.get("interval"))
        return cls(float(value["accuracy"]), int(value.get("test_rows") or 0), interval or (math.nan, math.nan))


@dataclass(frozen=True)
class NodeValue:
    """What one node's data contributed: its Shapley value (with its standard error when estimated
    by Monte Carlo) and its leave-one-out value."""

    shapley: float
    standard_error: float | None
    leave_one_out: float


@dataclass(frozen=True)
class Contributions:
    """The nodes' contributions, or why they were not valued (``unavailable``)."""

    unavailable: str = ""
    utility: str = ""
    method: str = ""
    permutations: int | None = None
    rounds: list[int] = field(default_factory=list)
    empty_model: float | None = None
    full_model: float | None = None
    coalitions_scored: int = 0
    scored_by: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, NodeValue] = field(default_factory=dict)
    note: str = ""
    held_back: dict[str, str] = field(default_factory=dict)

    @property
    def monte_carlo(self) -> bool:
        return self.method == "monte-carlo"

    def to_json(self) -> dict[str, Any]:
        if self.unavailable:
            return {"unavailable": self.unavailable}
        found: dict[str, Any] = {
            "utility": self.utility,
            "method": self.method,
            "permutations": self.permutations,
            "rounds": self.rounds,
            "empty_model": self.empty_model,
            "full_model": self.full_model,
            "coalitions_scored": self.coalitions_scored,
            "scored_by": self.scored_by,
            "nodes": {
                name: {"shapley": v.shapley, "standard_error": v.standard_error, "leave_one_out": v.leave_one_out}
                for name, v in self.nodes.items()
            },
            "note": self.note,
        }
        if self.held_back:
            found["held_back"] = self.held_back
        return found

    @classmethod
    def of(cls, value: Mapping[str, Any]) -> Contributions:
        if value.get("unavailable"):
            return cls(unavailable=str(value["unavailable"]))
        return cls(
            utility=str(value.get("utility", "")),
            method=str(value.get("method", "")),
            permutations=value.get("permutations"),
            rounds=list(value.get("rounds") or []),
            empty_model=_number(value.get("empty_model")),
            full_model=_number(value.get("full_model")),
            coalitions_scored=int(value.get("coalitions_scored") or 0),
            scored_by=dict(value.get("scored_by") or {}),
            nodes={
                str(name): NodeValue(
                    shapley=_or_nan(v.get("shapley")),
                    standard_error=_number(v.get("standard_error")),
                    leave_one_out=_or_nan(v.get("leave_one_out")),
                )
                for name, v in (value.get("nodes") or {}).items()
            },
            note=str(value.get("note", "")),
            held_back=dict(value.get("held_back") or {}),
        )


@dataclass(frozen=True)
class RunSummary:
    """A training run's outcome: every node's row, the means over the nodes (``mean``, keyed
    ``SIDE.METRIC``), the accuracy pooled over their rows on each side and the two compared, the
    figures held back (key: why) because they would give a hidden node's by subtraction, the
    intervals' level, the contributions where valued, and where the model was registered."""

    nodes: tuple[NodeRow, ...]
    mean: Scores
    pooled: dict[str, PooledAccuracy] = field(default_factory=dict)  # by side
    pooled_comparison: str = ""
    level: float | None = None
    held_back: dict[str, str] = field(default_factory=dict)  # "mean.SIDE.METRIC" or "pooled.SIDE.accuracy": why
    contributions: Contributions | None = None
    model_uri: str | None = None
    registered: str | None = None  # the registered model's name
    version: str | None = None

    def node(self, name: str) -> NodeRow:
        return next(row for row in self.nodes if row.node == name)

    @property
    def hidden(self) -> list[str]:
        """The nodes whose agreement keeps their own figures."""
        return [row.node for row in self.nodes if row.held_back]

    def mean_of(self, side: str, metric: str) -> float | None:
        return self.mean.get(f"{side}.{metric}")

    def mean_held_back(self, side: str, metric: str) -> bool:
        return f"mean.{side}.{metric}" in self.held_back

    def final_metrics(self) -> dict[str, float]:
        """The means, intervals and pooled accuracies as the run's final MLflow metrics (finite ones)."""
        metrics = {f"final.{k}": v for k, v in self.mean.items() if v is not None}
        for row in self.nodes:
            for side, by in (row.intervals or {}).items():
                for metric, (low, high) in by.items():
                    metrics[f"final.node.{row.node}.{side}.{metric}_ci95_low"] = low
                    metrics[f"final.node.{row.node}.{side}.{metric}_ci95_high"] = high
        for side, pooled in self.pooled.items():
            metrics[f"final.pooled.{side}.accuracy"] = pooled.accuracy
            metrics[f"final.pooled.{side}.accuracy_ci95_low"] = pooled.interval[0]
            metrics[f"final.pooled.{side}.accuracy_ci95_high"] = pooled.interval[1]
        return {k: v for k, v in metrics.items() if math.isfinite(v)}

    def to_json(self) -> dict[str, Any]:
        pooled: dict[str, Any] = {side: found.to_json() for side, found in self.pooled.items()}
        if self.pooled_comparison:
            pooled["comparison"] = self.pooled_comparison
        found: dict[str, Any] = {
            "nodes": [row.to_json() for row in self.nodes],
            "mean": self.mean,
            "pooled": pooled,
            "level": self.level,
        }
        if self.held_back:
            found["held_back"] = self.held_back
        if self.contributions is not None:
            found["contributions"] = self.contributions.to_json()
        if self.model_uri is not None:
            found.update(model_uri=self.model_uri, registered=self.registered, version=self.version)
        return found

    @classmethod
    def of(cls, value: Mapping[str, Any]) -> RunSummary:
        """The summary in a record (``nodes/summary.json``) or a ``done`` event."""
        pooled = value.get("pooled") or {}
        contributions = value.get("contributions")
        version = value.get("version")
        return cls(
            nodes=tuple(NodeRow.of(row) for row in value.get("nodes") or []),
            mean=_scores(value.get("mean")),
            pooled={side: found for side in SIDES if (found := PooledAccuracy.of(pooled.get(side))) is not None},
            pooled_comparison=str(pooled.get("comparison") or ""),
            level=_number(value.get("level")),
            held_back=dict(value.get("held_back") or {}),
            contributions=Contributions.of(contributions) if isinstance(contributions, Mapping) else None,
            model_uri=value.get("model_uri"),
            registered=value.get("registered"),
            version=None if version is None else str(version),
        )


@dataclass(frozen=True)
class NodeCheck:
    """One node's pre-flight answer: its table's catalog (``lab.core.catalog.describe``: columns,
    types, missing and level counts, small counts held back) and its problems against the spec,
    (column, problem) each; or why it ``refused``."""

    node: str
    organisation: str = ""
    refused: str = ""
    catalog: dict[str, Any] = field(default_factory=dict)
    problems: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        if self.refused:
            return {"refused": self.refused}
        problems = [{"column": column, "problem": problem} for column, problem in self.problems]
        return {"organisation": self.organisation, "catalog": self.catalog, "problems": problems}

    @classmethod
    def of(cls, node: str, value: Mapping[str, Any]) -> NodeCheck:
        if "refused" in value:
            return cls(node, refused=str(value["refused"]))
        return cls(
            node,
            organisation=str(value.get("organisation", "")),
            catalog=dict(value.get("catalog") or {}),
            problems=tuple((str(p["column"]), str(p["problem"])) for p in value.get("problems") or []),
        )


@dataclass(frozen=True)
class PreflightAnswer:
    """Every node's answer to the pre-flight (the catalog query), by node name."""

    nodes: dict[str, NodeCheck]

    def to_json(self) -> dict[str, Any]:
        return {"preflight": {name: check.to_json() for name, check in self.nodes.items()}}

    @classmethod
    def of(cls, value: Mapping[str, Any]) -> PreflightAnswer:
        return cls({str(name): NodeCheck.of(str(name), v) for name, v in (value.get("preflight") or {}).items()})


@dataclass(frozen=True)
class StatsAnswer:
    """Federated statistics: the pooled figures (``lab.core.analytics.pool``: ``nodes``, and by
    column its groups' moments, quantiles and histogram; the crosstab and correlation asked for),
    the request as the nodes answered it (with the histogram edges set), what each node held back
    (``notes``), and the nodes whose agreement let their own figures be recorded."""

    pooled: dict[str, Any]
    request: dict[str, Any]
    notes: dict[str, list[str]] = field(default_factory=dict)
    node_figures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"stats": self.pooled, "request": self.request, "notes": self.notes, "node_figures": self.node_figures}

    @classmethod
    def of(cls, value: Mapping[str, Any]) -> StatsAnswer:
        return cls(
            pooled=dict(value.get("stats") or {}),
            request=dict(value.get("request") or {}),
            notes={str(k): list(v) for k, v in (value.get("notes") or {}).items()},
            node_figures=list(value.get("node_figures") or []),
        )


@dataclass(frozen=True)
class PreparedAnswer:
    """The preparation asked alone (``query = "prepare"``): the nodes that would take part."""

    members: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"members": self.members}

    @classmethod
    def of(cls, value: Mapping[str, Any]) -> PreparedAnswer:
        return cls([str(m) for m in value.get("members") or []])


class Reported(Protocol):
    """A run's outcome as the ``done`` event carries it."""

    def to_json(self) -> dict[str, Any]: ...


#: What each kind of run reports, by its ``query`` setting ("" for training).
_REPORTS: dict[str, type[RunSummary | PreflightAnswer | StatsAnswer | PreparedAnswer]] = {
    "": RunSummary,
    "catalog": PreflightAnswer,
    "stats": StatsAnswer,
    "prepare": PreparedAnswer,
}


def read_reported(query: str, fields: Mapping[str, Any]) -> RunSummary | PreflightAnswer | StatsAnswer | PreparedAnswer:
    """The outcome a run of ``query`` reported in its ``done`` event's ``fields``."""
    return _REPORTS[query].of(fields)
