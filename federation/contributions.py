"""What each organisation's data contributed to the federated model, valued after the rounds.

The coordinator keeps every node's update of every round (``UpdateLog``, fed by the strategy).
The model a coalition of nodes would have made is rebuilt by re-aggregating only its members'
updates, round after round, from the same starting model: each round, the coalition's members'
updates weighted by their row counts, as FedAvg aggregates (a round where no member answered
leaves the model as it was). The whole federation's rebuilt model is the federated model for
FedAvg and FedProx; FedAdam's and FedYogi's server optimiser is not replayed, so there it is an
approximation (the valuation says so).

The nodes score every candidate model on their own test splits, all of them in one message per
node (Monte Carlo, above eight nodes, asks once per position of its orderings). With an exact
valuation that message goes out beside the final evaluation (``opening``): a SuperNode takes a
second message waiting for it as soon as it has answered the first, where a message sent later
would wait for its next idle poll (3 s). A node under its
minimum row count keeps its scores. A coalition's utility is the spec's first metric pooled over
the nodes' test rows (lab.core.valuation turns the utilities into Shapley and leave-one-out
values). Runs with SecAgg+ cannot be valued: the coordinator never sees an individual update.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType
from flwr.serverapp import Grid

from lab.contract import keys
from lab.contract.events import Valuing, Warned
from lab.contract.membership import HELD_BACK
from lab.contract.messages import Candidates, CandidateScores, Instructions
from lab.contract.records import error_reason
from lab.contract.results import Contributions, NodeValue
from lab.core.disclosure import subtraction_reveals
from lab.core.spec import TaskSpec
from lab.core.valuation import EXACT_LIMIT, Coalition, Valuation, coalitions, value
from lab.errors import LabError, RunFailedError
from lab.queries.base import Emit
from lab.registry.run_record import CONTRIBUTIONS
from lab.registry.tracking import Tracker

__all__ = ["Opening", "UpdateLog", "opening", "value_contributions"]

logger = logging.getLogger(__name__)

#: Metrics a larger value of which is better, in the order the utility is chosen from.
_HIGHER_IS_BETTER = ("accuracy", "auc", "r2")


@dataclass
class UpdateLog:
    """Every round's starting model and each node's update of it (its new weights minus the
    starting ones) with its row count: what the strategy aggregated."""

    start: dict[str, np.ndarray] | None = None
    rounds: list[dict[str, tuple[dict[str, np.ndarray], int]]] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)

    def add(self, server_round: int, base: ArrayRecord, updates: Mapping[str, tuple[ArrayRecord, int]]) -> None:
        """Keep round ``server_round``'s updates of ``base`` (node name -> its weights and rows)."""
        before = {k: a.numpy().astype(np.float64) for k, a in base.items()}
        if self.start is None:
            self.start = before
        self.rounds.append(
            {
                name: ({k: a.numpy().astype(np.float64) - before[k] for k, a in arrays.items()}, rows)
                for name, (arrays, rows) in updates.items()
            }
        )
        self.numbers.append(server_round)

    @property
    def nodes(self) -> list[str]:
        """The nodes that sent at least one update."""
        return sorted({name for updates in self.rounds for name in updates})

    def model(self, coalition: Coalition) -> dict[str, np.ndarray]:
        """The weights the coalition's updates alone make: each round, its members' updates
        averaged by their rows and added to the coalition's model."""
        assert self.start is not None
        weights = {k: v.copy() for k, v in self.start.items()}
        for updates in self.rounds:
            members = [updates[n] for n in sorted(coalition) if n in updates]
            total = sum(rows for _, rows in members)
            for delta, rows in members:
                for k in weights:
                    weights[k] += delta[k] * (rows / total)
        return weights


@dataclass
class Opening:
    """The valuation's first candidates messages, built before the final evaluation so that both
    go to the nodes together, and the nodes' replies to them once they are in."""

    wanted: list[Coalition]
    messages: list[Message]
    replies: list[Message] | None = None


def opening(
    grid: Grid,
    log: UpdateLog,
    instructions: Instructions,
    node_ids: Mapping[int, str],
    *,
    hidden: frozenset[str] = frozenset(),
) -> Opening | None:
    """The candidates messages of an exact valuation (every coalition), or None where the valuation
    asks nothing of the nodes (too few nodes, values that could not be recorded) or asks in steps
    (Monte Carlo)."""
    names = log.nodes
    if len(names) < 2 or len(names) > EXACT_LIMIT or subtraction_reveals(hidden & set(names), len(names)):
        return None
    wanted = coalitions(names)
    return Opening(wanted, _messages(grid, _candidates(log, wanted, instructions), node_ids))


def value_contributions(
    grid: Grid,
    log: UpdateLog,
    instructions: Instructions,
    node_ids: Mapping[int, str],
    spec: TaskSpec,
    *,
    hidden: frozenset[str] = frozenset(),
    strategy: str,
    timeout: float,
    seed: int,
    tracker: Tracker,
    emit: Emit,
    opened: Opening | None = None,
) -> Contributions:
    """Value every node's contribution, log it to the run, and return it; a valuation that cannot
    be made (too few nodes scored) is ``unavailable``, with why, and leaves the run as it is.
    The ``opened`` messages' replies, already in, are the scores of their coalitions.

    The ``hidden`` nodes' agreements keep their own figures: their values are not recorded, and
    none is where the others' would give a hidden node's by subtraction (the values add up to the
    whole federation's utility less the empty model's)."""
    if len(log.nodes) < 2:
        return _unavailable(tracker, emit, "fewer than two nodes sent updates: there is nothing to compare")
    # Not asked of the nodes at all where the values could not be recorded.
    why = subtraction_reveals(hidden & set(log.nodes), len(log.nodes))
    if why:
        return _unavailable(
            tracker,
            emit,
            f"held back: {why}, and the agreement of {', '.join(sorted(hidden & set(log.nodes)))} keeps its "
            "figures to itself (allow.node-figures = false)",
        )
    metric, sign = _utility_metric(spec)
    asked: dict[str, str] = {}

    def score(wanted: list[Coalition]) -> dict[Coalition, float]:
        if opened is not None and opened.replies is not None and wanted == opened.wanted:
            messages, replies = opened.messages, opened.replies
        else:
            messages = _messages(grid, _candidates(log, wanted, instructions), node_ids)
            replies = list(grid.send_and_receive(messages, timeout=timeout))
        scores = _read(messages, replies, len(wanted), node_ids, timeout, asked)
        return {c: sign * _pooled(metric, [(s[i], rows) for s, rows in scores]) for i, c in enumerate(wanted)}

    emit(Valuing(nodes=len(log.nodes), metric=metric))
    try:
        valuation = value(log.nodes, score, seed=seed)
    except LabError as exc:
        return _unavailable(tracker, emit, str(exc))
    result = _result(valuation, metric, sign, strategy, log.numbers, asked)
    if hidden:
        result = replace(
            result,
            nodes={n: v for n, v in result.nodes.items() if n not in hidden},
            held_back={n: HELD_BACK for n in sorted(hidden)},
        )
    _log(tracker, result)
    return result


def _utility_metric(spec: TaskSpec) -> tuple[str, float]:
    """The metric coalitions are scored by and its sign (utilities grow with quality)."""
    for metric in _HIGHER_IS_BETTER:
        if metric in spec.metrics:
            return metric, 1.0
    first = next((m for m in spec.metrics if m != "loss"), spec.metrics[0])
    return first, -1.0


def _candidates(log: UpdateLog, wanted: list[Coalition], instructions: Instructions) -> Candidates:
    """The models the coalitions ``wanted`` make, in the starting model's dtypes."""
    dtypes = {k: a.dtype for k, a in (log.start or {}).items()}
    models = [ArrayRecord({k: Array(v.astype(dtypes[k])) for k, v in log.model(c).items()}) for c in wanted]
    return Candidates(models, instructions)


def _messages(grid: Grid, candidates: Candidates, node_ids: Mapping[int, str]) -> list[Message]:
    """One message of the candidates to every connected node."""
    connected = sorted(set(grid.get_node_ids()) & set(node_ids))
    content = candidates.to_record()
    kind = f"{MessageType.EVALUATE}.{keys.CANDIDATES_ACTION}"
    return [Message(content, dst_node_id=node_id, message_type=kind) for node_id in connected]


def _read(
    messages: list[Message],
    replies: list[Message],
    count: int,
    node_ids: Mapping[int, str],
    timeout: float,
    asked: dict[str, str],
) -> list[tuple[list[dict[str, float]], int]]:
    """Every node's scores of the ``count`` candidates its message carried, with its test rows."""
    scored = []
    for reply in replies:
        name = node_ids.get(reply.metadata.src_node_id, f"node-{reply.metadata.src_node_id}")
        if reply.has_error():
            asked[name] = error_reason(reply)
            continue
        answer = CandidateScores.of(reply)
        if not answer.scores:
            asked[name] = answer.node.suppressed or "kept its scores"
            continue
        if len(answer.scores) != count:
            asked[name] = f"scored {len(answer.scores)} of {count} models"
            continue
        asked[name] = "scored"
        scored.append((answer.scores, answer.num_examples))
    answered = {r.metadata.src_node_id for r in replies}
    for message in messages:
        if message.metadata.dst_node_id not in answered:
            asked[node_ids[message.metadata.dst_node_id]] = f"no reply within {timeout:.0f} s"
    if not scored:
        raise RunFailedError(f"no node scored the coalitions' models ({'; '.join(sorted(set(asked.values())))})")
    return scored


def _pooled(metric: str, scores: list[tuple[dict[str, float], int]]) -> float:
    """The metric over every scoring node's test rows (weighted by its rows)."""
    pairs = [(s[metric], rows) for s, rows in scores if metric in s and math.isfinite(s[metric])]
    total = sum(rows for _, rows in pairs)
    return sum(v * rows for v, rows in pairs) / total if total else math.nan


def _result(
    valuation: Valuation, metric: str, sign: float, strategy: str, rounds: list[int], asked: dict[str, str]
) -> Contributions:
    note = (
        "Each coalition's model re-aggregates only its members' updates of every round (FedAvg's weighting); "
        f"its utility is {'' if sign > 0 else 'minus '}{metric} pooled over the scoring nodes' test rows."
    )
    if strategy in ("fedadam", "fedyogi"):
        note += f" {strategy}'s server optimiser is not replayed: the coalitions' models approximate it."
    return Contributions(
        utility=f"{'' if sign > 0 else '-'}{metric} pooled over the scoring nodes' test rows",
        method=valuation.method,
        permutations=valuation.orderings or None,
        rounds=rounds,
        empty_model=valuation.empty,
        full_model=valuation.whole,
        coalitions_scored=len(valuation.utilities),
        scored_by=asked,
        nodes={
            name: NodeValue(valuation.shapley[name], valuation.standard_error[name], valuation.leave_one_out[name])
            for name in sorted(valuation.shapley)
        },
        note=note,
    )


def _unavailable(tracker: Tracker, emit: Emit, reason: str) -> Contributions:
    emit(Warned(reason=f"contributions not valued: {reason}"))
    result = Contributions(unavailable=reason)
    tracker.log_text(json.dumps(result.to_json(), indent=2), CONTRIBUTIONS)
    return result


def _log(tracker: Tracker, result: Contributions) -> None:
    metrics: dict[str, float] = {}
    for name, values in result.nodes.items():
        metrics[f"contribution.shapley.{name}"] = values.shapley
        metrics[f"contribution.leave_one_out.{name}"] = values.leave_one_out
        if values.standard_error is not None:
            metrics[f"contribution.shapley_se.{name}"] = values.standard_error
    tracker.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, step=0)
    tracker.log_text(json.dumps(result.to_json(), indent=2), CONTRIBUTIONS)
    if result.nodes:
        tracker.log_figure(_figure(result), "contributions/contributions.png")


def _figure(result: Contributions) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.nodes)
    shapley = [result.nodes[n].shapley for n in names]
    loo = [result.nodes[n].leave_one_out for n in names]
    errors = [result.nodes[n].standard_error or 0.0 for n in names]
    positions = np.arange(len(names))
    figure, axes = plt.subplots(figsize=(6.4, 3.2))
    axes.bar(positions - 0.2, shapley, 0.4, yerr=errors, label="Shapley value", color="#2b6cb0")
    axes.bar(positions + 0.2, loo, 0.4, label="leave-one-out", color="#a0aec0")
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xticks(positions, names)
    axes.set_ylabel(f"contribution to {result.utility.split(' ')[0]}")
    axes.legend(frameon=False)
    figure.tight_layout()
    plt.close(figure)
    return figure
