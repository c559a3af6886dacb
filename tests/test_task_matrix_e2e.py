"""The task matrix end to end: every case trains, is registered, and reruns in a new process.

The lab's own ServerApp and ClientApp run each case through preparation, training, evaluation,
packaging and registration on the in-process runtime (benchmarks/inprocess.py): the ServerApp's
``main`` on a Flower Grid that hands each message, serialised as on the wire, to the ClientApp of
its node in the same process, each case in a process of its own, two at a time. What the matrix
checks is the apps' handling of every kind of task and table, not Flower's transport, which the
deployment tests cover; no Ray cluster has to start in time. Then one new Python process loads
every registered model with plain MLflow, predicts on each node's raw table, and reruns the
evaluation in-house (tests/matrix_rerun.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from mlflow import MlflowClient

from lab.core.spec import load_spec
from lab.registry.signing import PRIVATE_KEY_FILE
from lab.runtime.environ import private_environ
from lab.runtime.security import make_federation_key

from .conftest import ROOT
from .task_matrix import CASES, Case, floor, write_case

# Still minutes on two cores (13 runs two at a time, then the reruns), so started first (conftest.py).
pytestmark = [pytest.mark.e2e, pytest.mark.long(50)]

DIABETES = ROOT / "data" / "diabetes"
DIABETES_NODES = {name: str(DIABETES / f"{name}.csv") for name in ("clinic-north", "clinic-south", "clinic-east")}

#: Short runs: three rounds of 40 local steps, a short local-only baseline.
SETTINGS = {
    "num_rounds": 3,
    "local_steps": 40,
    "batch_size": 8,
    "learning_rate": 0.05,
    "baseline_epochs": 3,
    "seed": 1,
    "register": True,
}


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Every case run on the in-process runtime, then rerun in one new process."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import inprocess

    folder = tmp_path_factory.mktemp("matrix")
    tracking = f"sqlite:///{folder / 'mlflow.db'}"
    public_key = make_federation_key(folder / "certs")  # the federation's: its models are signed with it
    jobs = []
    for case in CASES:
        spec, nodes = write_case(case, folder / case.name)
        jobs.append(
            {
                "case": case.name,
                "spec": str(spec),
                "nodes": nodes,
                "settings": SETTINGS,
                "workdir": str(folder / "runs" / case.name),
                "keep_going": True,
                "signing_key": str(public_key.with_name(PRIVATE_KEY_FILE)),
            }
        )
    jobs.append(  # the public regression table, with the demo's default settings
        {
            "case": "diabetes",
            "spec": str(DIABETES / "task.toml"),
            "nodes": list(DIABETES_NODES.items()),
            "settings": {"seed": 42},
            "workdir": str(folder / "runs" / "diabetes"),
            "keep_going": True,
        }
    )
    results = {r["case"]: r for r in inprocess.run_jobs(jobs, 2, lambda _: None, tracking_uri=tracking)}
    plan = folder / "rerun.json"
    plan.write_text(
        json.dumps(
            [
                {
                    "case": r["case"],
                    "spec": r["spec"],
                    "nodes": r["nodes"],
                    "model": f"models:/matrix-{r['case']}@champion",
                }
                for r in results.values()
                if "error" not in r and r["case"] != "diabetes"  # not registered: compared below instead
            ]
        )
    )
    rerun = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "matrix_rerun.py"), str(plan), tracking, str(public_key)],
        capture_output=True,
        text=True,
        env=private_environ(),
        timeout=900,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    reruns = {r["case"]: r for r in json.loads(rerun.stdout.strip().splitlines()[-1])}
    yield {"results": results, "reruns": reruns, "tracking": tracking}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_case_trains_registers_and_reruns_in_house(case: Case, matrix: dict[str, Any]) -> None:
    result = matrix["results"][case.name]
    assert "error" not in result, result.get("error")
    final = result["final"]
    assert final["event"] == "done"
    client = MlflowClient(tracking_uri=matrix["tracking"])
    version = client.get_model_version_by_alias(f"matrix-{case.name}", "champion")
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"

    metric, least = floor(case)
    assert final["mean"][f"federated.{metric}"] >= least  # the model learned the rule behind the rows

    rerun = matrix["reruns"][case.name]
    for node, seen in rerun["nodes"].items():
        assert seen["columns"] == seen["declared"]  # the columns its signature declares
        assert seen["predictions"] == seen["raw_rows"]  # one output row per raw row, in order
        assert seen["scored"] == seen["kept_rows"]  # empty only where the spec drops the row
        recorded = run.data.metrics
        for name, value in seen["metrics"].items():
            assert value == pytest.approx(recorded[f"node.{node}.{name}"], abs=1e-6), (node, name)


def test_federated_regression_on_a_public_table_is_within_005_of_the_pooled_model(matrix: dict[str, Any]) -> None:
    """The diabetes table in three sites (data/diabetes/), FedAvg with the demo's settings, against
    one model trained on every site's training rows by the lab's own code (mean R² over the sites'
    test splits)."""
    import importlib.util

    result = matrix["results"]["diabetes"]
    assert "error" not in result, result.get("error")
    federated = result["final"]["mean"]["federated.r2"]
    loaded = importlib.util.spec_from_file_location("bench_quality", ROOT / "benchmarks" / "quality.py")
    assert loaded is not None and loaded.loader is not None
    quality = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(quality)
    pooled = quality.pooled_scores(load_spec(DIABETES / "task.toml"), DIABETES_NODES, seed=42)
    reference = sum(m["r2"] for m in pooled.values()) / len(pooled)
    assert reference > 0.45  # the table's known linear fit
    assert abs(federated - reference) <= 0.05, (federated, reference)
