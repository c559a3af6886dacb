"""Two representative cases of the task matrix on the deployment runtime, through `lab run`.

A multiclass task whose classes are text, one node reading its rows from a real PostgreSQL server
(its password in a file, never in a command line, a log or MLflow), and a regression task with a
target in the thousands, one node in SQLite and one a cp1252 export with ``;`` (its format named
in the spec's table for that node). Each registers a model that `lab predict` and `lab evaluate`
apply in-house.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from .conftest import leftover_processes, run_lab
from .postgres import postgres_server
from .task_matrix import CLASSES, Case, floor, spec_text, typed_frame, write_node

pytestmark = [pytest.mark.e2e, pytest.mark.long(75)]

# These runs are about the data's paths (a database, text classes, a target in thousands) and an
# in-house rerun equal to the record to 1e-6: their nodes release exact scores (--no-agreement);
# what an agreement's noise and limits do is tests/attacks' and the federation test's.
SHORT = ("--rounds", "2", "--set", "local-steps=40", "--set", "batch-size=8", "--set", "baseline-epochs=3",
         "--no-agreement")  # fmt: skip


@dataclass(frozen=True)
class Run:
    case: Case
    workspace: Path
    stdout: str
    stderr: str
    returncode: int
    nodes: dict[str, str]

    @property
    def model(self) -> str:
        return f"models:/matrix-{self.case.name}@champion"

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=f"sqlite:///{self.workspace / 'mlflow.db'}")

    def recorded(self) -> dict[str, float]:
        version = self.client.get_model_version_by_alias(f"matrix-{self.case.name}", "champion")
        return self.client.get_run(version.run_id).data.metrics


def lab_run(case: Case, spec: Path, nodes: dict[str, str], workspace: Path) -> Run:
    args = ["run", "--spec", str(spec), *SHORT]
    for name, source in nodes.items():
        args += ["--node", f"{name}={source}"]
    result = run_lab(*args, workspace=workspace)
    return Run(case, workspace, result.stdout, result.stderr, result.returncode, nodes)


@pytest.fixture(scope="module")
def multiclass(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Run, str]]:
    """Classes "low", "medium", "high"; site-a holds a CSV, site-b a PostgreSQL table."""
    case = Case("multiclass", "string", "drop-row", "csv-header", "linear", nodes=2)
    folder = tmp_path_factory.mktemp("multiclass")
    spec = folder / "task.toml"
    spec.write_text(spec_text(case))
    with postgres_server() as server:
        server.load("agency", "records", typed_frame(case, 1))
        nodes = {"site-a": write_node(case, 0, folder), "site-b": server.url("agency", table="records")}
        run = lab_run(case, spec, nodes, folder / "workspace")
        yield run, server.password


@pytest.fixture(scope="module")
def regression(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Costs in the thousands; site-a holds a SQLite table, site-b a cp1252 export with ';'."""
    case = Case("regression", "float", "impute", "sqlite", "mlp", nodes=2, accented=True)
    folder = tmp_path_factory.mktemp("regression")
    export = Path(write_node(replace(case, file_format="cp1252"), 1, folder)).rename(folder / "site-b-export.csv")
    spec = folder / "task.toml"
    spec.write_text(spec_text(case) + '\n[nodes.site-b]\nencoding = "cp1252"\ndelimiter = ";"\n')
    nodes = {"site-a": write_node(case, 0, folder), "site-b": str(export)}
    return lab_run(case, spec, nodes, folder / "workspace")


def test_a_multiclass_task_with_text_classes_registers_and_predicts_its_classes(
    multiclass: tuple[Run, str], tmp_path: Path
) -> None:
    run, _ = multiclass
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"models:/matrix-{run.case.name}@champion" in run.stdout
    out = tmp_path / "predictions.csv"
    predicted = run_lab(
        "predict", "--model", run.model, "--data", run.nodes["site-a"], "--out", str(out), workspace=run.workspace
    )
    assert predicted.returncode == 0, predicted.stderr
    frame = pd.read_csv(out)
    assert set(frame["prediction"].dropna()) <= set(CLASSES["string"])
    assert [c for c in frame.columns if c.startswith("probability.")] == [f"probability.{c}" for c in CLASSES["string"]]


def test_a_node_reading_postgresql_matches_its_record_in_house(multiclass: tuple[Run, str]) -> None:
    run, _ = multiclass
    evaluated = run_lab(
        "evaluate", "--model", run.model, "--data", run.nodes["site-b"], "--json", workspace=run.workspace
    )
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)["metrics"]
    recorded = run.recorded()
    for name in ("accuracy", "loss"):
        assert metrics[name] == pytest.approx(recorded[f"node.site-b.{name}"], abs=1e-6)


def test_the_database_password_is_never_written_down(multiclass: tuple[Run, str]) -> None:
    run, password = multiclass
    assert password not in run.stdout + run.stderr
    for path in run.workspace.rglob("*"):
        if path.is_file() and path.suffix in (".log", ".toml", ".jsonl", ".json", ".txt", ".db"):
            assert password.encode() not in path.read_bytes(), path
    version = run.client.get_model_version_by_alias(f"matrix-{run.case.name}", "champion")
    logged = run.client.get_run(version.run_id).data
    assert password not in json.dumps({**logged.params, **logged.tags})


def test_a_regression_target_in_thousands_learns_and_predicts_in_its_units(regression: Run, tmp_path: Path) -> None:
    assert regression.returncode == 0, regression.stdout + regression.stderr
    metric, least = floor(regression.case)
    recorded = regression.recorded()
    assert min(recorded[f"node.{n}.{metric}"] for n in regression.nodes) >= least
    out = tmp_path / "costs.parquet"
    predicted = run_lab(
        "predict",
        "--model",
        regression.model,
        "--data",
        regression.nodes["site-b"],
        "--node",
        "site-b",
        "--out",
        str(out),
        workspace=regression.workspace,
    )
    assert predicted.returncode == 0, predicted.stderr
    costs = pd.read_parquet(out)["prediction"].dropna()
    assert 2000 < costs.median() < 8000  # euros, not standardised units
    evaluated = run_lab(
        "evaluate",
        "--model",
        regression.model,
        "--data",
        regression.nodes["site-a"],
        "--json",
        workspace=regression.workspace,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)["metrics"]
    for name in ("rmse", "r2"):
        assert metrics[name] == pytest.approx(recorded[f"node.site-a.{name}"], abs=1e-6)


def test_nothing_is_left_running(multiclass: tuple[Run, str], regression: Run) -> None:
    assert leftover_processes(multiclass[0].workspace) == []
    assert leftover_processes(regression.workspace) == []
