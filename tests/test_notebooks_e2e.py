"""The analyst's notebooks, executed as a reader would run them (nbclient, the project's kernel),
each against the demo federation in its own workspace."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from mlflow import MlflowClient
from nbclient import NotebookClient

from .conftest import ROOT, leftover_processes

pytestmark = [pytest.mark.e2e, pytest.mark.long(70)]


def _execute(name: str, workspace: Path) -> str:
    """Run notebook ``name`` top to bottom; what its cells printed. A cell that raises fails the test."""
    notebook = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    os.environ["LAB_WORKSPACE"] = str(workspace)
    try:
        NotebookClient(
            notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
        ).execute()
    finally:
        del os.environ["LAB_WORKSPACE"]
    assert leftover_processes(workspace) == []  # every federation a cell started was stopped
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    return "".join(o.get("text", "") for o in outputs) + "".join(
        json.dumps(o.get("data", {})) for o in outputs if o.get("output_type") in ("execute_result", "display_data")
    )


def test_explore_notebook_shows_the_catalog_preflight_statistics_and_mocks(tmp_path: Path) -> None:
    printed = _execute("explore", tmp_path)
    assert "every hospital's table fits the spec" in printed
    assert "rows pooled; recorded in MLflow run" in printed
    assert "the mock tables fit the spec" in printed
    assert "image/png" in printed  # the histograms were drawn
    assert sorted(p.name for p in (tmp_path / "mocks").iterdir()) == [
        f"{n}.synthetic.csv" for n in ("cleveland", "hungary", "switzerland", "va")
    ]


def test_train_and_compare_notebook_reads_two_runs_back_from_mlflow(tmp_path: Path) -> None:
    printed = _execute("train-and-compare", tmp_path)
    assert "pooled accuracy intervals" in printed
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("heart-disease").experiment_id])
    assert sorted(r.data.params["strategy"] for r in runs) == ["fedavg", "fedprox"]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_value_of_sharing_notebook_values_each_hospital_with_intervals(tmp_path: Path) -> None:
    printed = _execute("value-of-sharing", tmp_path)
    assert "the Shapley values add up to it" in printed
    assert "accuracy over all 254 test rows" in printed  # the four hospitals' test splits
