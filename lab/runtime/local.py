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

from lab.core.environ import ROSTER
from lab.core.sources import TableSource
from lab.errors import UsageError
from lab.runtime.connection import Connection
from lab.runtime.coordinator import Coordinator
from lab.runtime.forked import start_server
from lab.runtime.node import Node
from lab.runtime.processes import LoggedProcess, Started
from lab.runtime.roster import write_admitted
from lab.runtime.security import enroll_node

__all__ = ["LocalFederation", "NodeSpec"]


@dataclass(frozen=True)
class NodeSpec:
    """One organisation's node: its name and its own table (a file or a database URL)."""

    name: str
    data_path: str | Path
    env: dict[str, str] = field(default_factory=dict)  # extra environment for this node's processes
    agreement: Path | None = None  # the node's data-use agreement, which it enforces
    no_agreement: bool = False  # no agreement on purpose (--no-agreement): nothing is checked, all is audited

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_path", TableSource.of(self.data_path).located())
        if (self.agreement is None) == (not self.no_agreement):
            raise UsageError(
                f"node {self.name!r}: give it an agreement, or start it without one on purpose (no_agreement, "
                "`--no-agreement`), not both and not neither"
            )


@dataclass
class LocalFederation(Started):
    """A coordinator and SuperNodes started as local processes; use as a context manager."""

    workspace: Path
    nodes: list[NodeSpec]
    secure: bool = False  # TLS with the federation's own CA, and only registered node keys may join
    node_runtime: str = "warm"  # how the nodes answer messages (lab.runtime.node.RUNTIMES)
    coordinator: Coordinator = field(init=False)
    running: list[Node] = field(default_factory=list, init=False)
    admitted: dict[int, str] = field(default_factory=dict, init=False)  # node id -> name (secure only)

    def __post_init__(self) -> None:
        self.workspace = self.workspace.resolve()
        # A secure federation admits each node's key under its name, and its ServerApp holds every
        # node to that name from the roster, as on a coordinator's host (lab.runtime.roster).
        env = {ROSTER.name: str(self.workspace)} if self.secure else {}
        self.coordinator = Coordinator(self.workspace, secure=self.secure, env=env)

    @property
    def connection(self) -> Connection:
        """How to reach this federation's SuperLink (lab.runtime.submit takes it)."""
        return self.coordinator.connection

    @property
    def logs(self) -> Path:
        return self.workspace / "logs"

    @property
    def processes(self) -> list[LoggedProcess]:
        return self.coordinator.processes + [p for node in self.running for p in node.processes]

    def start(self) -> None:
        """Start the coordinator, then every node; fail, with the end of its log, if one exits."""
        # The SuperNodes of an earlier local federation in this workspace were stopped with it, but
        # its SuperLink's state would list them as connected until their heartbeats lapse (about a
        # minute), and a run would send them its first message: start from a fresh state.
        for stale in self.workspace.glob("superlink.db*"):
            stale.unlink()
        start_server()  # the nodes' imports (lab.runtime.forked), while the coordinator starts
        self.coordinator.start()
        for spec in self.nodes:
            auth_key = None
            if self.secure:
                keys = enroll_node(self.workspace / "keys", spec.name)
                self.admitted[self.coordinator.register(keys.public_key, spec.name)] = spec.name
                write_admitted(self.workspace, {name: {"node_id": node_id} for node_id, name in self.admitted.items()})
                auth_key = keys.private_key
            node = Node.at_home(
                spec.name,
                str(spec.data_path),
                self.workspace / "nodes" / spec.name,
                self.connection,
                agreement=spec.agreement,
                no_agreement=spec.no_agreement,
                auth_key=auth_key,
                env=spec.env,
                log_path=self.logs / f"node-{spec.name}.log",
                runtime=self.node_runtime,
            )
            # Listed before it starts: a Ctrl-C or SIGTERM while it starts stops what it started.
            self.running.append(node)
            node.start()
        time.sleep(0.5)
        for proc in self.processes:
            proc.check_running()

    def stop(self) -> None:
        """Stop every process the federation started, and everything they started."""
        for node in self.running:
            node.stop()
        self.coordinator.stop()
        self.running.clear()
