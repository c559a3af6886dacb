"""The coordinator's host, as `lab coordinator start` runs it: the SuperLink (TLS, node
authentication, its state in the home), the shared tracking server, and nginx in front of both.

Only nginx listens on the host's public address: the Fleet API (for nodes) and the tracking
server (for members, with their accounts). The SuperLink's Control and Runtime APIs and the
tracking server itself stay on loopback; runs are launched on this host, or from an analyst's
machine through an SSH tunnel to the Control API.

The home holds ``certs/`` (from `lab coordinator init`), ``superlink.db``, ``tracking/``,
``front/``, ``logs/`` and the roster (lab.runtime.roster: who is admitted, what each reported).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.core.environ import ROSTER
from lab.errors import RuntimeStartError, UsageError
from lab.runtime.connection import Connection
from lab.runtime.coordinator import Coordinator
from lab.runtime.front import Front
from lab.runtime.processes import LOOPBACK, LoggedProcess, Started
from lab.runtime.roster import admitted, seen, write_admitted
from lab.runtime.security import CoordinatorCerts
from lab.runtime.tracking_server import ADMIN, TrackingServer

__all__ = [
    "CONTROL_PORT",
    "CoordinatorHost",
    "admit",
    "certificates",
    "control",
    "nodes",
    "tracking_uri_inside",
]

#: The SuperLink's port on loopback (Control, Runtime and, behind nginx, Fleet API).
CONTROL_PORT = 9093
#: The tracking server's port on loopback.
TRACKING_PORT_INSIDE = 5001


def certificates(home: Path) -> CoordinatorCerts:
    """The certificates `lab coordinator init` wrote in ``home/certs``."""
    folder = home / "certs"
    certs = CoordinatorCerts(folder / "ca.crt", folder / "server.pem", folder / "server.key")
    missing = [p for p in (certs.ca_cert, certs.server_cert, certs.server_key) if not p.is_file()]
    if missing:
        raise UsageError(
            f"the coordinator's home {str(home)!r} has no certificates ({missing[0].name} is missing); "
            "create them with `lab coordinator init --name HOST-OR-IP --home DIR`"
        )
    return certs


@dataclass
class CoordinatorHost(Started):
    """Everything `lab coordinator start` runs; ``host`` is the address nodes and members reach."""

    home: Path
    host: str
    fleet_port: int = 9092
    tracking_port: int = 5000
    coordinator: Coordinator = field(init=False)
    tracking: TrackingServer = field(init=False)
    front: Front = field(init=False)

    def __post_init__(self) -> None:
        self.home = self.home.resolve()
        self.tracking = TrackingServer(self.home / "tracking", port=TRACKING_PORT_INSIDE)
        certs = certificates(self.home)
        # The ServerApp logs to the tracking server with the coordinator's account, from its
        # environment (never a command line nor a run's settings).
        env = {
            "MLFLOW_TRACKING_USERNAME": ADMIN,
            "MLFLOW_TRACKING_PASSWORD": self.tracking.admin_password,
            ROSTER.name: str(self.home),  # the ServerApp holds each node to its admitted name
        }
        self.coordinator = Coordinator(self.home, secure=True, port=CONTROL_PORT, certs=certs, env=env)
        self.front = Front(
            self.home / "front",
            self.host,
            self.fleet_port,
            CONTROL_PORT,
            certs.server_cert,
            certs.server_key,
            certs.ca_cert,
            tracking_port=self.tracking_port,
            tracking_port_inside=TRACKING_PORT_INSIDE,
        )

    @property
    def connection(self) -> Connection:
        """The Control API on loopback: how runs are launched (`lab run --coordinator`)."""
        return self.coordinator.connection

    @property
    def processes(self) -> list[LoggedProcess]:
        others = [p for p in (self.tracking.process, self.front.process) if p is not None]
        return self.coordinator.processes + others

    def start(self) -> None:
        """Start the SuperLink, the tracking server and the front, in that order."""
        self.coordinator.start()
        self.tracking.start()
        self.front.start()

    def stop(self) -> None:
        self.front.stop()
        self.tracking.stop()
        self.coordinator.stop()

    def check_running(self) -> None:
        """Raise RuntimeStartError when one of the host's processes has exited."""
        for proc in self.processes:
            proc.check_running()
        if not self.processes:
            raise RuntimeStartError("the coordinator is not running")


def control(home: Path) -> Connection:
    """The running coordinator's Control API, on this host's loopback."""
    return Connection(f"{LOOPBACK}:{CONTROL_PORT}", certificates(home).ca_cert)


def tracking_uri_inside() -> str:
    """The tracking server as the ServerApp (and anything else on this host) reaches it."""
    return f"http://{LOOPBACK}:{TRACKING_PORT_INSIDE}"


def admit(home: Path, name: str, public_key: Path) -> dict[str, Any]:
    """Admit an organisation to the running coordinator: register its node's public key under its
    name, and give it a tracking account that can read the registry; what was recorded."""
    home = home.resolve()
    known = admitted(home)
    if name in known:
        raise UsageError(f"{name!r} is already admitted (node {known[name]['node_id']}); pick another name")
    if not public_key.is_file():
        raise UsageError(
            f"public key {str(public_key)!r} does not exist; the organisation makes it with `lab node enroll`"
        )
    node_id = control(home).register(public_key, home / "flwr-home", name=name)
    TrackingServer(home / "tracking", port=TRACKING_PORT_INSIDE).add_account(name)
    known[name] = {
        "node_id": node_id,
        "public_key": public_key.read_text(encoding="utf-8").strip(),
        "admitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "account": str(home / "tracking" / "accounts" / name),
    }
    write_admitted(home, known)
    return known[name]


def nodes(home: Path) -> list[dict[str, Any]]:
    """Every admitted node and every other node the SuperLink knows: name, organisation, node id,
    status, when last seen, and the environment fingerprint it last reported in a run."""
    home = home.resolve()
    listed = control(home).flwr_json(["supernode", "list"], home / "flwr-home", what="listing the nodes")
    by_id = {int(n["node-id"]): n for n in listed.get("nodes", [])}
    reported = seen(home)
    rows = []
    for name, entry in sorted(admitted(home).items()):
        rows.append(_row(name, int(entry["node_id"]), by_id.pop(int(entry["node_id"]), {}), reported.get(name, {})))
    for node_id, known in by_id.items():
        rows.append(_row("(not admitted by the lab)", node_id, known, {}))
    return rows


def _row(name: str, node_id: int, known: dict[str, Any], reported: dict[str, Any]) -> dict[str, Any]:
    status = known.get("status", "registered")
    return {
        "name": name,
        "organisation": reported.get("organisation", ""),
        "node_id": node_id,
        "status": status,
        "last_seen": "now" if status == "online" else known.get("offline-at") or "never",
        "online_since": known.get("online-at", "") if status == "online" else "",
        "environment": reported.get("environment", ""),
        "last_run": reported.get("run", ""),
    }
