"""Pinned environments on the real runtime: a node drifted by one package, strict and warn, and reruns."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

from lab.contract.events import Event, Refused, Warned
from lab.contract.results import RunSummary
from lab.core.environment import Environment
from lab.core.spec import load_spec
from lab.runtime.agreements import default_agreements
from lab.runtime.environ import private_environ
from lab.runtime.local import LocalFederation, NodeSpec
from lab.runtime.run import run_settings
from lab.runtime.submit import new_run_dir, submit_run

from .conftest import HEART, ROOT, SILOS, lab_command

pytestmark = [pytest.mark.e2e, pytest.mark.long(160)]

LOCK = ROOT / "environments" / "requirements.lock"
LOCKED_SIX = Environment.from_lock_file(LOCK).packages["six"]
DRIFT = f"six: 1.16.0 here, {LOCKED_SIX} in the lock"


@dataclass(frozen=True)
class Federation:
    final: RunSummary
    events: list[Event]
    tracking_uri: str

    def run(self) -> Any:
        client = MlflowClient(tracking_uri=self.tracking_uri)
        experiment = client.get_experiment_by_name("heart-disease")
        (run,) = client.search_runs([experiment.experiment_id])
        return run

    def weights(self) -> dict[str, np.ndarray]:
        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        version = client.get_model_version_by_alias("heart-disease", "champion")
        location = client.get_model_version_download_uri("heart-disease", version.version)
        path = download_artifacts(artifact_uri=location)
        with np.load(Path(path) / "artifacts" / "bundle" / "weights.npz") as npz:
            return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """six 1.16.0 really installed by pip (the lock pins another version). On a node's PYTHONPATH it
    drifts that node's environment by exactly one package version."""
    target = tmp_path_factory.mktemp("overlay")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-qq", "--no-deps", "--target", str(target), "six==1.16.0"],
        check=True,
        env=private_environ(),
    )
    return target


def federate(workspace: Path, overlay: Path, **settings: Any) -> Federation:
    """Cleveland and Hungary as locked, VA drifted; one round."""
    agreed = default_agreements(workspace, load_spec(HEART / "task.toml"), ["cleveland", "hungary", "va"])
    nodes = [
        NodeSpec("cleveland", SILOS["cleveland"], agreement=agreed["cleveland"]),
        NodeSpec("hungary", SILOS["hungary"], agreement=agreed["hungary"]),
        NodeSpec("va", SILOS["va"], env={"PYTHONPATH": str(overlay)}, agreement=agreed["va"]),
    ]
    tracking_uri = f"sqlite:///{workspace / 'mlflow.db'}"
    config = run_settings(
        load_spec(HEART / "task.toml"),
        tracking_uri=tracking_uri,
        nodes=len(nodes),
        values={"num_rounds": 1, **settings},
        lock=LOCK,
    )
    events: list[Event] = []
    with LocalFederation(workspace, nodes) as federation:
        run_dir = new_run_dir(federation.workspace)
        outcome = submit_run(federation.connection, config, app_dir=ROOT, run_dir=run_dir, on_event=events.append)
    return Federation(RunSummary.of(outcome.final.reported), events, tracking_uri)


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, overlay: Path) -> Iterator[Federation]:
    yield federate(tmp_path_factory.mktemp("strict") / "workspace", overlay)


def test_strict_refuses_the_drifted_node_naming_the_package_and_both_versions(strict: Federation) -> None:
    refused = [e.reason for e in strict.events if isinstance(e, Refused)]
    assert len(refused) == 1
    assert "'va' refused" in refused[0] and DRIFT in refused[0]
    assert [n.node for n in strict.final.nodes] == ["cleveland", "hungary"]
    assert strict.run().data.params["nodes"] == "cleveland,hungary"


def test_run_records_every_nodes_environment_data_and_code_fingerprints(strict: Federation) -> None:
    run = strict.run()
    lock = Environment.from_lock_file(LOCK)
    for node in ("cleveland", "hungary"):
        assert run.data.params[f"node.{node}.env_fingerprint"] == lock.fingerprint
        assert len(run.data.params[f"node.{node}.data_sha256"]) == 64
    assert run.data.params["node.cleveland.train_rows"] == "199"
    assert len(run.data.tags["lab.code.fab_hash"]) == 64
    assert run.data.tags["lab.code.version"] != ""
    client = MlflowClient(tracking_uri=strict.tracking_uri)
    record = json.loads(
        Path(
            download_artifacts(
                run_id=run.info.run_id, artifact_path="nodes/fingerprints.json", tracking_uri=strict.tracking_uri
            )
        ).read_text()
    )
    assert set(record["members"]) == {"cleveland", "hungary"}
    assert any(DRIFT in reason for reason in record["refused"].values())
    assert client.get_run(run.info.run_id).data.params["environment_policy"] == "strict"


def test_warn_aggregates_the_drifted_node_and_flags_the_run(tmp_path: Path, overlay: Path) -> None:
    warn = federate(tmp_path / "workspace", overlay, **{"environment_policy": "warn"})
    assert [n.node for n in warn.final.nodes] == ["cleveland", "hungary", "va"]
    warnings = [e.reason for e in warn.events if isinstance(e, Warned) and "environment" in e.reason]
    assert len(warnings) == 1 and "'va'" in warnings[0] and DRIFT in warnings[0]
    run = warn.run()
    assert run.data.tags["lab.environment_drift"] == "va"
    assert run.data.params["node.va.env_fingerprint"] != Environment.from_lock_file(LOCK).fingerprint


def test_equal_fingerprints_and_seeds_give_the_same_model_bit_for_bit(
    strict: Federation, tmp_path: Path, overlay: Path
) -> None:
    again = federate(tmp_path / "workspace", overlay)
    first, second = strict.run().data.params, again.run().data.params
    fingerprints = [k for k in first if k.startswith("node.") and k.endswith(".data_sha256")]
    for key in [k for k in first if k.startswith("node.") and k not in fingerprints] + ["seed", "spec_sha256"]:
        assert first[key] == second[key], key
    # Each node's data fingerprint is keyed with the secret of its home: other homes, other keys.
    assert fingerprints and all(first[key] != second[key] for key in fingerprints)
    a, b = strict.weights(), again.weights()
    assert a.keys() == b.keys()
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)


def run_lab(*args: str, workspace_uri: str, overlay: Path | None) -> subprocess.CompletedProcess[str]:
    workspace = Path(workspace_uri.removeprefix("sqlite:///")).parent  # the federation's key is in its workspace
    key = str(workspace / "certs" / "federation.pub")
    env = private_environ(MLFLOW_TRACKING_URI=workspace_uri, LAB_FEDERATION_KEY=key, COLUMNS="200")
    if overlay is not None:
        env["PYTHONPATH"] = str(overlay)
    return subprocess.run(
        [*lab_command(), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_rerun_in_a_drifted_environment_is_refused_with_the_diff(strict: Federation, overlay: Path) -> None:
    args = ("evaluate", "--model", "models:/heart-disease@champion", "--data", str(SILOS["cleveland"]), "--json")
    refused = run_lab(*args, workspace_uri=strict.tracking_uri, overlay=overlay)
    assert refused.returncode == 2
    assert DRIFT in refused.stderr and "--allow-env-drift" in refused.stderr
    assert "Traceback" not in refused.stderr
    allowed = run_lab(*args, "--allow-env-drift", workspace_uri=strict.tracking_uri, overlay=overlay)
    assert allowed.returncode == 0, allowed.stderr
    provenance = json.loads(allowed.stdout)["provenance"]
    assert provenance["environment_drift"] == [DRIFT]
    assert provenance["model_environment"] == Environment.from_lock_file(LOCK).fingerprint
    assert provenance["run_environment"] != provenance["model_environment"]
    clean = run_lab(*args, workspace_uri=strict.tracking_uri, overlay=None)
    assert clean.returncode == 0 and json.loads(clean.stdout)["provenance"]["environment_drift"] == []


def test_predict_with_allowed_drift_records_it_next_to_the_output(
    strict: Federation, overlay: Path, tmp_path: Path
) -> None:
    out = tmp_path / "predictions.csv"
    result = run_lab(
        "predict",
        "--model",
        "models:/heart-disease@champion",
        "--data",
        str(SILOS["va"]),
        "--out",
        str(out),
        "--allow-env-drift",
        workspace_uri=strict.tracking_uri,
        overlay=overlay,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(out.with_name("predictions.csv.provenance.json").read_text())
    assert record["environment_drift"] == [DRIFT]
    assert record["rows_scored"] == 130
