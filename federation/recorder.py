"""The coordinator's record of a run: who took part, every round's metrics, progress events."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from flwr.app import Message

from lab.contract import keys
from lab.contract.records import error_reason, metrics_of, number

__all__ = ["EventLog", "Member", "MetricSink", "Recorder"]


class MetricSink(Protocol):
    """Where round metrics go (an MLflow run, or nowhere)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


class EventLog:
    """JSON-lines progress events that ``lab run`` follows to draw its progress bar."""

    def __init__(self, path: str) -> None:
        self.path = Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields_: Any) -> None:
        """Append one event (no-op without a file)."""
        if self.path is None:
            return
        line = json.dumps({"event": event, "time": time.time(), **fields_}, default=_jsonable)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")


@dataclass
class Member:
    """A node that accepted the task."""

    node_id: int
    name: str
    organisation: str
    train_rows: int
    test_rows: int
    baseline: dict[str, float]
    env_fingerprint: str = ""
    data_fingerprint: str = ""
    env_pins: list[str] | None = None
    warning: str | None = None
    final: dict[str, float] = field(default_factory=dict)
    epsilon: float | None = None  # differential privacy spent at the node by this run so far
    privacy: dict[str, float] = field(default_factory=dict)  # the node's DP plan (noise, planned epsilon)
    suppressed: str = ""  # what the node withheld under its minimum count


class Recorder:
    """Turns replies into per-organisation metrics, MLflow steps and progress events."""

    def __init__(
        self, members: dict[int, Member], sink: MetricSink, events: EventLog, metric_names: tuple[str, ...]
    ) -> None:
        self.members = members
        self.sink = sink
        self.events = events
        self.metric_names = metric_names
        self.refusals: list[dict[str, object]] = []  # refusals during the rounds, after preparation

    def name_of(self, node_id: int) -> str:
        member = self.members.get(node_id)
        return member.name if member else f"node-{node_id}"

    def on_train(self, server_round: int, replies: list[Message], asked: int, excluded: dict[str, str]) -> None:
        """Log the training loss at this round, and the scores of the model the nodes received
        (the global model after the previous round) at the previous round's step."""
        good = [r for r in replies if not r.has_error()]
        metrics: dict[str, float] = {}
        for reply in good:
            record, name = metrics_of(reply), self.name_of(reply.metadata.src_node_id)
            if keys.TRAIN_LOSS in record:  # a node training with DP keeps its loss to itself
                metrics[f"node.{name}.train_loss"] = number(record, keys.TRAIN_LOSS)
            if keys.DP_EPSILON in record:  # the node's own accountant: this run's epsilon so far
                metrics[f"node.{name}.epsilon"] = number(record, keys.DP_EPSILON)
                member = self.members.get(reply.metadata.src_node_id)
                if member is not None:
                    member.epsilon = metrics[f"node.{name}.epsilon"]
        if good and not math.isnan(loss := _weighted_mean(good, keys.TRAIN_LOSS)):
            metrics["train_loss"] = loss
        self.sink.log_metrics(metrics, step=server_round)
        mean = self._log_scores(server_round - 1, good, prefix=keys.EVAL_PREFIX)
        self.events.emit(
            "train",
            round=server_round,
            answered=len(good),
            asked=asked,
            train_loss=metrics.get("train_loss"),
            mean=mean,
            errors=self._refusals(server_round, "train", {**self._errors(replies), **excluded}),
        )

    def on_evaluate(self, server_round: int, replies: list[Message], asked: int) -> None:
        """Log the scores of the global model after ``server_round``."""
        good = [r for r in replies if not r.has_error()]
        mean = self._log_scores(server_round, good, prefix="")
        self.events.emit(
            "evaluate",
            round=server_round,
            answered=len(good),
            asked=asked,
            mean=mean,
            errors=self._refusals(server_round, "evaluate", self._errors(replies)),
        )

    def _log_scores(self, step: int, good: list[Message], *, prefix: str) -> dict[str, float | None]:
        metrics: dict[str, float] = {}
        per_node: dict[str, dict[str, float]] = {}
        for reply in good:
            record = metrics_of(reply)
            values = {m: number(record, prefix + m) for m in self.metric_names if prefix + m in record}
            if not values:
                continue
            name = self.name_of(reply.metadata.src_node_id)
            per_node[name] = values
            member = self.members.get(reply.metadata.src_node_id)
            if member is not None:
                member.final = values
            metrics.update({f"node.{name}.{m}": v for m, v in values.items()})
        for metric in self.metric_names:
            present = [v[metric] for v in per_node.values() if metric in v and not math.isnan(v[metric])]
            if present:
                metrics[f"mean.{metric}"] = sum(present) / len(present)
        self.sink.log_metrics({k: v for k, v in metrics.items() if not math.isnan(v)}, step=step)
        return {m: metrics.get(f"mean.{m}") for m in self.metric_names}

    def _refusals(self, server_round: int, stage: str, errors: dict[str, str]) -> dict[str, str]:
        """Keep and count the nodes that refused or were left out in this round (for MLflow)."""
        if errors:
            self.refusals.extend(
                {"round": server_round, "stage": stage, "node": n, "reason": r} for n, r in errors.items()
            )
            self.sink.log_metrics({"refused_nodes": float(len(errors))}, step=server_round)
        return errors

    def _errors(self, replies: list[Message]) -> dict[str, str]:
        return {self.name_of(r.metadata.src_node_id): error_reason(r) for r in replies if r.has_error()}


def _weighted_mean(replies: list[Message], key: str) -> float:
    pairs = [
        (number(metrics_of(r), key), number(metrics_of(r), keys.NUM_EXAMPLES)) for r in replies if key in metrics_of(r)
    ]
    pairs = [(v, w) for v, w in pairs if not math.isnan(v)]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else float("nan")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)
