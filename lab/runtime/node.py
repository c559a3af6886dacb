"""The node unit: one organisation's SuperNode, with its home, gate, agreement, audit log and ledger.

The node's home holds its Flower home, its audit log (``audit.jsonl``), its privacy ledger
(``privacy.jsonl``) and its gate: a ``flwr-clientapp`` first on the SuperNode's PATH that admits
only apps its agreement allows (lab.node.guard). The SuperNode is given the node's name, table and
records in its node config (lab.node.site).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import RuntimeStartError
from lab.node.guard import AGREEMENT_ENV, AUDIT_ENV, write_shim
from lab.node.site import NodeSite
from lab.runtime.connection import Connection
from lab.runtime.environ import process_environ
from lab.runtime.processes import LoggedProcess, Started, executable, free_port, start_logged, stop_trees

__all__ = ["Node", "node_config"]


def node_config(values: Mapping[str, object]) -> str:
    """A SuperNode's ``--node-config`` text: ``key="value"`` pairs, which Flower reads as TOML
    strings inside double quotes (so a value may hold spaces but no double quote)."""
    for key, value in values.items():
        if '"' in str(value) or "\\" in str(value):
            raise RuntimeStartError(
                f"node config {key} = {str(value)!r} holds a double quote or a backslash, which Flower's "
                "--node-config cannot carry; use single quotes in a query, and a path without them"
            )
    return " ".join(f'{key}="{value}"' for key, value in values.items())


@dataclass
class Node(Started):
    """A SuperNode for ``site`` connected to ``superlink``; with ``auth_key`` it authenticates with
    that private key (the SuperLink must have admitted its public key)."""

    site: NodeSite
    home: Path
    superlink: Connection
    auth_key: Path | None = None
    env: dict[str, str] = field(default_factory=dict)  # extra environment for this node's processes
    log_path: Path | None = None  # default: node.log in its home
    process: LoggedProcess | None = field(default=None, init=False)

    @classmethod
    def at_home(
        cls,
        name: str,
        data: str,
        home: Path,
        superlink: Connection,
        *,
        agreement: Path | None = None,
        **options: object,
    ) -> Node:
        """A node whose audit log and ledger live in ``home``."""
        home = home.resolve()
        site = NodeSite(
            name,
            data,
            str(agreement.resolve()) if agreement else "",
            str(home / "audit.jsonl"),
            str(home / "privacy.jsonl"),
        )
        return cls(site, home, superlink, **options)  # type: ignore[arg-type]

    def start(self) -> None:
        """Start the SuperNode (it connects to the SuperLink on its own, and retries)."""
        self.home.mkdir(parents=True, exist_ok=True)
        gate = write_shim(self.home / "bin")
        env = {**process_environ(self.home), **self.env, AUDIT_ENV: self.site.audit_path}
        if self.site.agreement_path:
            env[AGREEMENT_ENV] = self.site.agreement_path
        env["PATH"] = os.pathsep.join([str(gate.parent), env["PATH"]])
        transport = ["--insecure"]
        if self.superlink.root_certificates is not None:
            transport = ["--root-certificates", str(self.superlink.root_certificates)]
            if self.auth_key is not None:
                transport += ["--auth-supernode-private-key", str(self.auth_key)]
        self.process = start_logged(
            f"node-{self.site.name}",
            [
                executable("flower-supernode"),
                *transport,
                "--superlink",
                self.superlink.address,
                "--port",
                str(free_port()),
                "--node-config",
                node_config(self.site.node_config()),
            ],
            env=env,
            log_path=self.log_path or self.home / "node.log",
            cwd=self.home,
        )

    def stop(self) -> None:
        """Stop the SuperNode and every process it started."""
        if self.process is not None:
            stop_trees([self.process])
            self.process = None
