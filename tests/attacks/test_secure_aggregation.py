"""SecAgg+ unmasking: a coordinator that lists a node both as active and as dropped gets its update.

Flower's ``secaggplus_mod`` takes the unmask lists and the reconstruction threshold from the
server: a node in both lists hands over the shares of both its masks (its private seed's, as an
active node, and its key's, as a dropped one), and the coordinator unmasks that node's update
alone, which the training inversion then reads. The node's mod, before Flower's, refuses an unmask
request whose lists overlap, name nodes not seen at key exchange or call the node itself dropped,
and a setup whose threshold is at or below half the nodes (rule ``secure-aggregation``); every
stage goes into the node's audit log.

The rounds run the lab's own coordinator code with Flower's SecAgg+ workflow (``run_secure_rounds``)
on a grid that delivers each message to three nodes' ClientApps in this process; the attacker's
grid changes only the unmask messages.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from federation.recorder import Recorder
from federation.secure_aggregation import run_secure_rounds
from lab.contract.membership import Guard, Member
from lab.contract.plan import RunPlan
from lab.contract.settings import RunSettings
from lab.core.model import build_model
from lab.errors import RunFailedError
from lab.registry.tracking import Tracker

from .node import SILOS, SPEC, Node, Nodes, answer, refused

PLAN = RunPlan(rounds=1, local_steps=5, batch_size=16, learning_rate=0.05, scored_rounds=1)
NAMES = ("cleveland", "hungary", "va")


class Unmasking(Nodes):
    """The attacker's grid: every unmask request also lists the first active node as dropped."""

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        for message in messages:
            configs = message.content.config_records.get(RECORD_KEY_CONFIGS)
            if configs is not None and configs.get(Key.STAGE) == Stage.UNMASK:
                active = list(configs[Key.ACTIVE_NODE_ID_LIST])  # type: ignore[arg-type]
                configs[Key.DEAD_NODE_ID_LIST] = [*configs[Key.DEAD_NODE_ID_LIST], active[0]]  # type: ignore[misc]
        return super().send_and_receive(messages, timeout=timeout)


def _round(grid: Nodes, nodes: list[Node]) -> ArrayRecord:
    """One SecAgg+ round of the lab's coordinator over ``grid``; the aggregated model."""
    for node in nodes:
        answer(node.prepare(grid.run.run_id, PLAN))
    members = {n.node_id: Member(n.node_id, n.name, n.name, train_rows=200, test_rows=100, baseline={}) for n in nodes}
    settings = RunSettings(task_spec=SPEC.text, num_rounds=1, local_steps=5, batch_size=16, secure_aggregation=True)
    instructions = nodes[0].instructions(PLAN, seed=3)
    recorder = Recorder(members, Tracker("", SPEC.name), lambda *a, **k: None, SPEC.metrics, 60.0)
    guard = Guard(None, "warn", SPEC.sha256)
    initial = ArrayRecord(build_model(SPEC, seed=1).state_dict())
    with grid.coordinating():
        result = run_secure_rounds(grid, initial, instructions.to_record(), members, recorder, guard, settings,
                                   Tracker("", SPEC.name))  # fmt: skip
    return result.arrays


def _nodes(folder: Path) -> list[Node]:
    return [Node(folder / name, name=name, table=SILOS[name], node_id=11 + i) for i, name in enumerate(NAMES)]


def test_an_honest_round_aggregates_and_every_stage_is_audited(tmp_path: Path) -> None:
    nodes = _nodes(tmp_path)
    aggregated = _round(Nodes(nodes, run_id=7), nodes)
    assert set(aggregated.keys()) == {"0.weight", "0.bias"}
    for node in nodes:
        stages = [e["asked"].get("secure_aggregation", e["message_type"]) for e in node.audit()]
        assert stages == ["query.prepare", Stage.SETUP, Stage.SHARE_KEYS, "train", Stage.UNMASK], stages


def test_an_unmask_request_that_lists_a_node_as_active_and_dropped_is_refused(tmp_path: Path) -> None:
    nodes = _nodes(tmp_path)
    with pytest.raises(RunFailedError):  # no node answered the unmask stage: nothing was unmasked
        _round(Unmasking(nodes, run_id=7), nodes)
    for node in nodes:
        (entry,) = [e for e in node.audit() if e["asked"].get("secure_aggregation") == Stage.UNMASK]
        assert entry["decision"] == "refused" and entry["clause"] == "secure-aggregation"
        assert "both as active and as dropped" in entry["reason"] and entry["left_node"] == []


def test_a_threshold_at_or_below_half_the_nodes_is_refused_at_setup(tmp_path: Path) -> None:
    node = _nodes(tmp_path)[0]
    answer(node.prepare(7, PLAN))
    configs = {
        Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: 4, Key.SHARE_NUMBER: 4, Key.THRESHOLD: 2,
        Key.CLIPPING_RANGE: 8.0, Key.TARGET_RANGE: 2**24, Key.MOD_RANGE: 2**32, Key.MAX_WEIGHT: 1000.0,
    }  # fmt: skip
    reply = node.send("train", RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(configs)}), 7)
    assert "not above half" in refused(reply, "secure-aggregation")
