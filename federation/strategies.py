"""Flower's strategies with the run's reporting: refused nodes skipped, the minimum kept, rounds recorded."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from federation.contributions import UpdateLog
from federation.grid import DelegatingGrid
from lab.contract import keys
from lab.contract.membership import Guard
from lab.contract.messages import NodeReport, TrainReply
from lab.contract.records import error_reason
from lab.contract.settings import RunSettings
from lab.contract.strategies import STRATEGIES
from lab.errors import RunFailedError

__all__ = ["ReportingStrategy", "RoundObserver", "make_strategy"]

#: The server optimiser's state a checkpoint keeps (Flower's FedAdam and FedYogi moments).
_OPTIMISER_STATE = ("m_t", "v_t")
#: Seconds between two looks at which nodes are connected.
_CONNECT_POLL = 0.5
#: Seconds a round waits for a participant that is not connected (a restarted node reconnects
#: within a few), before it goes on without it.
_REJOIN_WAIT = 10.0


class RoundObserver(Protocol):
    """Receives every round's replies (the coordinator's recorder)."""

    def on_train(self, server_round: int, replies: list[Message], asked: int, excluded: dict[str, str]) -> None: ...

    def on_evaluate(self, server_round: int, replies: list[Message], asked: int, missing: dict[str, str]) -> None: ...

    def dropped(self, asked: Iterable[int], replies: list[Message]) -> dict[str, str]: ...

    def warn(self, node: str, reason: str) -> None: ...


class ReportingStrategy(Strategy):
    """One of Flower's strategies (``inner``, built from the lab's table of strategies), with the
    run's reporting around it; the aggregation itself stays Flower's.

    Each round it sends messages to the nodes that accepted the task and are connected (waiting
    up to ``timeout`` seconds for ``min_nodes`` of them), each message expiring with the round so
    that a node coming back late never trains on a closed round. It screens every reply with the
    coordinator's guard, hands it to the observer, aggregates the kept replies in the order of
    the nodes' names (the same sums on every rerun), and fails the run when fewer than
    ``min_nodes`` nodes answered or the aggregate is not finite. With ``updates``, every round's
    aggregated updates are kept there (to value each node's contribution after the run).

    No one node can take the model: a reply is weighted by no more than the training rows its node
    declared at preparation (``declared``: node id -> rows), whatever row count it claims, and with
    ``clip_norm`` > 0 every node's update (its model minus the global one it received) is scaled to
    that L2 norm at most before it is aggregated.
    """

    def __init__(
        self,
        inner: FedAvg,
        participants: dict[int, str],
        observer: RoundObserver,
        min_nodes: int,
        guard: Guard,
        timeout: float,
        updates: UpdateLog | None = None,
        *,
        declared: dict[int, int] | None = None,
        clip_norm: float = 0.0,
    ) -> None:
        self.inner = inner
        self.declared = dict(declared or {})
        self.clip_norm = clip_norm
        self.updates = updates
        self.base: ArrayRecord | None = None  # the global model this round's nodes received
        self.participants = dict(participants)
        self.observer = observer
        self.min_nodes = min_nodes
        self.guard = guard
        self.timeout = timeout
        self.absent: dict[str, str] = {}  # this round's participants that were not connected

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        connected = self._connected(server_round, grid)
        self.base = arrays
        messages = list(self.inner.configure_train(server_round, arrays, config, _Only(grid, connected)))
        for message in messages:
            message.metadata.ttl = self.timeout
        return messages

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
        asked = [n for n in self.participants if self.participants[n] not in self.absent]
        excluded.update(self.observer.dropped(asked, replies))
        excluded.update(self.absent)
        self._require_enough(server_round, kept, "training", excluded)
        self.observer.on_train(server_round, kept, len(self.participants), excluded)
        # The observer has recorded every node's own metrics. Flower averages only metrics all
        # replies share, and a node may withhold its scores (too few test rows) or add its
        # epsilon: hand it the loss and the weight, which every train reply carries.
        answered = [r for r in kept if not r.has_error()]
        for reply in answered:
            self._bound(reply)
        if self.updates is not None and self.base is not None:
            trained = {self.participants.get(r.metadata.src_node_id, "?"): TrainReply.of(r) for r in answered}
            self.updates.add(
                server_round,
                self.base,
                {name: (t.arrays, t.num_examples) for name, t in trained.items() if t.arrays is not None},
            )
        for reply in answered:
            for record in reply.content.metric_records.values():
                for key in [k for k in record if k not in (keys.NUM_EXAMPLES, keys.TRAIN_LOSS)]:
                    del record[key]
        answered.sort(key=lambda r: self.participants.get(r.metadata.src_node_id, ""))
        arrays, metrics = self.inner.aggregate_train(server_round, answered)
        if arrays is not None and not all(np.isfinite(a.numpy()).all() for a in arrays.values()):
            raise RunFailedError(
                f"round {server_round}: the aggregated model is not finite (NaN or infinite weights); "
                "lower learning-rate or server-learning-rate and check the spec's scaling"
            )
        return arrays, metrics

    def _bound(self, reply: Message) -> None:
        """Weight a reply by no more than its node's declared training rows, and clip its update."""
        node_id = reply.metadata.src_node_id
        name = self.participants.get(node_id, f"node-{node_id}")
        for record in reply.content.metric_records.values():
            claimed = record.get(keys.NUM_EXAMPLES)
            declared = self.declared.get(node_id)
            if isinstance(claimed, int | float) and declared is not None and claimed > declared:
                record[keys.NUM_EXAMPLES] = declared
                self.observer.warn(
                    name,
                    f"node {name!r} claimed {claimed:g} training rows, {declared} at preparation: weighted by "
                    f"{declared}",
                )
        arrays = reply.content.array_records.get(keys.ARRAYS)
        if self.clip_norm <= 0 or arrays is None or self.base is None:
            return
        base = {k: a.numpy().astype(np.float64) for k, a in self.base.items()}
        delta = {k: a.numpy().astype(np.float64) - base[k] for k, a in arrays.items() if k in base}
        norm = float(np.sqrt(sum(float((d**2).sum()) for d in delta.values())))
        if norm > self.clip_norm:
            scale = self.clip_norm / norm
            for k, d in delta.items():
                arrays[k] = Array((base[k] + d * scale).astype(arrays[k].numpy().dtype))

    def optimiser_state(self) -> dict[str, dict[str, np.ndarray]]:
        """The server optimiser's state (FedAdam's and FedYogi's moments), for a checkpoint."""
        return {name: dict(state) for name in _OPTIMISER_STATE if (state := getattr(self.inner, name, None))}

    def restore(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        """Take up the server optimiser's state from a checkpoint."""
        for name in _OPTIMISER_STATE:
            if name in state:
                setattr(self.inner, name, dict(state[name]))

    def _connected(self, server_round: int, grid: Grid) -> set[int]:
        """The participants connected now: all of them, or, after waiting ``_REJOIN_WAIT`` seconds
        for a node that dropped to come back, at least ``min_nodes`` (waiting up to the timeout)."""
        started = time.monotonic()
        while True:
            connected = set(grid.get_node_ids()) & set(self.participants)
            waited = time.monotonic() - started
            if len(connected) == len(self.participants) or waited >= self.timeout:
                break
            if len(connected) >= self.min_nodes and waited >= min(_REJOIN_WAIT, self.timeout):
                break
            time.sleep(_CONNECT_POLL)
        self.absent = {
            name: f"node {name!r} not connected when round {server_round} began"
            for node_id, name in sorted(self.participants.items(), key=lambda item: item[1])
            if node_id not in connected
        }
        if len(connected) < self.min_nodes:
            raise RunFailedError(
                f"round {server_round}: {len(connected)} of the {len(self.participants)} participating nodes "
                f"connected within {self.timeout:.0f} s, fewer than min-nodes = {self.min_nodes}"
            )
        return connected

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
    settings: RunSettings,
    participants: dict[int, str],
    observer: RoundObserver,
    guard: Guard,
    updates: UpdateLog | None = None,
    declared: dict[int, int] | None = None,
) -> ReportingStrategy:
    """The run's strategy, as the lab's table of strategies builds it, with the run's reporting;
    ``participants``: node id -> name of the nodes that accepted the task; ``updates``: where
    every round's updates are kept, if anywhere; ``declared``: node id -> the training rows each
    declared at preparation (the most its reply is weighted by)."""
    inner = STRATEGIES[settings.strategy].build(
        settings,
        fraction_train=1.0,
        # One message per node per round: nodes score the global model in the train message,
        # and the coordinator asks for the final model's scores once, after the last round.
        fraction_evaluate=0.0,
        # Every participant connected when a round begins is sampled (ReportingStrategy waits
        # for min-nodes of them), so Flower's own wait for a number of nodes is not needed.
        min_train_nodes=1,
        min_available_nodes=1,
        weighted_by_key=keys.NUM_EXAMPLES,
        arrayrecord_key=keys.ARRAYS,
        configrecord_key=keys.CONFIG,
    )
    return ReportingStrategy(
        inner,
        participants,
        observer,
        settings.min_nodes,
        guard,
        settings.round_timeout,
        updates,
        declared=declared,
        clip_norm=settings.clip_update_norm,
    )


class _Only(DelegatingGrid):
    """The grid, listing only the nodes ``nodes`` (what a round samples from)."""

    def __init__(self, grid: Grid, nodes: set[int]) -> None:
        super().__init__(grid)
        self.nodes = nodes

    def get_node_ids(self) -> Iterable[int]:
        return sorted(self.nodes)
