"""The coordinator's record of a run: every round's metrics, per organisation, to MLflow and the caller.

A node's own figures (its loss, epsilon and scores) are recorded only where its agreement lets
them be shown; a figure pooled over the nodes (the mean score, the weighted loss) is held back
where it would give a hidden node's own by subtraction (lab.core.disclosure).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol

from flwr.app import Message
from flwr.common.constant import ErrorCode

from lab.contract.events import Evaluated, Trained, Warned
from lab.contract.membership import Member
from lab.contract.messages import EvaluateReply, TrainReply, audit_head
from lab.contract.records import error_reason
from lab.core.disclosure import subtraction_reveals
from lab.queries.base import Emit

__all__ = ["MetricSink", "Recorder"]


class MetricSink(Protocol):
    """Where round metrics go (an MLflow run, or nowhere)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


class Recorder:
    """Turns replies into per-organisation metrics, MLflow steps and progress events."""

    def __init__(
        self, members: dict[int, Member], sink: MetricSink, emit: Emit, metric_names: tuple[str, ...], timeout: float
    ) -> None:
        self.members = members
        self.timeout = timeout
        self.sink = sink
        self.emit = emit
        self.metric_names = metric_names
        self.refusals: list[dict[str, object]] = []  # refusals during the rounds, after preparation
        self.audit_heads: list[dict[str, object]] = []  # each reply's audit head: `lab node audit --against`
        self.auc_unreliable: set[str] = set()  # nodes whose test split has under 5 rows of a class

    def dropped(self, asked: Iterable[int], replies: list[Message]) -> dict[str, str]:
        """The nodes asked that sent nothing back within the timeout (their link went down, or
        they stopped), by name."""
        answered = {reply.metadata.src_node_id for reply in replies}
        return {
            self.name_of(n): f"node {self.name_of(n)!r} dropped: no reply within {self.timeout:.0f} s"
            for n in sorted(asked)
            if n not in answered
        }

    def warn(self, node: str, reason: str) -> None:
        """Tell whoever follows the run of something the coordinator did about a node's reply."""
        self.emit(Warned(node=node, reason=reason))

    def name_of(self, node_id: int) -> str:
        member = self.members.get(node_id)
        return member.name if member else f"node-{node_id}"

    def shows(self, node_id: int) -> bool:
        """Whether the run may record this node's own figures (its agreement's node-figures)."""
        member = self.members.get(node_id)
        return member is not None and member.shows_figures

    def poolable(self, node_ids: Iterable[int]) -> bool:
        """Whether a figure pooled over these nodes gives no hidden node's own by subtraction."""
        ids = list(node_ids)
        return subtraction_reveals([self.name_of(n) for n in ids if not self.shows(n)], len(ids)) is None

    def on_train(self, server_round: int, replies: list[Message], asked: int, excluded: dict[str, str]) -> None:
        """Log the training loss at this round, and the scores of the model the nodes received
        (the global model after the previous round) at the previous round's step."""
        good = {r.metadata.src_node_id: TrainReply.of(r) for r in replies if not r.has_error()}
        metrics: dict[str, float] = {}
        for node_id, reply in good.items():
            name = self.name_of(node_id)
            if reply.epsilon is not None and (member := self.members.get(node_id)) is not None:
                member.epsilon = reply.epsilon  # the node's own accountant: this run's epsilon so far
            if not self.shows(node_id):
                continue
            if reply.train_loss is not None:  # a node training with DP keeps its loss to itself
                metrics[f"node.{name}.train_loss"] = reply.train_loss
            if reply.epsilon is not None:
                metrics[f"node.{name}.epsilon"] = reply.epsilon
        losses = {n: r for n, r in good.items() if r.train_loss is not None and not math.isnan(r.train_loss)}
        if losses and self.poolable(losses) and not math.isnan(loss := _weighted_loss(list(losses.values()))):
            metrics["train_loss"] = loss
        metrics.update(self._note_heads(server_round, "train", replies))
        self.sink.log_metrics(metrics, step=server_round)
        mean = self._log_scores(server_round - 1, {n: r.evaluated for n, r in good.items()})
        self.emit(
            Trained(
                round=server_round,
                answered=len(good),
                asked=asked,
                train_loss=metrics.get("train_loss"),
                mean=mean,
                errors=self._refusals(server_round, "train", {**self._errors(replies), **excluded}),
            )
        )

    def on_evaluate(self, server_round: int, replies: list[Message], asked: int, missing: dict[str, str]) -> None:
        """Log the scores of the global model after ``server_round`` (``missing``: the nodes that
        sent nothing back, by name, with why)."""
        evaluated = {r.metadata.src_node_id: EvaluateReply.of(r) for r in replies if not r.has_error()}
        good = {node_id: reply.metrics for node_id, reply in evaluated.items()}
        for node_id, reply in evaluated.items():
            if (member := self.members.get(node_id)) is not None:
                member.final_noise = dict(reply.noise)
        self.auc_unreliable |= {self.name_of(n) for n, reply in evaluated.items() if reply.auc_unreliable}
        mean = self._log_scores(server_round, good)
        self.sink.log_metrics(self._note_heads(server_round, "evaluate", replies), step=server_round)
        self.emit(
            Evaluated(
                round=server_round,
                answered=len(good),
                asked=asked,
                mean=mean,
                errors=self._refusals(server_round, "evaluate", {**self._errors(replies), **missing}),
            )
        )

    def _note_heads(self, server_round: int, stage: str, replies: list[Message]) -> dict[str, float]:
        """Keep each node's audit head from its reply; its log's length as a metric."""
        lengths: dict[str, float] = {}
        for reply in replies:
            head = audit_head(reply)
            if head is not None:
                name = self.name_of(reply.metadata.src_node_id)
                self.audit_heads.append({"round": server_round, "stage": stage, "node": name, "count": head[0],
                                         "hash": head[1]})  # fmt: skip
                lengths[f"node.{name}.audit_entries"] = float(head[0])
        return lengths

    def _log_scores(self, step: int, scores: dict[int, dict[str, float]]) -> dict[str, float | None]:
        metrics: dict[str, float] = {}
        per_node: dict[int, dict[str, float]] = {}
        for node_id, scored in scores.items():
            values = {m: scored[m] for m in self.metric_names if m in scored}
            if not values:
                continue
            per_node[node_id] = values
            member = self.members.get(node_id)
            if member is not None:
                member.final = values
            if self.shows(node_id):
                metrics.update({f"node.{self.name_of(node_id)}.{m}": v for m, v in values.items()})
        for metric in self.metric_names:
            present = {n: v[metric] for n, v in per_node.items() if metric in v and not math.isnan(v[metric])}
            if present and self.poolable(present):
                metrics[f"mean.{metric}"] = sum(present.values()) / len(present)
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
        errors = {}
        for reply in replies:
            if reply.has_error():
                name = self.name_of(reply.metadata.src_node_id)
                lost = reply.error.code == ErrorCode.NODE_UNAVAILABLE  # the SuperLink lost its heartbeat
                errors[name] = f"node {name!r} dropped: {error_reason(reply)}" if lost else error_reason(reply)
        return errors


def _weighted_loss(replies: list[TrainReply]) -> float:
    pairs = [(r.train_loss, r.num_examples) for r in replies if r.train_loss is not None]
    pairs = [(v, w) for v, w in pairs if not math.isnan(v)]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else float("nan")
