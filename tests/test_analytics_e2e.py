"""Federated analytics on the real runtime: pooled figures equal the concatenated tables, small
counts never leave a node, and a node's own figures are shown only where its agreement allows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from lab.core.analytics import stats_frame
from lab.core.data import load_table
from lab.node.audit import AuditLog
from lab.workbench import Workbench

from .conftest import HEART, SILOS, agreement_file

pytestmark = pytest.mark.e2e

NODES = ("cleveland", "hungary", "switzerland", "va")


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory, heart_spec: Any) -> tuple[Path, dict[str, Any]]:
    """Cleveland lets its own figures be shown; Hungary and Switzerland do not (the template's
    default); VA's agreement lets no analytics out."""
    tmp = tmp_path_factory.mktemp("analytics")

    def agreement(node: str, *replacements: tuple[str, str]) -> Path:
        return agreement_file(tmp, heart_spec, node, *replacements, node_figures=False)

    agreements = {
        "cleveland": agreement("cleveland", ("node-figures = false", "node-figures = true")),
        "hungary": agreement("hungary"),
        "switzerland": agreement("switzerland"),
        "va": agreement("va", (', "analytics"]', "]")),
    }
    workspace = tmp / "workspace"
    bench = Workbench.local(
        {name: SILOS[name] for name in NODES},
        spec=HEART / "task.toml",
        agreements=agreements,
        workspace=workspace,
        progress=False,
    )
    result = bench.stats(["age", "chol"], by="exang", crosstab=("cp", "restecg"), correlation=True)
    assert result.moments.loc[("age", "all"), "n"] == result.answer.pooled["columns"]["age"]["groups"]["all"]["n"]
    return workspace, result


def _concatenated(spec: Any, nodes: tuple[str, ...]) -> pd.DataFrame:
    """What pooling the rows would give: the test may read every silo, the federation may not."""
    return pd.concat([stats_frame(load_table(SILOS[n], spec, node=n), spec) for n in nodes], ignore_index=True)


def test_pooled_statistics_equal_those_of_the_concatenated_tables(analysed, heart_spec) -> None:
    _, result = analysed
    stats = result.answer.pooled
    assert stats["nodes"] == ["cleveland", "hungary", "switzerland"]  # VA refused
    rows = _concatenated(heart_spec, ("cleveland", "hungary", "switzerland"))
    for column in ("age", "chol"):
        overall = stats["columns"][column]["groups"]["all"]
        assert overall["n"] == len(rows) and not overall["incomplete"]
        assert overall["mean"] == pytest.approx(rows[column].mean(), rel=1e-12)
        assert overall["sd"] == pytest.approx(rows[column].std(ddof=1), rel=1e-9)
        # Every node has 17 or more rows in each exang group, so no group is held back.
        for group, part in rows.groupby(rows["exang"].astype(int).astype(str)):
            figures = stats["columns"][column]["groups"][group]
            assert not figures["incomplete"] and figures["n"] == len(part)
            assert figures["mean"] == pytest.approx(part[column].mean(), rel=1e-12)
            assert figures["sd"] == pytest.approx(part[column].std(ddof=1), rel=1e-9)
    expected = rows[["age", "chol"]].astype(float).corr().to_numpy()
    assert np.allclose(stats["correlation"]["matrix"], expected, atol=1e-12)


def test_small_cells_are_suppressed_at_the_node_and_audited(analysed, heart_spec) -> None:
    workspace, result = analysed
    swiss = stats_frame(load_table(SILOS["switzerland"], heart_spec, node="switzerland"), heart_spec)
    raw = pd.crosstab(swiss["cp"], swiss["restecg"]).reindex(index=[1, 2, 3, 4], columns=[0, 1, 2], fill_value=0)
    small = (raw.to_numpy() > 0) & (raw.to_numpy() < 5)
    assert small.any()
    # Every cell where Switzerland held a small count back is flagged in the pooled crosstab.
    incomplete = np.array(result.answer.pooled["crosstab"]["incomplete"])[:4, :3]
    assert incomplete[small].all()
    assert any("crosstab cp x restecg" in note for note in result.notes["switzerland"])
    entries = [e for e in AuditLog(workspace / "nodes" / "switzerland" / "audit.jsonl").entries()]
    stats_entries = [e for e in entries if e["message_type"] == "query.stats"]
    assert stats_entries and all(e["decision"] == "accepted" for e in stats_entries)
    assert "crosstab cp x restecg" in stats_entries[-1]["suppressed"]


def test_a_node_whose_agreement_lets_no_analytics_out_refuses(analysed) -> None:
    workspace, _ = analysed
    entries = AuditLog(workspace / "nodes" / "va" / "audit.jsonl").entries()
    assert entries and {(e["decision"], e["clause"]) for e in entries} == {("refused", "allow.outputs")}


def test_per_node_figures_only_where_the_agreement_allows_and_all_is_recorded(analysed) -> None:
    workspace, result = analysed
    assert set(result.answer.node_figures) == {"cleveland"}
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    pooled_age = result.answer.pooled["columns"]["age"]["groups"]["all"]
    assert run.data.metrics["stats.age.all.mean"] == pytest.approx(pooled_age["mean"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "analytics")}
    assert {"analytics/pooled.json", "analytics/histograms.png", "analytics/nodes.json"} <= artifacts
    shown = json.loads(Path(client.download_artifacts(run.info.run_id, "analytics/nodes.json")).read_text())
    assert set(shown) == {"cleveland"}
