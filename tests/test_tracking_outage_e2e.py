"""The tracking store going away in the middle of a run, for a few seconds or for good, on the real
runtime with MLflow's own tracking server (its own federation: a node that lived through the
coordinator faults of test_faults_e2e can answer a message late, see the README's "When things
break")."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from lab.core.spec import load_spec
from lab.registry.checkpoints import ROUND_TAG
from lab.runtime.local import LocalFederation
from lab.runtime.run import node_specs, run_settings

from .conftest import HEART, SILOS, leftover_processes
from .test_faults_e2e import _in_background, checkpointed_run

pytestmark = [pytest.mark.e2e, pytest.mark.long(130)]

SPEC = load_spec(HEART / "task.toml")
NAMES = ("cleveland", "hungary", "va")


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    workspace = tmp_path_factory.mktemp("outage") / "workspace"
    nodes = node_specs(
        {n: str(SILOS[n]) for n in NAMES}, None, workspace=workspace, spec=load_spec(HEART / "task.toml")
    )
    with LocalFederation(workspace, nodes) as running:
        yield running
    assert leftover_processes(workspace) == []


def _settings(federation: LocalFederation, uri: str, **values: Any) -> Any:
    return replace(run_settings(SPEC, tracking_uri=uri, nodes=len(NAMES), values=values), tracking_uri=uri)


def _tracking_server(folder: Path, port: int) -> Any:
    """MLflow's own tracking server on loopback at ``port``, its store in ``folder``."""
    from lab.runtime.environ import private_environ
    from lab.runtime.processes import LOOPBACK, executable, start_logged

    argv = [
        executable("mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"), "--host", LOOPBACK, "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    server = start_logged("tracking", argv, env=private_environ(), log_path=folder / "server.log", cwd=folder)
    server.wait_listening(port, timeout=180.0)
    return server


def test_the_tracking_store_going_away_for_seconds_or_for_good(federation: LocalFederation, tmp_path: Path) -> None:
    from lab.registry.runs import close_orphans
    from lab.runtime.processes import free_port, stop_trees

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _tracking_server(tmp_path, port)
    # No node is meant to miss a reply here: the round timeout only bounds a loaded machine's slowness.
    values = {"baseline_epochs": 2, "local_steps": 300, "round_timeout": 180, "num_rounds": 3, "tracking_timeout": 60}
    try:
        # Away for a few seconds in the middle of the run: MLflow's retries carry the run over.
        settings = _settings(federation, uri, **values)
        thread, outcome = _in_background(federation, settings)
        client = MlflowClient(tracking_uri=uri)
        checkpointed_run(uri, 1, outcome)
        stop_trees([server], grace=0)
        time.sleep(5)
        server = _tracking_server(tmp_path, port)
        thread.join(timeout=300)
        assert "result" in outcome, outcome
        run_id = outcome["result"].mlflow_run_id
        assert client.get_run(run_id).info.status == "FINISHED"
        for name in NAMES:  # the record is complete: every round of every node
            assert sorted(m.step for m in client.get_metric_history(run_id, f"node.{name}.train_loss")) == [1, 2, 3]
        assert client.get_run(run_id).data.tags[ROUND_TAG] == "3"
        assert len(client.search_model_versions(f"run_id = '{run_id}'")) == 1

        # Away for good: the run fails within its tracking-timeout, and nothing is registered.
        settings = _settings(federation, uri, **{**values, "tracking_timeout": 5})
        thread, outcome = _in_background(federation, settings)
        lost = checkpointed_run(uri, 1, outcome)
        stop_trees([server], grace=0)
        thread.join(timeout=300)  # a guard against a hang: each call to the store waits its timeout
        assert "could not be reached for 5 s (tracking-timeout)" in outcome.get("error", ""), outcome
        # The record as the server keeps it, read from its own store (no server to start a third time).
        store = f"sqlite:///{tmp_path / 'mlflow.db'}"
        client = MlflowClient(tracking_uri=store)
        assert client.get_run(lost).info.status == "RUNNING"  # no one could close it
        assert client.search_model_versions(f"run_id = '{lost}'") == []  # nothing half-registered
        assert lost in close_orphans(store)  # `lab runs --clean`: its coordinator is gone
        assert client.get_run(lost).info.status == "KILLED"
    finally:
        stop_trees([server], grace=5)
