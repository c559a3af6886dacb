"""A federation on one host: a coordinator and one node per organisation, on loopback.

It composes exactly the units a deployment runs (lab.runtime.coordinator, lab.runtime.node), each
in the workspace: the coordinator's home is the workspace itself, each node's home is
``nodes/NAME``, every process logs to ``logs/``. Everything is stopped on exit, on failure and on
Ctrl-C.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from lab.core.sources import node_source
from lab.runtime.connection import Connection
from lab.runtime.coordinator import Coordinator
from lab.runtime.node import Node
from lab.runtime.processes import LoggedProcess, Started, stop_trees
from lab.runtime.security import enroll_node

__all__ = ["LocalFederation", "NodeSpec"]


@dataclass(frozen=True)
class NodeSpec:
    """One organisation's node: its name and its own table (a file or a database URL)."""

    name: str
    data_path: str | Path
    env: dict[str, str] = field(default_factory=dict)  # extra environment for this node's processes
    agreement: Path | None = None  # the node's data-use agreement; None: no agreement is enforced

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_path", node_source(str(self.data_path)))


@dataclass
class LocalFederation(Started):
    """A coordinator and SuperNodes started as local processes; use as a context manager."""

    workspace: Path
    nodes: list[NodeSpec]
    secure: bool = False  # TLS with the federation's own CA, and only registered node keys may join
    coordinator: Coordinator = field(init=False)
    running: list[Node] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.workspace = self.workspace.resolve()
        self.coordinator = Coordinator(self.workspace, secure=self.secure)

    @property
    def connection(self) -> Connection:
        """How to reach this federation's SuperLink (lab.runtime.submit takes it)."""
        return self.coordinator.connection

    @property
    def logs(self) -> Path:
        return self.workspace / "logs"

    @property
    def processes(self) -> list[LoggedProcess]:
        started = [self.coordinator.process, *(n.process for n in self.running)]
        return [p for p in started if p is not None]

    def start(self) -> None:
        """Start the coordinator, then every node; fail, with the end of its log, if one exits."""
        # The SuperNodes of an earlier local federation in this workspace were stopped with it, but
        # its SuperLink's state would list them as connected until their heartbeats lapse (about a
        # minute), and a run would send them its first message: start from a fresh state.
        for stale in self.workspace.glob("superlink.db*"):
            stale.unlink()
        self.coordinator.start()
        for spec in self.nodes:
            auth_key = None
            if self.secure:
                keys = enroll_node(self.workspace / "keys", spec.name)
                self.coordinator.register(keys.public_key)
                auth_key = keys.private_key
            node = Node.at_home(
                spec.name,
                str(spec.data_path),
                self.workspace / "nodes" / spec.name,
                self.connection,
                agreement=spec.agreement,
                auth_key=auth_key,
                env=spec.env,
                log_path=self.logs / f"node-{spec.name}.log",
            )
            node.start()
            self.running.append(node)
        time.sleep(0.5)
        for proc in self.processes:
            proc.check_running()

    def stop(self) -> None:
        """Stop every process the federation started, and everything they started."""
        stop_trees(self.processes)
        self.coordinator.process = None
        for node in self.running:
            node.process = None
        self.running.clear()
