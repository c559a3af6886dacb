"""Both node runtimes on the real runtime: the warm worker answers every message of a node in one
process, is restarted when it dies, and keeps nothing of one run for the next; the subprocess
runtime (Flower's process per message, behind the node's gate) still runs a federation."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from mlflow import MlflowClient

from lab.contract.results import RunSummary
from lab.core.spec import load_spec
from lab.node.audit import AuditLog
from lab.runtime.app import app_hash
from lab.runtime.local import LocalFederation
from lab.runtime.run import node_specs, run_settings
from lab.runtime.submit import new_run_dir, submit_run

from .conftest import HEART, ROOT, SILOS, leftover_processes, run_lab

pytestmark = [pytest.mark.e2e, pytest.mark.long(60)]

SPEC = load_spec(HEART / "task.toml")
SHORT = {"num_rounds": 2, "baseline_epochs": 2, "local_steps": 20}


def _run(federation: LocalFederation, **values: Any) -> RunSummary:
    settings = run_settings(
        SPEC,
        tracking_uri=f"sqlite:///{federation.workspace / 'mlflow.db'}",
        nodes=len(federation.nodes),
        values={**SHORT, **values},
    )
    outcome = submit_run(federation.connection, settings, app_dir=ROOT, run_dir=new_run_dir(federation.workspace))
    return RunSummary.of(outcome.final.reported)


def test_a_warm_node_answers_every_message_in_one_worker_and_survives_its_death(tmp_path: Path) -> None:
    tables = {"cleveland": str(SILOS["cleveland"]), "hungary": str(SILOS["hungary"])}
    nodes = node_specs(tables, None, workspace=tmp_path / "workspace", spec=load_spec(HEART / "task.toml"))
    with LocalFederation(tmp_path / "workspace", nodes) as federation:
        workers = {node.site.name: node.worker.popen.pid for node in federation.running if node.worker}
        first = _run(federation)
        assert [n.node for n in first.nodes] == ["cleveland", "hungary"]
        # Every message of the run (prepare, two train, evaluate) went to the same worker per node.
        assert {n.site.name: n.worker.popen.pid for n in federation.running if n.worker} == workers
        for node in federation.running:  # no SuperExec to start a flwr-clientapp per message
            assert node.process is not None
            children = psutil.Process(node.process.popen.pid).children(recursive=True)
            assert not [c for c in children if "superexec" in " ".join(c.cmdline())], node.site.name

        cleveland = next(n for n in federation.running if n.site.name == "cleveland")
        os.kill(workers["cleveland"], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while cleveland.restarts == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert cleveland.restarts == 1 and cleveland.worker is not None
        assert cleveland.worker.popen.pid != workers["cleveland"]

        second = _run(federation, seed=7)  # a new run, answered by the restarted worker
        assert [n.node for n in second.nodes] == ["cleveland", "hungary"]
        assert second.nodes[0].federated != first.nodes[0].federated  # its own run, own seed
        entries = AuditLog(federation.workspace / "nodes" / "cleveland" / "audit.jsonl").entries()
        assert {e["app_hash"] for e in entries} == {app_hash(ROOT)}  # the worker checked the app each time
    assert leftover_processes(tmp_path / "workspace") == []


def test_the_subprocess_runtime_runs_a_federation_behind_the_gate(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    result = run_lab(
        "run",
        "--spec",
        str(HEART / "task.toml"),
        "--node",
        f"cleveland={SILOS['cleveland']}",
        "--node",
        f"va={SILOS['va']}",
        "--rounds",
        "1",
        "--set",
        "baseline-epochs=2",
        "--node-runtime",
        "subprocess",
        workspace=workspace,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    assert int(client.get_model_version_by_alias("heart-disease", "champion").version) == 1
    assert (workspace / "nodes" / "va" / "bin" / "flwr-clientapp").is_file()  # the gate stood in front
    assert not (workspace / "logs" / "node-va-worker.log").exists()
    assert leftover_processes(workspace) == []
