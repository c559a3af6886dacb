"""The node unit: one organisation's SuperNode, with its home, gate, agreement, audit log and ledger.

The node's home holds its Flower home, its audit log (``audit.jsonl``), its privacy ledger
(``privacy.jsonl``) and its gate: a ``flwr-clientapp`` first on the SuperNode's PATH that admits
only apps its agreement allows (lab.node.guard). The SuperNode is given the node's name, table and
records in its node config (lab.node.site).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lab.core.environ import AGREEMENT_FILE, AUDIT_LOG, WITHOUT_AGREEMENT
from lab.errors import RuntimeStartError
from lab.node.agreement import UNBOUND
from lab.node.guard import write_shim
from lab.node.site import NodeSite, node_secret
from lab.runtime.connection import Connection
from lab.runtime.environ import process_environ
from lab.runtime.forked import start_python
from lab.runtime.processes import (
    LOOPBACK,
    LoggedProcess,
    Started,
    free_port,
    stop_trees,
)

__all__ = ["RUNTIMES", "Node", "node_config"]

logger = logging.getLogger(__name__)

#: Seconds a restarted process must run before its next exit is met without waiting.
_STEADY = 30.0
#: The longest wait between two restarts of a process that keeps exiting.
_MOST_BACKOFF = 10.0
#: Seconds an authenticated node stays away between releasing a dead SuperNode's connection and
#: starting the next one under the same identity (Node._supervise).
_AWAY = 5.0

#: Flower's SuperNode, as its console script ``flower-supernode`` runs it.
SUPERNODE = "flwr.supernode.cli:flower_supernode"

#: How a node answers messages: its warm worker (lab.runtime.worker), or Flower's process per message.
RUNTIMES = ("warm", "subprocess")


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
    runtime: str = "warm"  # warm: one worker process answers every message; subprocess: Flower's own
    process: LoggedProcess | None = field(default=None, init=False)
    worker: LoggedProcess | None = field(default=None, init=False)
    restarts: int = field(default=0, init=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False)

    @classmethod
    def at_home(
        cls,
        name: str,
        data: str,
        home: Path,
        superlink: Connection,
        *,
        agreement: Path | None = None,
        no_agreement: bool = False,
        **options: object,
    ) -> Node:
        """A node whose audit log, ledger and secret live in ``home``; it enforces ``agreement``, or
        none when its operator says so (``no_agreement``)."""
        home = home.resolve()
        site = NodeSite(
            name,
            data,
            str(agreement.resolve()) if agreement else "",
            str(home / "audit.jsonl"),
            str(home / "privacy.jsonl"),
            no_agreement=no_agreement,
        )
        return cls(site, home, superlink, **options)  # type: ignore[arg-type]

    def start(self) -> None:
        """Start the SuperNode (it connects to the SuperLink on its own, and retries) and, on the
        warm runtime, its worker, which is restarted if it dies."""
        if self.runtime not in RUNTIMES:
            raise RuntimeStartError(f"node runtime {self.runtime!r}; choose one of {list(RUNTIMES)!r}")
        if not self.site.agreement_path and not self.site.no_agreement:
            raise RuntimeStartError(f"node {self.site.name!r}: {UNBOUND}")
        self.home.mkdir(parents=True, exist_ok=True)
        node_secret(self.home)  # the key of its audit chain and data fingerprint, made before any message
        env = {**process_environ(self.home), **self.env, AUDIT_LOG.name: self.site.audit_path}
        if self.site.agreement_path:
            env[AGREEMENT_FILE.name] = self.site.agreement_path
        else:
            env[WITHOUT_AGREEMENT.name] = "1"
            logger.warning("node %s starts without an agreement (--no-agreement): it checks nothing", self.site.name)
        isolation: list[str] = []
        if self.runtime == "subprocess":  # Flower's flwr-clientapp per message, behind the node's gate
            gate = write_shim(self.home / "bin")
            env["PATH"] = os.pathsep.join([str(gate.parent), env["PATH"]])
        else:
            isolation = ["--isolation", "process"]
        transport = ["--insecure"]
        if self.superlink.root_certificates is not None:
            transport = ["--root-certificates", str(self.superlink.root_certificates)]
            if self.auth_key is not None:
                transport += ["--auth-supernode-private-key", str(self.auth_key)]
        runtime_api = free_port()
        log_path = self.log_path or self.home / "node.log"
        supernode = [
            *transport,
            *isolation,
            "--superlink",
            self.superlink.address,
            "--port",
            str(runtime_api),
            "--node-config",
            node_config(self.site.node_config()),
        ]
        worker = ["--runtime-api", f"{LOOPBACK}:{runtime_api}", "--in-flight", str(self.home / "in-flight")]

        def start_supernode() -> LoggedProcess:
            name = f"node-{self.site.name}"
            return start_python(name, SUPERNODE, supernode, env=env, log_path=log_path, cwd=self.home)

        def start_worker() -> LoggedProcess:
            worker_log = log_path.with_name(log_path.stem + "-worker.log")
            name = f"worker-{self.site.name}"
            return start_python(name, "lab.runtime.worker:main", worker, env=env, log_path=worker_log, cwd=self.home)

        self._stopping.clear()
        self.process = start_supernode()
        self.worker = start_worker() if self.runtime == "warm" else None
        threading.Thread(target=self._supervise, args=(start_supernode, start_worker), daemon=True).start()

    def _supervise(
        self, start_supernode: Callable[[], LoggedProcess], start_worker: Callable[[], LoggedProcess]
    ) -> None:
        """Start again whatever of the node exits while it should run: the worker (the message it was
        answering fails like a dropped node's), or the SuperNode (killed, or its coordinator was away
        longer than it retries). A SuperNode that keeps failing is started again less often, up to
        every ``_MOST_BACKOFF`` seconds."""
        backoff: dict[str, float] = {"process": 0.0, "worker": 0.0}
        due: dict[str, float] = {"process": 0.0, "worker": 0.0}
        while not self._stopping.wait(0.5):
            for attribute, start in (("process", start_supernode), ("worker", start_worker)):
                proc: LoggedProcess | None = getattr(self, attribute)
                if proc is None or self._stopping.is_set():
                    continue
                if proc.popen.poll() is None:
                    if time.monotonic() - proc.started > _STEADY:
                        backoff[attribute] = 0.0
                    continue
                if time.monotonic() < due[attribute]:
                    continue
                logger.warning(
                    "node %s: %s exited (status %s); starting it again; the end of its log (%s):\n%s",
                    self.site.name,
                    proc.name,
                    proc.popen.returncode,
                    proc.log_path,
                    proc.tail(5),
                )
                proc.log_file.close()
                # A released node stays away a while: the coordinator, asking every fraction of a
                # second, finds it unavailable and drops the messages the dead SuperNode had taken,
                # which nobody can answer now (the new one, under the same identity, never had them).
                # A node stopped meanwhile starts nothing again.
                if attribute == "process" and self._release(proc.tail(100_000)) and self._stopping.wait(_AWAY):
                    continue
                setattr(self, attribute, start())
                self.restarts += 1  # once the new one is in place: whoever reads the count finds it
                if attribute == "process" and self.worker is not None and not self._stopping.is_set():
                    # A worker serves one SuperNode's runtime API with that SuperNode's tokens: the old
                    # one would only find out by being refused (401) and exit. Start it anew now.
                    stop_trees([self.worker], grace=2.0)
                    self.worker = start_worker()
                backoff[attribute] = min(max(2 * backoff[attribute], 1.0), _MOST_BACKOFF)
                due[attribute] = time.monotonic() + backoff[attribute]

    def _release(self, log_text: str) -> bool:
        """Tell the SuperLink that the node's SuperNode that exited is gone, so that the new one is
        let in now rather than when the old one's heartbeats lapse (up to a minute): Flower's own
        Fleet client, signed with the node's key, sends what a SuperNode sends when it stops.
        Only an authenticated node has an identity to release; a failure is logged and waited out.
        Whether it was released."""
        ids = re.findall(r"SuperNode ID: (\d+)", log_text)
        if self.auth_key is None or self.superlink.root_certificates is None or not ids:
            return False
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_ssh_private_key
        from flwr.proto.fleet_pb2 import DeactivateNodeRequest
        from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor
        from flwr.supercore.protobuf.client import ProtobufClientInterceptor
        from flwr.supernode.fleet_http_client import FleetHttpClient
        from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

        try:
            key = load_ssh_private_key(self.auth_key.read_bytes(), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            interceptors: list[ProtobufClientInterceptor] = [
                RuntimeVersionHttpInterceptor(component_name="SuperNode"),
                NodeAuthHttpInterceptor(key, key.public_key()),
            ]
            address, certificates = self.superlink.address, str(self.superlink.root_certificates)
            with FleetHttpClient.from_server_address(address, False, certificates, interceptors) as fleet:
                fleet.DeactivateNode(DeactivateNodeRequest(node_id=int(ids[-1])))
            logger.info("node %s: released its previous connection (node id %s)", self.site.name, ids[-1])
            return True
        except Exception as exc:  # noqa: BLE001 - the SuperLink lets the node in once the heartbeats lapse
            logger.warning("node %s: could not release its previous connection: %s", self.site.name, exc)
            return False

    def log_text(self) -> str:
        """The SuperNode's log so far."""
        return self.process.tail(10_000) if self.process is not None else ""

    @property
    def processes(self) -> list[LoggedProcess]:
        return [p for p in (self.process, self.worker) if p is not None]

    def stop(self) -> None:
        """Stop the SuperNode, its worker and every process they started."""
        self._stopping.set()
        stop_trees(self.processes)
        self.process = self.worker = None
