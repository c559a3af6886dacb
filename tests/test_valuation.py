"""Shapley and leave-one-out values, coalitions' models, and the intervals of accuracies."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from federation.contributions import UpdateLog
from lab.core.intervals import compare, pooled_accuracy, wilson
from lab.core.valuation import EXACT_LIMIT, Coalition, coalitions, value


def _game(weights: dict[str, float], shape=lambda total: total):  # type: ignore[no-untyped-def]
    """A utility over coalitions: ``shape`` of the members' summed weights; counts its batches."""
    calls: list[int] = []

    def score(batch: list[Coalition]) -> dict[Coalition, float]:
        calls.append(len(batch))
        return {c: shape(sum(weights[n] for n in c)) for c in batch}

    return score, calls


def test_exact_shapley_of_an_additive_game_is_each_members_weight_in_one_batch() -> None:
    weights = {"a": 0.1, "b": 0.25, "c": -0.05, "d": 0.4}
    score, calls = _game(weights)
    valued = value(weights, score)
    assert valued.method == "exact"
    assert calls == [16]  # every coalition, in one batch: one message per node
    for name, weight in weights.items():
        assert valued.shapley[name] == pytest.approx(weight)
        assert valued.leave_one_out[name] == pytest.approx(weight)
        assert valued.standard_error[name] is None


def test_exact_shapley_is_efficient_and_symmetric_where_leave_one_out_is_not() -> None:
    # Two hospitals that hold the same rows: either alone makes the model, so leaving one out costs
    # nothing, while Shapley shares the credit between them.
    table = {frozenset(): 0.5, frozenset("a"): 0.8, frozenset("b"): 0.8, frozenset("c"): 0.55}
    table |= {frozenset("ab"): 0.8, frozenset("ac"): 0.82, frozenset("bc"): 0.82, frozenset("abc"): 0.82}
    valued = value("abc", lambda batch: {c: table[c] for c in batch})
    assert sum(valued.shapley.values()) == pytest.approx(0.82 - 0.5)
    assert valued.shapley["a"] == pytest.approx(valued.shapley["b"])
    assert valued.shapley["a"] > 0.1
    assert valued.leave_one_out["a"] == pytest.approx(0.0)
    assert valued.leave_one_out["c"] == pytest.approx(0.02)


def test_monte_carlo_above_the_exact_limit_agrees_with_the_exact_value_within_its_error() -> None:
    rng = np.random.default_rng(3)
    names = [f"n{i}" for i in range(EXACT_LIMIT + 2)]
    weights = dict(zip(names, rng.uniform(0.0, 1.0, len(names)), strict=True))
    shape = lambda total: math.sqrt(total)  # noqa: E731  (diminishing returns)
    # The exact values of the same game, from every coalition.
    utility = {c: shape(sum(weights[n] for n in c)) for c in coalitions(names)}
    n = len(names)
    exact = {
        name: sum(
            math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
            * (utility[frozenset(s) | {name}] - utility[frozenset(s)])
            for k in range(n)
            for s in combinations([m for m in names if m != name], k)
        )
        for name in names
    }  # fmt: skip
    score, calls = _game(weights, shape)
    valued = value(names, score, orderings=400, tolerance=1e-9, seed=1)
    assert valued.method == "monte-carlo"
    assert len(calls) <= n + 2  # a batch per position (and one for the leave-one-out coalitions)
    for name in names:
        error = valued.standard_error[name]
        assert error is not None and error > 0
        assert abs(valued.shapley[name] - exact[name]) < 4 * error + 1e-9


def test_truncation_stops_an_ordering_once_it_reaches_the_whole_federations_utility() -> None:
    names = [f"n{i}" for i in range(EXACT_LIMIT + 1)]
    # One member makes the whole model; the others add nothing.
    score, calls = _game({n: (1.0 if n == "n0" else 0.0) for n in names}, lambda total: min(total, 1.0))
    valued = value(names, score, orderings=50, tolerance=0.01, seed=0)
    assert valued.shapley["n0"] == pytest.approx(1.0)
    assert all(valued.shapley[n] == 0.0 for n in names[1:])
    assert sum(calls) < 50 * len(names)  # truncated orderings ask for no more coalitions


@pytest.mark.usefixtures("identity")
def test_the_whole_coalitions_model_is_flowers_fedavg_aggregate() -> None:
    rng = np.random.default_rng(0)
    start = {"w": rng.normal(size=(3, 2)).astype(np.float32), "b": rng.normal(size=2).astype(np.float32)}
    log, model = UpdateLog(), {k: v.copy() for k, v in start.items()}
    for server_round in (1, 2, 3):
        rows = {"a": 30, "b": 10, "c": 25}
        trained = {n: {k: v + rng.normal(size=v.shape).astype(np.float32) for k, v in model.items()} for n in rows}
        base = ArrayRecord({k: Array(v) for k, v in model.items()})
        log.add(
            server_round,
            base,
            {n: (ArrayRecord({k: Array(v) for k, v in w.items()}), rows[n]) for n, w in trained.items()},
        )
        replies = [_reply(trained[n], rows[n]) for n in rows]
        aggregated, _ = FedAvg().aggregate_train(server_round, replies)
        assert aggregated is not None
        model = {k: a.numpy() for k, a in aggregated.items()}
    rebuilt = log.model(frozenset("abc"))
    for k in start:
        np.testing.assert_allclose(rebuilt[k], model[k], rtol=1e-5, atol=1e-5)
    alone = log.model(frozenset("b"))  # a coalition of one follows its own updates only
    assert not np.allclose(alone["w"], model["w"])
    assert all(np.array_equal(log.model(frozenset())[k], start[k].astype(np.float64)) for k in start)


def _reply(weights: dict[str, np.ndarray], rows: int) -> Message:
    sent = Message(RecordDict({"config": ConfigRecord()}), dst_node_id=1, message_type="train")
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in weights.items()}),
            "metrics": MetricRecord({"num-examples": rows}),
        }
    )
    return Message(content, reply_to=sent)


def test_wilson_intervals_match_the_published_formula() -> None:
    # Wilson (1927): (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
    z, n, p = 1.959963984540054, 16, 13 / 16
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = wilson(13 / 16, 16) or (0.0, 0.0)
    assert low == pytest.approx((centre - half) / (1 + z * z / n))
    assert high == pytest.approx((centre + half) / (1 + z * z / n))
    assert wilson(1.0, 16) is not None and wilson(1.0, 16)[1] == pytest.approx(1.0)  # type: ignore[index]
    assert wilson(None, 16) is None and wilson(0.5, 0) is None


def test_pooled_accuracy_counts_every_nodes_test_rows() -> None:
    pooled = pooled_accuracy([(0.75, 100), (0.5, 10), (None, 30)])
    assert pooled is not None
    accuracy, rows, (low, high) = pooled
    assert rows == 110 and accuracy == pytest.approx(80 / 110)
    assert low < accuracy < high
    assert pooled_accuracy([(None, 5)]) is None


def test_comparison_names_a_winner_only_when_the_intervals_do_not_overlap() -> None:
    names = ("federated", "local-only")
    assert compare((0.6, 0.9), (0.5, 0.8), names) == "intervals overlap"
    assert compare((0.81, 0.9), (0.5, 0.8), names) == "federated higher"
    assert compare((0.2, 0.3), (0.5, 0.8), names) == "local-only higher"
    assert compare(None, (0.5, 0.8), names) == "no interval"
