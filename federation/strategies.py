"""Flower's strategies with the run's reporting: refused nodes skipped, the minimum kept, rounds recorded."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from lab.contract import keys
from lab.contract.messages import NodeReport
from lab.contract.records import error_reason
from lab.contract.settings import RunSettings
from lab.contract.strategies import STRATEGIES
from lab.errors import RunFailedError
from lab.queries.prepare import Guard

__all__ = ["ReportingStrategy", "RoundObserver", "make_strategy"]


class RoundObserver(Protocol):
    """Receives every round's replies (the coordinator's recorder)."""

    def on_train(self, server_round: int, replies: list[Message], asked: int, excluded: dict[str, str]) -> None: ...

    def on_evaluate(self, server_round: int, replies: list[Message], asked: int, missing: dict[str, str]) -> None: ...

    def dropped(self, asked: Iterable[int], replies: list[Message]) -> dict[str, str]: ...


class ReportingStrategy(Strategy):
    """One of Flower's strategies (``inner``, built from the lab's table of strategies), with the
    run's reporting around it; the aggregation itself stays Flower's.

    It sends messages only to the nodes that accepted the task, screens every reply with the
    coordinator's guard, hands it to the observer, fails the run when fewer than ``min_nodes``
    nodes answered or the aggregate is not finite.
    """

    def __init__(
        self, inner: FedAvg, participants: set[int], observer: RoundObserver, min_nodes: int, guard: Guard
    ) -> None:
        self.inner = inner
        self.participants = set(participants)
        self.observer = observer
        self.min_nodes = min_nodes
        self.guard = guard

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = self.inner.configure_train(server_round, arrays, config, grid)
        return [m for m in messages if m.metadata.dst_node_id in self.participants]

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = self.inner.configure_evaluate(server_round, arrays, config, grid)
        return [m for m in messages if m.metadata.dst_node_id in self.participants]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        kept, excluded = self._screen(replies)
        excluded.update(self.observer.dropped(self.participants, replies))
        self._require_enough(server_round, kept, "training", excluded)
        self.observer.on_train(server_round, kept, len(self.participants), excluded)
        # The observer has recorded every node's own metrics. Flower averages only metrics all
        # replies share, and a node may withhold its scores (too few test rows) or add its
        # epsilon: hand it the loss and the weight, which every train reply carries.
        for reply in kept:
            for record in reply.content.metric_records.values():
                for key in [k for k in record if k not in (keys.NUM_EXAMPLES, keys.TRAIN_LOSS)]:
                    del record[key]
        arrays, metrics = self.inner.aggregate_train(server_round, kept)
        if arrays is not None and not all(np.isfinite(a.numpy()).all() for a in arrays.values()):
            raise RunFailedError(
                f"round {server_round}: the aggregated model is not finite (NaN or infinite weights); "
                "lower learning-rate or server-learning-rate and check the spec's scaling"
            )
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        if not replies and self.inner.fraction_evaluate == 0.0:
            return None  # nodes score the global model inside the next train message instead
        self._require_enough(server_round, replies, "evaluation", {})
        dropped = self.observer.dropped(self.participants, replies)
        self.observer.on_evaluate(server_round, replies, len(self.participants), dropped)
        return self.inner.aggregate_evaluate(server_round, replies)

    def _screen(self, replies: list[Message]) -> tuple[list[Message], dict[str, str]]:
        """Replies the guard admits, and why the others are not aggregated (by node name)."""
        kept: list[Message] = []
        excluded: dict[str, str] = {}
        for reply in replies:
            report = None if reply.has_error() else NodeReport.of(reply)
            refusal = self.guard.screen(report, node_id=reply.metadata.src_node_id)[0] if report is not None else None
            if refusal is None:
                kept.append(reply)
            else:
                name = report.name if report is not None else "?"
                excluded[name] = f"node {name!r} not aggregated: {refusal}"
        return kept, excluded

    def _require_enough(self, server_round: int, replies: list[Message], stage: str, excluded: dict[str, str]) -> None:
        good = [r for r in replies if not r.has_error()]
        if len(good) < self.min_nodes:
            errors = [error_reason(r) for r in replies if r.has_error()]
            reasons = "; ".join(errors + list(excluded.values()))
            raise RunFailedError(
                f"round {server_round} {stage}: {len(good)} node(s) answered, fewer than min-nodes = "
                f"{self.min_nodes}" + (f" ({reasons})" if reasons else "")
            )


def make_strategy(
    settings: RunSettings, participants: set[int], observer: RoundObserver, guard: Guard
) -> ReportingStrategy:
    """The run's strategy, as the lab's table of strategies builds it, with the run's reporting."""
    inner = STRATEGIES[settings.strategy].build(
        settings,
        fraction_train=1.0,
        # One message per node per round: nodes score the global model in the train message,
        # and the coordinator asks for the final model's scores once, after the last round.
        fraction_evaluate=0.0,
        min_train_nodes=len(participants),
        min_available_nodes=len(participants),
        weighted_by_key=keys.NUM_EXAMPLES,
        arrayrecord_key=keys.ARRAYS,
        configrecord_key=keys.CONFIG,
    )
    return ReportingStrategy(inner, participants, observer, settings.min_nodes, guard)
