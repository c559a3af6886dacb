"""SecAgg+ on the real runtime: the same model as plain FedAvg, and no node's update at the coordinator.

One SuperLink and two SuperNodes (Cleveland, Hungary) run two runs with equal settings and seeds:
plain FedAvg, then FedAvg through SecAgg+ (``secure-aggregation = true``).

Tolerance. Per round and parameter, SecAgg+'s average differs from FedAvg's by at most
``error_bound(N) = 3 N c / T`` (c the clipping range, T the quantisation levels; see
federation.secure_aggregation): 2.9e-6 for N = 2, c = 8, T = 2**24. In the second round the nodes
train from first-round models that differ by at most sqrt(d) * that bound in L2 (d parameters).
Local training is SGD on the mean logistic loss, whose Hessian's largest eigenvalue is at most
L = max ||(x, 1)||^2 / 4 over the training rows; while learning-rate * L <= 2 every SGD step is
non-expansive, so the difference does not grow (the test checks that condition on the data),
and averaging does not grow it either. Both paths also round to float32 once per round (2.5e-7
at most for parameters under 2). So after two rounds each parameter differs by at most
(sqrt(d) + 1) * (error_bound(2) + 2.5e-7) = 1.5e-5.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

from federation.secure_aggregation import CLIPPING_RANGE, ObservedGrid, error_bound, node_mod
from lab.contract import keys
from lab.contract.events import Event, Started
from lab.contract.membership import Guard
from lab.contract.settings import RunSettings
from lab.core.preprocess import ColumnSums, Scaler, encode
from lab.core.spec import TaskSpec, load_spec
from lab.core.training import load_node_data
from lab.errors import LabError, UnmaskedUpdateError
from lab.runtime.local import LocalFederation
from lab.runtime.run import node_specs, run_settings
from lab.runtime.submit import new_run_dir, submit_run

from .conftest import HEART, ROOT, SILOS

pytestmark = pytest.mark.long(70)  # its module fixture's two runs, SecAgg+'s four message rounds each

NODES = ("cleveland", "hungary")
ROUNDS = 2
LEARNING_RATE = 0.05
SETTINGS: dict[str, Any] = {
    "num_rounds": ROUNDS,
    "local_steps": 5,
    "batch_size": 16,
    "learning_rate": LEARNING_RATE,
    "seed": 7,
    "baseline_epochs": 1,
    "min_nodes": 2,
    # This test is about aggregation, not environments: a drifted shared venv must not stop it.
    "environment_policy": "warn",
}


@dataclass(frozen=True)
class Runs:
    tracking_uri: str
    workspace: Path
    plain: str  # MLflow run ids
    secure: str
    seconds: float

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def weights(self, run_id: str) -> dict[str, np.ndarray]:
        client = self.client()
        (version,) = client.search_model_versions(f"run_id = '{run_id}'")
        location = client.get_model_version_download_uri(version.name, version.version)
        path = download_artifacts(artifact_uri=location)
        with np.load(Path(path) / "artifacts" / "bundle" / "weights.npz") as npz:
            return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    workspace = tmp_path_factory.mktemp("secagg") / "workspace"
    tracking_uri = f"sqlite:///{workspace / 'mlflow.db'}"
    spec = load_spec(HEART / "task.toml")
    started = time.monotonic()
    run_ids: dict[str, str] = {}
    nodes = node_specs({n: str(SILOS[n]) for n in NODES}, None, workspace=workspace, spec=spec)
    with LocalFederation(workspace, nodes) as federation:
        for name, extra in (("plain", {}), ("secure", {"secure_aggregation": True})):
            config = run_settings(
                spec,
                tracking_uri=tracking_uri,
                nodes=len(NODES),
                values={**SETTINGS, **extra, "experiment": f"secagg-{name}"},
            )
            events: list[Event] = []
            run_dir = new_run_dir(federation.workspace)
            submit_run(federation.connection, config, app_dir=ROOT, run_dir=run_dir, on_event=events.append)
            run_ids[name] = next(str(e.mlflow_run_id) for e in events if isinstance(e, Started))
    yield Runs(tracking_uri, workspace, run_ids["plain"], run_ids["secure"], time.monotonic() - started)


def _max_row_norm_squared(spec: TaskSpec) -> float:
    """max ||(x, 1)||^2 over both nodes' training rows, scaled with the federated scaler."""
    data = [load_node_data(n, str(SILOS[n]), spec) for n in NODES]
    matrices = [encode(d.train.features, spec) for d in data]
    sums = ColumnSums.of(matrices[0])
    for matrix in matrices[1:]:
        sums = sums + ColumnSums.of(matrix)
    scaler = Scaler.from_sums(sums)
    return max(float((scaler.transform(m) ** 2).sum(axis=1).max()) for m in matrices) + 1.0


@pytest.mark.e2e
def test_secagg_gives_fedavgs_model_within_the_quantisation_error(runs: Runs, heart_spec: TaskSpec) -> None:
    client = runs.client()
    secure = client.get_run(runs.secure)
    assert secure.info.status == "FINISHED"
    assert secure.data.params["secure_aggregation"] == "True"
    assert client.get_run(runs.plain).data.params["secure_aggregation"] == "False"
    assert secure.data.params["nodes"] == ",".join(NODES)
    # the rounds reached the recorder: train loss and the scores each node sent with its masked vector
    assert [m.step for m in client.get_metric_history(runs.secure, "train_loss")] == list(range(1, ROUNDS + 1))
    assert [m.step for m in client.get_metric_history(runs.secure, "node.cleveland.accuracy")] == [0, 1, 2]

    plain, sealed = runs.weights(runs.plain), runs.weights(runs.secure)
    assert plain.keys() == sealed.keys()
    d = sum(v.size for v in plain.values())
    # the conditions the tolerance rests on: non-expansive SGD steps, parameters inside the clipping range
    assert LEARNING_RATE * _max_row_norm_squared(heart_spec) / 4 <= 2
    assert max(float(np.abs(v).max()) for v in plain.values()) <= 2 < CLIPPING_RANGE
    tolerance = (math.sqrt(d) + 1) * (error_bound(len(NODES)) + 2.5e-7)
    assert tolerance < 1.6e-5
    difference = max(float(np.abs(plain[k] - sealed[k]).max()) for k in plain)
    print(f"SecAgg+ vs FedAvg: largest difference {difference:.2e}, tolerance {tolerance:.2e}, {runs.seconds:.0f} s")
    assert difference <= tolerance
    assert difference > 0  # stochastic quantisation: equal models would mean SecAgg+ never ran


@pytest.mark.e2e
def test_the_coordinator_never_receives_a_nodes_update(runs: Runs) -> None:
    client = runs.client()
    for node in NODES:
        unmasked = client.get_metric_history(runs.secure, f"node.{node}.secagg.array_bytes")
        masked = client.get_metric_history(runs.secure, f"node.{node}.secagg.masked_bytes")
        assert [(m.step, m.value) for m in unmasked] == [(r, 0.0) for r in range(1, ROUNDS + 1)]
        assert [m.step for m in masked] == list(range(1, ROUNDS + 1))
        assert all(m.value > 0 for m in masked)
        # ...although the node did compute and release an update in every round (its audit log)
        log = runs.workspace / "nodes" / node / "audit.jsonl"
        audit = [json.loads(line) for line in log.read_text().splitlines()]
        secure = [
            e
            for e in audit
            if e["message_type"] == MessageType.TRAIN and str(e["run_id"]) == _flwr_run_id(client, runs.secure)
        ]
        released = [e["left_node"] for e in secure if "secure_aggregation" not in e["asked"]]  # the training
        assert len(released) == ROUNDS
        # Every other stage of every round is in the log too, with what it asked.
        stages = [e["asked"]["secure_aggregation"] for e in secure if "secure_aggregation" in e["asked"]]
        assert stages == ["setup", "share_keys", "unmask"] * ROUNDS
        assert all(any(r["kind"] == "arrays" and r["bytes"] > 0 for r in left) for left in released)


def _flwr_run_id(client: MlflowClient, run_id: str) -> str:
    return str(client.get_run(run_id).data.tags["flwr.run_id"])


# ------------------------------------------------------------------------------------------------
# Without the runtime: the checks the runs above rely on can fail
# ------------------------------------------------------------------------------------------------


class _FakeGrid:
    """Replies to every message with ``content``."""

    def __init__(self, content: RecordDict) -> None:
        self.content = content

    def send_and_receive(self, messages: list[Message], *, timeout: float | None = None) -> list[Message]:
        return [Message(self.content, reply_to=m) for m in messages]


def _stage_message(stage: str) -> Message:
    configs = ConfigRecord({"stage": stage})
    return Message(RecordDict({"secaggplus_configs": configs}), dst_node_id=5, message_type=MessageType.TRAIN)


def test_an_unmasked_update_reaching_the_coordinator_fails_the_run(identity: None) -> None:
    update = RecordDict({"fitres.parameters": ArrayRecord({"w": Array(np.ones(3, dtype=np.float32))})})
    grid = ObservedGrid(_FakeGrid(update), Guard(None, "warn", ""), lambda n: f"node-{n}")  # type: ignore[arg-type]
    with pytest.raises(UnmaskedUpdateError, match="node-5.*bytes of model arrays"):
        list(grid.send_and_receive([_stage_message("collect_masked_vectors")]))


def test_a_collect_reply_without_a_masked_vector_fails_the_run(identity: None) -> None:
    grid = ObservedGrid(_FakeGrid(RecordDict()), Guard(None, "warn", ""), lambda n: f"node-{n}")  # type: ignore[arg-type]
    with pytest.raises(UnmaskedUpdateError, match="no masked vector"):
        list(grid.send_and_receive([_stage_message("collect_masked_vectors")]))


def test_plain_training_messages_pass_the_node_mod_untouched(identity: None) -> None:
    msg = Message(RecordDict({keys.CONFIG: ConfigRecord({"a": 1})}), dst_node_id=1, message_type=MessageType.TRAIN)
    seen: list[Message] = []

    def handler(m: Message, _: Any) -> Message:
        seen.append(m)
        return Message(RecordDict(), reply_to=m)

    node_mod(msg, None, handler)  # type: ignore[arg-type]
    assert seen == [msg] and seen[0].content.config_records[keys.CONFIG]["a"] == 1


@pytest.mark.parametrize("strategy", ["fedprox", "fedadam", "fedyogi"])
def test_secure_aggregation_refuses_other_strategies(heart_spec: TaskSpec, strategy: str) -> None:
    with pytest.raises(LabError, match="secure-aggregation = true needs strategy = 'fedavg'"):
        RunSettings.from_run_config({"task-spec": heart_spec.text, "strategy": strategy, "secure-aggregation": True})
