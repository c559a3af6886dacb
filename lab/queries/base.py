"""What every kind of query is: a request, the node's answer to it, and the coordinator's side.

A query asks every node one question about its own table and pools the answers; nothing of a
row leaves a node. Each kind lives in one module of this package, holding its request type, the
node's answer (run by the ClientApp behind the node's agreement check) and the coordinator's side
(run by the ServerApp); both apps dispatch through the table in ``lab.queries``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from lab.contract.events import Event
from lab.contract.results import Reported
from lab.contract.settings import RunSettings
from lab.core.spec import TaskSpec
from lab.node.agreement import Agreement, Request
from lab.node.site import NodeSite

if TYPE_CHECKING:  # the nodes import the queries too: no MLflow there
    from lab.registry.tracking import Tracker

__all__ = ["Answers", "Ask", "Emit", "NodeAnswer", "QueryKind"]

RequestT = TypeVar("RequestT")

#: How the coordinator's side tells whoever follows the run what happens (lab.contract.events.emit).
Emit = Callable[[Event], None]


@dataclass(frozen=True)
class NodeAnswer:
    """One node's answer: the node's id in this federation, its name, organisation and answer."""

    node_id: int
    name: str
    organisation: str
    answer: dict[str, Any]


@dataclass(frozen=True)
class Answers:
    """What the nodes answered (by name) and why the others did not (by name or node id)."""

    answers: dict[str, NodeAnswer] = field(default_factory=dict)
    refusals: dict[str, str] = field(default_factory=dict)
    asked: int = 0  # the nodes connected and asked


#: The coordinator's way to put a request to every node and gather their answers.
Ask = Callable[[Any], Answers]


class QueryKind(ABC, Generic[RequestT]):
    """One kind of query; ``name`` makes its message type ``query.NAME``."""

    name: ClassVar[str]
    #: What the answer releases, as the agreement's ``allow.outputs`` names it.
    outputs: ClassVar[frozenset[str]]

    @property
    def message_type(self) -> str:
        return f"query.{self.name}"

    @abstractmethod
    def parse_request(self, text: str) -> RequestT:
        """The request from its JSON text (``to_json`` of the kind's request type)."""

    def describe(self, text: str) -> Any:
        """The request as it came (its JSON text), in full, for the node's audit log: what the
        coordinator asked, not only what the node read of it."""
        return json.loads(text) if text else None

    @abstractmethod
    def answer(self, spec: TaskSpec, request: RequestT, site: NodeSite, run_id: int) -> dict[str, Any]:
        """The node's side: answer from its own table, small counts already held back."""

    @abstractmethod
    def coordinate(
        self, spec: TaskSpec, request: RequestT, settings: RunSettings, ask: Ask, tracker: Tracker, emit: Emit
    ) -> Reported:
        """The coordinator's side: ask the nodes, pool and record; what the run reports (lab.contract.results)."""

    def asks(self, spec: TaskSpec, request: RequestT, agreement: Agreement) -> Request:
        """What the query will make leave the node, known before any data is read."""
        return Request(spec.name, spec.sha256, None, self.outputs, frozenset(), agreement.min_rows)

    def releases(self, spec: TaskSpec, request: RequestT, answer: dict[str, Any], agreement: Agreement) -> Request:
        """What the answer actually carries out of the node (by default what was asked: counts
        under the node's minimum are already held back)."""
        return self.asks(spec, request, agreement)
