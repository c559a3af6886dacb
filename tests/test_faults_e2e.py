"""Faults on the real runtime: a node that dies in the middle of a round, and a coordinator that
dies in the middle of a run (its ServerApp, or its SuperLink) and is resumed from its last
checkpoint."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from mlflow import MlflowClient

from lab.contract.events import Event, Started
from lab.core.spec import load_spec
from lab.errors import LabError
from lab.node.ledger import Ledger
from lab.registry.checkpoints import ROUND_TAG, Checkpoint, resumable
from lab.registry.runs import KILLED_REASON, RESUMED_BY, list_runs
from lab.runtime.local import LocalFederation
from lab.runtime.run import node_specs, run_on, run_settings

from .conftest import HEART, SILOS, leftover_processes, run_lab

pytestmark = [pytest.mark.e2e, pytest.mark.long(60)]

SPEC = load_spec(HEART / "task.toml")
NAMES = ("cleveland", "hungary", "va")
#: Enough local steps that a node is still training when the test kills it (about a second).
SLOW = {"baseline_epochs": 2, "local_steps": 1000, "round_timeout": 30}  # 1000: the default limit


@pytest.fixture
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    """A federation for each test: the tests take minutes each, and with one of their own they
    can run on different workers at once (tests/conftest.py)."""
    workspace = tmp_path_factory.mktemp("faults") / "workspace"
    nodes = node_specs({n: str(SILOS[n]) for n in NAMES}, None, workspace=workspace, spec=SPEC)
    with LocalFederation(workspace, nodes, secure=True) as running:
        yield running
    assert leftover_processes(workspace) == []


@pytest.fixture
def own_federation(tmp_path: Path) -> Iterator[LocalFederation]:
    """A federation of its own: a test that kills the SuperLink must not meet nodes that earlier
    faults left answering a stopped run's message late (the README's "When things break")."""
    nodes = node_specs({n: str(SILOS[n]) for n in NAMES}, None, workspace=tmp_path / "workspace", spec=SPEC)
    with LocalFederation(tmp_path / "workspace", nodes, secure=True) as running:
        yield running
    assert leftover_processes(tmp_path / "workspace") == []


def _uri(federation: LocalFederation) -> str:
    return f"sqlite:///{federation.workspace / 'mlflow.db'}"


def _settings(federation: LocalFederation, **values: Any) -> Any:
    return run_settings(SPEC, tracking_uri=_uri(federation), nodes=len(NAMES), values=values)


def _node(federation: LocalFederation, name: str) -> Any:
    return next(n for n in federation.running if n.site.name == name)


def _answering(federation: LocalFederation, name: str, kind: str) -> int:
    """How many messages of ``kind`` the node's worker has begun to answer."""
    log = federation.logs / f"node-{name}-worker.log"
    return log.read_text(errors="replace").count(f"answering a {kind} message") if log.exists() else 0


def _when(condition: Any, what: str, timeout: float = 300) -> None:
    """Wait for ``condition``: a bound on waiting, not a timing (a loaded machine, three federations
    at once on two cores, takes minutes to start a run)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _in_background(federation: LocalFederation, settings: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Start a run on a thread; its ``outcome`` gets its MLflow run id once the run has started,
    then its ``result`` or ``error`` when it ends."""
    outcome: dict[str, Any] = {}

    def started(event: Event) -> None:
        if isinstance(event, Started) and event.mlflow_run_id:
            outcome["mlflow_run_id"] = event.mlflow_run_id

    def go() -> None:
        try:
            outcome["result"] = run_on(
                federation.connection, settings, workspace=federation.workspace, on_event=started
            )
        except LabError as exc:
            outcome["error"] = str(exc)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, outcome


def _serverapp(federation: LocalFederation) -> psutil.Process:
    """The run's ServerApp: forked by the coordinator's SuperExec (lab.runtime.superexec)."""
    assert federation.coordinator.superexec is not None
    found = [p for p in psutil.Process(federation.coordinator.superexec.popen.pid).children() if _alive(p)]
    assert len(found) == 1, found
    return found[0]


def _alive(process: psutil.Process) -> bool:
    try:  # an earlier run's ServerApp may linger as a zombie until reaped
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def checkpointed_run(tracking_uri: str, server_round: int, outcome: dict[str, Any]) -> str:
    """Wait until the run started by ``_in_background`` (its ``outcome``) has checkpointed round
    ``server_round`` in the store at ``tracking_uri``; its MLflow run id. The store is read only
    once the run has started (its coordinator makes a new store's tables, and two processes making
    them at once collide). A run that ends first fails the wait at once, with its error."""

    def checkpointed() -> bool:
        ended = {key: outcome[key] for key in ("result", "error") if key in outcome}
        assert not ended, f"the run ended before round {server_round}'s checkpoint: {ended}"
        run_id = outcome.get("mlflow_run_id")  # MlflowClient opens the store: only once it is made
        return (
            bool(run_id) and int(MlflowClient(tracking_uri).get_run(run_id).data.tags.get(ROUND_TAG, 0)) >= server_round
        )

    _when(checkpointed, f"round {server_round}'s checkpoint")
    return str(outcome["mlflow_run_id"])


def _killed_after_round(federation: LocalFederation, settings: Any, server_round: int) -> tuple[str, dict[str, Any]]:
    """Start a run, SIGKILL its ServerApp once round ``server_round`` is checkpointed; its MLflow run id."""
    thread, outcome = _in_background(federation, settings)
    run_id = checkpointed_run(_uri(federation), server_round, outcome)
    _serverapp(federation).kill()
    flower_run = MlflowClient(tracking_uri=_uri(federation)).get_run(run_id).data.tags["flwr.run_id"]
    federation.connection.flwr_json(["stop", flower_run], federation.workspace / "flwr-home", what="stopping")
    thread.join(timeout=60)
    return run_id, outcome


def _resume(federation: LocalFederation, run_id: str) -> Any:
    settings = resumable(_uri(federation), run_id).settings_for(tracking_uri=_uri(federation), expected_nodes=3)
    return run_on(federation.connection, settings, workspace=federation.workspace)


@pytest.mark.long(100)
def test_a_run_whose_coordinator_was_killed_resumes_to_the_same_model_bit_for_bit(
    federation: LocalFederation,
) -> None:
    values = {"num_rounds": 3, "strategy": "fedadam", "baseline_epochs": 2, "local_steps": 60, "seed": 11}
    reference = run_on(federation.connection, _settings(federation, **values), workspace=federation.workspace)

    run_id, _ = _killed_after_round(federation, _settings(federation, **values), 1)
    # `lab run` marked the run FAILED as its coordinator vanished; a crash of the whole coordinator
    # host leaves it RUNNING instead, until `lab runs --clean` (or the next run) finds it.
    client = MlflowClient(tracking_uri=_uri(federation))
    client.update_run(run_id, status="RUNNING")
    cleaned = run_lab("runs", "--clean", workspace=federation.workspace)
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"marked run {run_id} KILLED" in " ".join(cleaned.stdout.split())
    assert client.get_run(run_id).info.status == "KILLED"
    assert "stopped without closing the run" in client.get_run(run_id).data.tags[KILLED_REASON]
    rows = {row.run_id: row for row in list_runs(_uri(federation))}
    assert rows[run_id].resumable and rows[run_id].rounds_done is not None and rows[run_id].rounds_done >= 1

    resumed = _resume(federation, run_id)
    assert resumed.mlflow_run_id == run_id  # the same MLflow run goes on
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert "lab.resumed_by.flwr.run_id" in run.data.tags
    for server_round in (2, 3):  # both after the resume, the server's Adam state carried over
        mine = Checkpoint.load(_uri(federation), run_id, server_round)
        theirs = Checkpoint.load(_uri(federation), reference.mlflow_run_id, server_round)
        assert mine.weights.keys() == theirs.weights.keys()
        for key, array in mine.weights.items():
            assert array.dtype == theirs.weights[key].dtype
            assert array.tobytes() == theirs.weights[key].tobytes(), key  # bit for bit
        assert {k: {n: v.tobytes() for n, v in s.items()} for k, s in mine.optimiser.items()} == {
            k: {n: v.tobytes() for n, v in s.items()} for k, s in theirs.optimiser.items()
        }
        assert set(mine.optimiser) == {"m_t", "v_t"}
    versions = client.search_model_versions(f"name = '{SPEC.name}' and run_id = '{run_id}'")
    assert len(versions) == 1  # registered once
    again = run_lab("run", "--resume", run_id, "--node", f"va={SILOS['va']}", workspace=federation.workspace)
    assert again.returncode == 2, again.stderr
    assert f"run {run_id} finished; there is nothing to resume" in " ".join(again.stderr.split())
    # The same model, so the same scores, each released with noise: within it of the reference's.
    for key, value in reference.summary.mean.items():
        assert resumed.summary.mean[key] == pytest.approx(value, abs=0.25, nan_ok=True), key


@pytest.mark.long(65)
def test_a_private_run_resumes_without_spending_its_rounds_again(federation: LocalFederation) -> None:
    # A target every node's default agreement allows (at most 10 a run): each plans its own noise.
    values = {"num_rounds": 3, "baseline_epochs": 2, "local_steps": 50, "dp_target_epsilon": 5.0}
    run_id, _ = _killed_after_round(federation, _settings(federation, **values), 1)
    tags = MlflowClient(tracking_uri=_uri(federation)).get_run(run_id).data.tags
    first_flower_run = int(tags["flwr.run_id"])
    resumed = _resume(federation, run_id)
    resumed_flower_run = int(MlflowClient(tracking_uri=_uri(federation)).get_run(run_id).data.tags[RESUMED_BY])
    assert all(row.epsilon is not None for row in resumed.summary.nodes)
    for name in NAMES:
        ledger = Ledger(federation.workspace / "nodes" / name / "privacy.jsonl")
        attempts = (first_flower_run, resumed_flower_run)
        mine = [e for e in ledger.entries() if e["kind"] == "training" and int(e["run_id"]) in attempts]
        assert sorted({e["round"] for e in mine}) == [1, 2, 3], name  # every round, none beyond the plan
        trained = len(mine)  # a round the killed coordinator never kept is trained, and counted, twice
        assert trained in (3, 4), mine
        # Each attempt prepared anew: a booking of its own, under a key the node drew, whose spending
        # adds to the other's (the resume is not booked under the run id the coordinator names).
        bookings = {e["key"]: int(e["run_id"]) for e in mine}
        assert sorted(bookings.values()) == sorted(attempts)
        runs = ledger.runs()
        total = sum(runs[key]["epsilon"] for key in bookings)
        assert ledger.spent() >= total > max(runs[key]["epsilon"] for key in bookings)
        resumed_key = next(key for key, flower_run in bookings.items() if flower_run == resumed_flower_run)
        assert resumed.summary.node(name).epsilon == pytest.approx(runs[resumed_key]["epsilon"])


@pytest.mark.long(45)
def test_a_node_killed_mid_round_is_left_out_of_that_round_and_takes_part_again(
    federation: LocalFederation,
) -> None:
    before = {name: _answering(federation, name, "train") for name in NAMES}
    # Rounds 3 and 4 wait for the restarted node and worker (no reply is lost but the killed ones'):
    # the timeout only bounds how long a loaded machine may take to start them again and train (a
    # restarted worker's first 1000 steps took over 300 s once, beside the deployment tests).
    values = {**SLOW, "num_rounds": 4, "round_timeout": 900}
    thread, outcome = _in_background(federation, _settings(federation, **values))
    cleveland, hungary = _node(federation, "cleveland"), _node(federation, "hungary")
    restarts = cleveland.restarts, hungary.restarts

    # Round 2: cleveland's SuperNode dies while its worker trains; the node restarts on its own.
    _when(lambda: _answering(federation, "cleveland", "train") == before["cleveland"] + 2, "cleveland's round 2")
    os.kill(cleveland.process.popen.pid, signal.SIGKILL)
    # Round 3: the process answering hungary's message dies; the node starts another.
    _when(lambda: _answering(federation, "hungary", "train") == before["hungary"] + 3, "hungary's round 3")
    os.kill(hungary.worker.popen.pid, signal.SIGKILL)

    thread.join(timeout=3600)
    assert "result" in outcome, outcome
    result = outcome["result"]
    assert [n.node for n in result.summary.nodes] == list(NAMES)
    assert cleveland.restarts > restarts[0] and hungary.restarts > restarts[1]

    client = MlflowClient(tracking_uri=_uri(federation))
    run_id = result.mlflow_run_id
    steps = {
        name: sorted(m.step for m in client.get_metric_history(run_id, f"node.{name}.train_loss")) for name in NAMES
    }
    # Each node took part again from the next round: cleveland's restarted SuperNode, and
    # hungary's SuperNode, whose new worker answered the message the killed one left.
    assert steps == {"cleveland": [1, 3, 4], "hungary": [1, 2, 4], "va": [1, 2, 3, 4]}
    missing = {(m.step, m.value) for m in client.get_metric_history(run_id, "refused_nodes")}
    assert missing == {(2, 1.0), (3, 1.0)}
    refusals = json.loads(Path(client.download_artifacts(run_id, "nodes/refusals-in-rounds.json")).read_text())
    assert {(r["round"], r["node"]) for r in refusals} == {(2, "cleveland"), (3, "hungary")}
    assert "dropped" in next(r["reason"] for r in refusals if r["node"] == "cleveland")
    assert "worker stopped while answering" in next(r["reason"] for r in refusals if r["node"] == "hungary")


@pytest.mark.long(55)
def test_a_run_whose_superlink_was_killed_resumes_once_the_coordinator_is_back(
    own_federation: LocalFederation,
) -> None:
    federation = own_federation
    values = {"num_rounds": 3, "baseline_epochs": 2, "local_steps": 50, "seed": 5}
    thread, outcome = _in_background(federation, _settings(federation, **values))
    run_id = checkpointed_run(_uri(federation), 1, outcome)
    assert federation.coordinator.process is not None and federation.coordinator.superexec is not None
    superlink = psutil.Process(federation.coordinator.process.popen.pid)
    superexec = psutil.Process(federation.coordinator.superexec.popen.pid)
    serverapp = _serverapp(federation)
    started = [superexec, serverapp]  # the coordinator's SuperExec and the run's ServerApp
    superlink.kill()
    thread.join(timeout=120)
    assert "error" in outcome, outcome
    assert f"continue it with `lab run --resume {run_id}`" in outcome["error"]  # the run says how to go on
    client = MlflowClient(tracking_uri=_uri(federation))
    assert client.get_run(run_id).info.status == "FAILED"

    # The ServerApp and SuperExec may outlive their SuperLink a moment: stopping the coordinator
    # stops them too, and it starts again on its own state (nodes and runs kept).
    federation.coordinator.stop()
    assert [p.pid for p in started if _alive(p)] == []
    federation.coordinator.start()

    resumed = _resume(federation, run_id)  # the nodes reconnected by themselves
    assert resumed.mlflow_run_id == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[ROUND_TAG] == "3"
    for name in NAMES:
        assert sorted({m.step for m in client.get_metric_history(run_id, f"node.{name}.train_loss")}) == [1, 2, 3]
    assert len(client.search_model_versions(f"name = '{SPEC.name}' and run_id = '{run_id}'")) == 1
