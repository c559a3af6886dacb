"""What a member reads of a training run: every member's account reads the whole run on the shared
tracking server, so a node's own figures (its row counts, scores, baseline, loss, epsilon and
contribution) are recorded there only where its agreement lets them be shown (``allow.node-figures
= true``), and a figure pooled over the nodes (a mean, the pooled accuracy, the contributions,
which add up to the whole federation's) only where no hidden node's own follows by subtraction.

The lab's own training code (``federation.training.train``) runs here over nodes answering in this
process, into a real MLflow store; the member reads that store as any member would.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lab.contract.events import Event, Joined

from .node import SILOS, SPEC, Node, Nodes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _train(tmp_path: Path, showing: dict[str, bool]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run of two rounds over these nodes, each agreement showing the node's figures or not;
    (the run's summary as the caller gets it, everything a member reads of the MLflow run)."""
    from mlflow import MlflowClient

    from federation.training import train
    from lab.contract.settings import RunSettings
    from lab.registry.tracking import Tracker

    nodes = [
        Node(tmp_path / name, name=name, table=SILOS[name], node_id=11 + i, clauses=(
            ("node-figures = false", f"node-figures = {str(shown).lower()}"),
        ))
        for i, (name, shown) in enumerate(showing.items())
    ]  # fmt: skip
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = replace(
        RunSettings(task_spec=SPEC.text, tracking_uri=store, environment_policy="warn"),
        num_rounds=2,
        local_steps=20,
        baseline_epochs=2,
        contributions=True,
        register=False,
        round_timeout=60.0,
    )
    tracker = Tracker(store, SPEC.name)
    events: list[Event] = []
    grid = Nodes(nodes, run_id=7)
    with grid.coordinating(), tracker.run(run_name="figures", params={}, tags={}):
        summary = train(grid, SPEC, settings, tracker, events.append, "ab" * 32)
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(str(tracker.run_id))
    artifacts = {}
    for path in ("nodes/summary.json", "nodes/fingerprints.json", "contributions/contributions.json"):
        artifacts[path] = json.loads(Path(client.download_artifacts(run.info.run_id, path, str(tmp_path))).read_text())
    read = {"metrics": dict(run.data.metrics), "params": dict(run.data.params), "artifacts": artifacts}
    read["history"] = {k: [m.value for m in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}
    return {"summary": summary, "events": events}, read


def _figures_of(node: str, read: dict[str, Any]) -> list[str]:
    """Every metric and parameter of the run that is the node's own figure (its audit log's length
    and its fingerprints are not figures of its data)."""
    keys = [*read["metrics"], *read["params"]]
    return sorted(
        k
        for k in keys
        if k.startswith(f"node.{node}.")
        and not k.endswith(("audit_entries", "env_fingerprint", "data_sha256"))
        or k.startswith(f"final.node.{node}.")
        or k.endswith(f".{node}")
        and k.startswith("contribution.")
    )


def test_a_nodes_own_figures_are_recorded_only_where_its_agreement_shows_them(tmp_path: Path) -> None:
    told, read = _train(tmp_path, {"cleveland": True, "hungary": False, "va": False})
    # Cleveland's agreement shows its figures: every kind of them is on the run.
    shown = _figures_of("cleveland", read)
    for figure in ("accuracy", "baseline.accuracy", "train_loss", "train_rows", "federated.accuracy_ci95_low"):
        assert any(k.endswith(figure) for k in shown), figure
    assert "contribution.shapley.cleveland" in shown
    # Hungary's and VA's keep theirs: none on the run, in its artifacts, or told to the run's caller.
    for node in ("hungary", "va"):
        assert _figures_of(node, read) == [], node
        assert node not in read["artifacts"]["contributions/contributions.json"]["nodes"]
        assert "train_rows" not in read["artifacts"]["nodes/fingerprints.json"]["members"][node]
        joined = next(e for e in told["events"] if isinstance(e, Joined) and e.node == node)
        assert joined.train_rows is None and joined.test_rows is None
    rows = {row["node"]: row for row in read["artifacts"]["nodes/summary.json"]["nodes"]}
    assert set(rows["hungary"]) == set(rows["va"]) == {"node", "organisation", "held_back"}
    assert "federated" in rows["cleveland"] and rows["cleveland"]["train_rows"] > 0
    assert told["summary"].to_json()["nodes"] == read["artifacts"]["nodes/summary.json"]["nodes"]
    # Two of three keep theirs: the pooled figures give neither away, so they are there.
    assert 0.5 < read["metrics"]["final.federated.accuracy"] <= 1.0
    assert 0.5 < read["metrics"]["final.pooled.federated.accuracy"] <= 1.0
    # The mean score of the model the nodes received in each round, and of the final one; each round's loss.
    assert len(read["history"]["mean.accuracy"]) == 3 and len(read["history"]["train_loss"]) == 2


def test_pooled_figures_that_would_give_a_hidden_nodes_own_are_held_back(tmp_path: Path) -> None:
    # Two nodes: each knows its own, so any pooled figure gives the other's. Hungary keeps its own.
    told, read = _train(tmp_path / "two", {"cleveland": True, "hungary": False})
    assert _figures_of("hungary", read) == []
    pooled = [
        k for k in read["metrics"] if k.startswith(("mean.", "final.federated.", "final.local_only.", "final.pooled."))
    ]
    assert pooled == [] and "train_loss" not in read["metrics"]
    summary = read["artifacts"]["nodes/summary.json"]
    assert summary["pooled"] == {} and "mean.federated.accuracy" in summary["held_back"]
    contributions = read["artifacts"]["contributions/contributions.json"]
    assert "held back" in contributions["unavailable"] and "hungary" in contributions["unavailable"]
    assert "contribution.shapley.cleveland" not in read["metrics"]  # not valued: the nodes were not asked
    # Cleveland's own figures are there all the same.
    assert read["metrics"]["node.cleveland.accuracy"] > 0.5
