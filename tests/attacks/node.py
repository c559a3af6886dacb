"""A hospital's node as a curious coordinator meets it: the lab's own ClientApp, answering in this
process on its real message path (its agreement, its home with audit log, ledger, run book and
secret, its own table), and the messages a coordinator can craft for it.

A coordinator that owns its SuperLink can send any message under an approved app hash; what the
node's code does with it is all that stands between the coordinator and the node's rows. These
helpers build such messages the way the lab's ServerApp does (``lab.contract.messages``), so an
attack changes only what an attacker would change.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid

from lab.contract import keys
from lab.contract.messages import Candidates, Instructions, QueryMessage, QueryReply
from lab.contract.plan import RunPlan
from lab.core.analytics import StatsRequest
from lab.core.model import build_model
from lab.core.privacy import DPSettings
from lab.core.spec import TaskSpec, load_spec
from lab.node.agreement import template
from lab.node.audit import AuditLog
from lab.node.ledger import Ledger
from lab.node.site import NodeSite
from lab.queries.prepare import PrepareRequest

from ..conftest import HEART, SILOS

SPEC = load_spec(HEART / "task.toml")
HEART_TEXT = SPEC.text
WIDTH = len(SPEC.encoded_names)
#: The plan the lab's demo declares (lab.contract.settings defaults), with contributions valued.
HONEST = RunPlan(rounds=5, local_steps=100, batch_size=16, learning_rate=0.05, scored_rounds=5, contributions=True,
                 nodes=4)  # fmt: skip


@contextlib.contextmanager
def _as_run(run_id: int, node_id: int) -> Iterator[None]:
    """What Flower sets in a node's process while it answers a message of run ``run_id``."""
    from flwr.supercore.task_identity import TaskIdentity

    before = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = run_id, node_id, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = before


def zero_model(spec: TaskSpec = SPEC) -> dict[str, np.ndarray]:
    """The spec's model with every weight zero."""
    return {name: np.zeros_like(t.numpy()) for name, t in build_model(spec, seed=1).state_dict().items()}


def identity_scaler(spec: TaskSpec = SPEC) -> tuple[list[float], list[float]]:
    return [0.0] * len(spec.encoded_names), [1.0] * len(spec.encoded_names)


@dataclass
class Node:
    """One organisation's node with its agreement (the template's defaults, ``clauses`` replaced
    as (old, new) text), answering in this process; ``bound=False``: started without one, on purpose
    (``--no-agreement``, a node that holds nothing back) or, with ``knowing=False``, not."""

    home: Path
    name: str = "cleveland"
    table: Path = SILOS["cleveland"]
    spec: TaskSpec = SPEC
    clauses: tuple[tuple[str, str], ...] = ()
    bound: bool = True
    knowing: bool = True
    node_id: int = 11
    contexts: dict[int, Context] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.bound:
            return
        text = template(self.spec, "ab" * 32, self.spec.organisation(self.name))
        for old, new in self.clauses:
            assert old in text, old
            text = text.replace(old, new)
        (self.home / "agreement.toml").write_text(text, encoding="utf-8")

    @property
    def site(self) -> NodeSite:
        return NodeSite(
            self.name,
            str(self.table),
            str(self.home / "agreement.toml") if self.bound else "",
            str(self.home / "audit.jsonl"),
            str(self.home / "privacy.jsonl"),
            no_agreement=not self.bound and self.knowing,
        )

    def send(self, message_type: str, content: RecordDict, run_id: int) -> Message:
        """One message of run ``run_id`` to the node, as its SuperNode hands it over; the reply."""
        with _as_run(run_id, self.node_id):
            return self.deliver(Message(content, dst_node_id=self.node_id, message_type=message_type))

    def deliver(self, message: Message) -> Message:
        """A message a coordinator made, answered by the node's ClientApp with the run's context."""
        from federation.client_app import app

        run_id = message.metadata.run_id
        context = self.contexts.setdefault(
            run_id, Context(run_id, self.node_id, self.site.node_config(), RecordDict(), {})
        )
        with _as_run(run_id, self.node_id):
            return app(message, context)

    # -- queries ---------------------------------------------------------------------------

    def query(self, kind: str, request: str, run_id: int) -> Message:
        return self.send(f"query.{kind}", QueryMessage(self.spec.text, request).to_record(), run_id)

    def prepare(self, run_id: int, plan: RunPlan = HONEST, dp: DPSettings | None = None, epochs: int = 2) -> Message:
        request = PrepareRequest(seed=42, baseline_epochs=epochs, strategy="fedavg", plan=plan, dp=dp)
        return self.query("prepare", request.to_json(), run_id)

    def stats(self, request: StatsRequest, run_id: int) -> Message:
        return self.query("stats", request.to_json(), run_id)

    def catalog(self, run_id: int) -> Message:
        return self.query("catalog", "", run_id)

    # -- training messages ------------------------------------------------------------------

    def instructions(self, plan: RunPlan = HONEST, **changes: Any) -> Instructions:
        """Train instructions of a run with ``plan`` (``changes``: fields an attacker sets)."""
        mean, std = identity_scaler(self.spec)
        base = Instructions(
            task=self.spec.name, spec_sha256=self.spec.sha256, strategy="fedavg", scaler_mean=mean, scaler_std=std,
            seed=1, local_steps=plan.local_steps, batch_size=plan.batch_size, learning_rate=plan.learning_rate,
            evaluate_first=True, server_round=1,
        )  # fmt: skip
        return replace(base, **changes)

    def train(self, run_id: int, instructions: Instructions, arrays: dict[str, np.ndarray]) -> Message:
        config = dict(instructions.to_record())
        config[keys.SERVER_ROUND] = instructions.server_round
        content = RecordDict({keys.CONFIG: ConfigRecord(config), keys.ARRAYS: _record(arrays)})
        return self.send("train", content, run_id)

    def evaluate(self, run_id: int, instructions: Instructions, arrays: dict[str, np.ndarray]) -> Message:
        content = RecordDict({keys.CONFIG: instructions.to_record(), keys.ARRAYS: _record(arrays)})
        return self.send("evaluate", content, run_id)

    def candidates(self, run_id: int, instructions: Instructions, models: list[dict[str, np.ndarray]]) -> Message:
        content = Candidates([_record(m) for m in models], instructions).to_record()
        return self.send(f"evaluate.{keys.CANDIDATES_ACTION}", content, run_id)

    # -- the node's own records -------------------------------------------------------------

    def audit(self) -> list[dict[str, Any]]:
        return AuditLog(self.home / "audit.jsonl").entries()

    def ledger(self) -> Ledger:
        return Ledger(self.home / "privacy.jsonl")


def _on_the_wire(message: Message) -> Message:
    """The message as the node receives it: serialised and read back, as Flower's transport does."""
    from flwr.common.serde import message_from_proto, message_to_proto

    return message_from_proto(message_to_proto(message))


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.asarray(values, dtype=np.float32)) for name, values in arrays.items()})


def answer(reply: Message) -> dict[str, Any]:
    """A query reply's answer (the test fails with the node's reason if it refused)."""
    assert not reply.has_error(), reply.error.reason
    return dict(json.loads(QueryReply.of(reply).answer))


def refused(reply: Message, clause: str) -> str:
    """The reason of a refusal that names ``clause`` (the test fails on an answer or another clause)."""
    assert reply.has_error(), "the node answered"
    assert reply.error.code == keys.REFUSED, reply.error.reason
    assert f" {clause}: " in reply.error.reason, reply.error.reason
    return str(reply.error.reason)


class Nodes(Grid):
    """Flower's Grid as a coordinator's ServerApp sees it, delivering each message to its node in
    this process: what the lab's coordinator code (or an attacker's) runs on, unchanged."""

    def __init__(self, nodes: list[Node], run_id: int) -> None:
        self.nodes = {node.node_id: node for node in nodes}
        self._run = SimpleNamespace(run_id=run_id, fab_hash="ab" * 32)

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return sorted(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("this grid only sends and receives")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("this grid only sends and receives")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return [self.nodes[m.metadata.dst_node_id].deliver(_on_the_wire(m)) for m in messages]

    @contextlib.contextmanager
    def coordinating(self) -> Iterator[Nodes]:
        """While the coordinator's code runs: Flower stamps its messages with the run's identity."""
        with _as_run(int(self._run.run_id), 0):
            yield self
