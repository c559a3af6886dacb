"""Poisoning: one malicious node takes the global model with a scaled update and a huge row count.

FedAvg weights each reply by the row count it claims: a node claiming a million rows gets the
whole weight, and one sending its update scaled a hundredfold moves the average a hundredfold.
The coordinator weights a reply by no more than the training rows its node declared at
preparation, can clip every update's norm (``clip-update-norm``), and offers Flower's robust
strategies, which a scaled update does not move. The round runs the lab's coordinator strategy
(``make_strategy``) on real replies of four nodes' ClientApps in this process; the malicious node's
reply is its honest one, tampered with before it reaches the coordinator.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from federation.recorder import Recorder
from federation.strategies import make_strategy
from lab.contract import keys
from lab.contract.membership import Guard, Member
from lab.contract.plan import RunPlan
from lab.contract.settings import RunSettings
from lab.core.model import build_model
from lab.registry.tracking import Tracker

from .node import SILOS, SPEC, Node, Nodes, answer

PLAN = RunPlan(rounds=1, local_steps=20, batch_size=16, learning_rate=0.05, scored_rounds=1)
DECLARED = 150  # training rows each node declared at preparation


def _flat(arrays: ArrayRecord) -> np.ndarray:
    return np.concatenate([a.numpy().ravel() for a in arrays.values()]).astype(np.float64)


def _aggregate(tmp_path: Path, strategy: str, *, poisoned: bool, **values: object) -> np.ndarray:
    """One round of ``strategy`` over four nodes (the last one malicious when ``poisoned``)."""
    nodes = [Node(tmp_path / f"{strategy}-{n}", name=n, table=SILOS[n], node_id=11 + i) for i, n in enumerate(SILOS)]
    for node in nodes:
        answer(node.prepare(7, PLAN))
    members = {n.node_id: Member(n.node_id, n.name, n.name, DECLARED, 50, {}) for n in nodes}
    settings = replace(RunSettings(task_spec=SPEC.text, strategy=strategy, min_nodes=3), **values)  # type: ignore[arg-type]
    recorder = Recorder(members, Tracker("", SPEC.name), lambda *a, **k: None, SPEC.metrics, 60.0)
    chosen = make_strategy(
        settings, {n: m.name for n, m in members.items()}, recorder, Guard(None, "warn", SPEC.sha256),
        declared={n: m.train_rows for n, m in members.items()},
    )  # fmt: skip
    grid = Nodes(nodes, run_id=7)
    initial = ArrayRecord(build_model(SPEC, seed=1).state_dict())
    config = nodes[0].instructions(PLAN, seed=5).to_record()
    with grid.coordinating():
        messages = list(chosen.configure_train(1, initial, config, grid))
        replies: list[Message] = list(grid.send_and_receive(messages))
        if poisoned:
            malicious = next(r for r in replies if r.metadata.src_node_id == nodes[-1].node_id)
            arrays = malicious.content.array_records[keys.ARRAYS]
            for name, array in list(arrays.items()):
                start = initial[name].numpy()
                arrays[name] = Array((start + 100.0 * (array.numpy() - start)).astype(np.float32))
            malicious.content.metric_records[keys.METRICS][keys.NUM_EXAMPLES] = 1_000_000
        aggregated, _ = chosen.aggregate_train(1, replies)
    assert aggregated is not None
    return _flat(aggregated)


def test_a_scaled_update_moves_fedavg_but_not_fedmedian(tmp_path: Path) -> None:
    honest = _aggregate(tmp_path / "honest", "fedavg", poisoned=False)
    fedavg = _aggregate(tmp_path / "fedavg", "fedavg", poisoned=True)
    median = _aggregate(tmp_path / "median", "fedmedian", poisoned=True)
    honest_median = _aggregate(tmp_path / "honest-median", "fedmedian", poisoned=False)
    moved_avg = float(np.linalg.norm(fedavg - honest))
    moved_median = float(np.linalg.norm(median - honest_median))
    # The claimed million rows were weighted as the 150 declared: the attacker's share is a quarter,
    # so its hundredfold update moves FedAvg by about 25 of its own updates. The median hardly moves.
    assert moved_avg > 10 * float(np.linalg.norm(honest - _flat(ArrayRecord(build_model(SPEC, seed=1).state_dict()))))
    assert moved_median < moved_avg / 10, (moved_median, moved_avg)


def test_a_claimed_row_count_is_weighted_as_declared_and_clipping_bounds_the_update(tmp_path: Path) -> None:
    start = _flat(ArrayRecord(build_model(SPEC, seed=1).state_dict()))
    honest = _aggregate(tmp_path / "honest", "fedavg", poisoned=False)
    step = float(np.linalg.norm(honest - start))
    clipped = _aggregate(tmp_path / "clipped", "fedavg", poisoned=True, clip_update_norm=2 * step)
    # Every update at most twice the honest average's step, weighted by declared rows: the
    # aggregate moves at most that far from the start.
    assert float(np.linalg.norm(clipped - start)) <= 2 * step + 1e-6
