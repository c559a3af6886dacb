"""Analytics attacks: differencing and narrow bins, which per-answer suppression does not stop.

- Differencing: two answers whose row sets differ by one person give that person's values as the
  difference of their sums. The issue's form (ages 20 to 99 as groups, then the same without 77)
  needs groups a request names, which a node no longer takes (rule ``spec``: groups are the spec's
  levels, or bins); its form with bins (ages 40 to 76.5, then 40 to 77.5) is refused by the audit of
  everything the node released (``allow.min-rows``, across answers).
- Narrow bins: histograms with bins like ``[t, t + 1e-9]`` hold one person's value (refused by
  ``limits.min-bin-width``); bins of an allowed width shifted a little from one query to the next
  spell out values from the differences of their cumulative counts (refused by the audit).
- Subtraction: with two nodes, each knows its own figures, so the pooled ones give the other's; with
  every node's own figures shown but one's, the pooled ones minus theirs are its own. Where that
  node's agreement keeps its figures (``allow.node-figures = false``), the coordinator holds the
  pooled figures back.

Each attack is also played against a node started without an agreement, which answers all of it:
there it learns what the issue says it learned.
"""

from __future__ import annotations

import json
from pathlib import Path

from lab.contract.results import StatsAnswer
from lab.core.analytics import StatsRequest

from .node import Node, answer, refused

#: The 77-year-old at Cleveland's cholesterol: what differencing learns where nothing stops it.
CHOL_OF_THE_77_YEAR_OLD = 304.0


def _group_sums(reply: object) -> tuple[list[float | None], list[float | None]]:
    column = answer(reply)["summary"]["columns"]["chol"]  # type: ignore[arg-type]
    return column["n"], column["sum"]


def test_groups_named_by_the_request_are_refused(tmp_path: Path) -> None:
    node = Node(tmp_path / "cleveland")
    # The request, as a coordinator writes it: every age from 20 to 99 its own group.
    request = {"columns": ["chol"], "by": "age", "levels": {"age": [str(a) for a in range(20, 100)]}}
    refused(node.query("stats", json.dumps(request), 1), "spec")
    without_77 = {**request, "levels": {"age": [str(a) for a in range(20, 100) if a != 77]}}
    refused(node.query("stats", json.dumps(without_77), 2), "spec")
    assert [e["asked"]["request"]["levels"]["age"][:2] for e in node.audit()] == [["20", "21"], ["20", "21"]]


def test_differencing_two_answers_is_refused_where_it_would_single_out_the_77_year_old(tmp_path: Path) -> None:
    first = StatsRequest(columns=("chol",), by="age", edges={"age": [40.0, 76.5]})
    second = StatsRequest(columns=("chol",), by="age", edges={"age": [40.0, 77.5]})
    # Where nothing stops it: the middle groups differ by one row, their sums by its cholesterol.
    unbound = Node(tmp_path / "unbound", bound=False)
    (_, sums_a), (_, sums_b) = _group_sums(unbound.stats(first, 1)), _group_sums(unbound.stats(second, 2))
    assert sums_b[1] is not None and sums_a[1] is not None
    assert sums_b[1] - sums_a[1] == CHOL_OF_THE_77_YEAR_OLD
    # The node with the default agreement answers the first and refuses the second.
    node = Node(tmp_path / "cleveland")
    counts, _ = _group_sums(node.stats(first, 1))
    assert counts[1] is not None
    refused(node.stats(second, 2), "allow.min-rows")
    # Asked again, as they were, they change nothing: the first is answered the same.
    assert _group_sums(node.stats(first, 3))[0] == counts


def test_bins_narrow_enough_to_hold_one_value_are_refused(tmp_path: Path) -> None:
    node = Node(tmp_path / "cleveland")
    for t in (200.0, 233.0, 250.0):
        refused(
            node.stats(StatsRequest(columns=("chol",), edges={"chol": [t, t + 1e-9]}), int(t)), "limits.min-bin-width"
        )


def _cumulative(node: Node) -> dict[int, float]:
    """A sweep of histograms whose edges move one mg/dl at a time (each bin 15 mg/dl wide, allowed):
    the count below each threshold the node answered."""
    below: dict[int, float] = {}
    for t in range(200, 281):
        reply = node.stats(StatsRequest(columns=("chol",), edges={"chol": [float(t), t + 15.0]}), t)
        if not reply.has_error():
            count = answer(reply)["summary"]["columns"]["chol"]["counts"][0][0]
            if count is not None:
                below[t] = count
    return below


def _pinned(below: dict[int, float]) -> int:
    """Patients whose value the counts pin down: one more row below t + 1 than below t."""
    return sum(1 for t in below if t + 1 in below and below[t + 1] - below[t] == 1)


def test_shifted_bins_spell_out_no_value(tmp_path: Path) -> None:
    assert _pinned(_cumulative(Node(tmp_path / "unbound", bound=False))) >= 10  # the attack's teeth
    node = Node(tmp_path / "cleveland")
    below = _cumulative(node)
    counts = sorted(below.values())
    assert _pinned(below) == 0
    # No two answered counts differ by fewer rows than the minimum: no small set between them.
    assert all(b - a == 0 or b - a >= 10 for a, b in zip(counts, counts[1:], strict=False))
    refusals = [e for e in node.audit() if e["decision"] == "refused"]
    assert refusals and {e["clause"] for e in refusals} == {"allow.min-rows"}


def _pooled(tmp_path: Path, showing: dict[str, bool]) -> StatsAnswer:
    """The coordinator's stats query (the lab's own code) over nodes in this process, each node's
    agreement allowing its own figures to be shown or not."""
    from dataclasses import replace

    from federation.asking import asker
    from lab.contract.settings import RunSettings
    from lab.queries.stats import KIND
    from lab.registry.tracking import Tracker

    from .node import SILOS, SPEC, Nodes

    nodes = [
        Node(tmp_path / name, name=name, table=SILOS[name], node_id=11 + i, clauses=(
            ("node-figures = false", f"node-figures = {str(shown).lower()}"),
        ))
        for i, (name, shown) in enumerate(showing.items())
    ]  # fmt: skip
    settings = replace(RunSettings(task_spec=SPEC.text, min_nodes=1), round_timeout=60.0)
    grid = Nodes(nodes, run_id=7)
    request = StatsRequest(columns=("age",), edges={"age": [20.0, 50.0, 80.0]})
    with grid.coordinating():
        return KIND.coordinate(
            SPEC, request, settings, asker(grid, SPEC, KIND, settings), Tracker("", SPEC.name), lambda *a, **k: None
        )


def test_pooled_figures_that_would_give_a_hidden_nodes_own_by_subtraction_are_held_back(tmp_path: Path) -> None:
    import pytest

    from lab.errors import RunFailedError

    # Two nodes: each knows its own figures, so the pooled ones give the other's.
    with pytest.raises(RunFailedError, match=r"held back: with 2 node\(s\) pooled.*agreement of cleveland"):
        _pooled(tmp_path / "two", {"cleveland": False, "hungary": True})
    # Every node's figures shown but one's: the pooled ones minus theirs are its own.
    with pytest.raises(RunFailedError, match=r"held back: every other node's figures are shown.*of va keeps"):
        _pooled(tmp_path / "all-but-one", {"cleveland": True, "hungary": True, "va": False})
    # Two of three keep theirs: the pooled figures are given, and only the third's own beside them.
    pooled = _pooled(tmp_path / "two-kept", {"cleveland": True, "hungary": False, "va": False})
    assert set(pooled.node_figures) == {"cleveland"}
    assert pooled.pooled["columns"]["age"]["groups"]["all"]["n"] > 0
    # Where both show their own, two nodes pool as before.
    assert set(_pooled(tmp_path / "both", {"cleveland": True, "hungary": True}).node_figures) == {
        "cleveland",
        "hungary",
    }
