"""A federation across machines: the coordinator's host (`lab coordinator init/start/admit/nodes`)
and each organisation's node (`lab node enroll/start`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from lab.cli.governance import node_app
from lab.errors import UsageError
from lab.runtime.processes import interrupt_on_stop_signals

__all__ = ["coordinator_app"]

console = Console()

coordinator_app = typer.Typer(help="The coordinator's host: certificates, start, admitted nodes.", no_args_is_help=True)

CoordinatorHome = Annotated[Path, typer.Option("--home", help="The coordinator's home folder.")]
#: SuperNode log lines that show it reached the SuperLink.
CONNECTED = ("SuperNode ID:",)

NodeRuntime = Annotated[
    str, typer.Option(help="warm: one worker answers every message; subprocess: Flower's process per message.")
]


@coordinator_app.command("init")
def coordinator_init(
    name: Annotated[list[str], typer.Option("--name", help="Host name or IP nodes reach the coordinator at; repeat.")],
    home: CoordinatorHome = Path("coordinator"),
) -> None:
    """Create the federation's CA, the coordinator's TLS certificate and the federation's signing
    key (give every organisation certs/ca.crt and certs/federation.pub)."""
    from lab.runtime.security import init_coordinator, make_federation_key

    if (home / "certs" / "ca.crt").is_file():
        raise UsageError(
            f"{str(home / 'certs')!r} already holds a CA; every node trusts it. Remove the folder yourself to start a "
            "new federation"
        )
    certs = init_coordinator(home / "certs", hosts=(*name, "127.0.0.1", "localhost"))
    console.print(f"CA certificate   {certs.ca_cert}   (hand it to every organisation)")
    console.print(f"TLS certificate  {certs.server_cert}   for {', '.join(name)}")
    public = make_federation_key(home / "certs")
    console.print(f"federation key   {public}   (hand it over with the CA: members check each model's signature)")
    console.print(f"next: lab coordinator start --home {home} --host {name[0]}")


@coordinator_app.command("start")
def coordinator_start(
    host: Annotated[str, typer.Option(help="The address nodes and members reach (one of init's --name).")],
    home: CoordinatorHome = Path("coordinator"),
    fleet_port: Annotated[int, typer.Option(help="Port of the Fleet API, for nodes (TLS).")] = 9092,
    tracking_port: Annotated[int, typer.Option(help="Port of the tracking server, for members (TLS).")] = 5000,
) -> None:
    """Run the coordinator in the foreground: the SuperLink (TLS, node authentication, its state in
    the home), the shared tracking server, and nginx in front; Ctrl-C stops them."""
    from lab.runtime.coordinator_host import CONTROL_PORT, CoordinatorHost, tracking_uri_inside

    coordinator = CoordinatorHost(home, host, fleet_port, tracking_port)
    interrupt_on_stop_signals()  # SIGTERM and SIGHUP stop the unit the way Ctrl-C does
    with coordinator:
        ca = coordinator.coordinator.certs.ca_cert if coordinator.coordinator.certs else ""
        console.print(f"[green]coordinator running[/] in {coordinator.home}")
        console.print(f"  nodes connect to        {host}:{fleet_port}  (TLS, CA {ca})")
        console.print(f"  members read models at  https://{host}:{tracking_port}  (their accounts)")
        key = coordinator.coordinator.signing_key.with_suffix(".pub")
        console.print(f"  every model registered is signed; members check it with {key}")
        console.print(f"  runs are launched here: lab run --coordinator 127.0.0.1:{CONTROL_PORT} --ca {ca} ...")
        console.print(f"  (the Control API and the tracking server inside, {tracking_uri_inside()}, stay on loopback)")
        console.print("Ctrl-C stops it")
        while True:
            coordinator.check_running()
            time.sleep(1.0)


@coordinator_app.command("admit")
def coordinator_admit(
    name: Annotated[str, typer.Argument(help="The organisation's node name.")],
    public_key: Annotated[Path, typer.Argument(help="The public key it handed over (`lab node enroll`).")],
    home: CoordinatorHome = Path("coordinator"),
) -> None:
    """Admit an organisation's node (its key, under its name) and give it a tracking account."""
    from lab.runtime.coordinator_host import admit

    entry = admit(home, name, public_key)
    console.print(f"admitted {escape(name)} as node {entry['node_id']}")
    console.print(f"its tracking account: user {escape(name)}, password in {entry['account']} (hand it over)")


@coordinator_app.command("nodes")
def coordinator_nodes(
    home: CoordinatorHome = Path("coordinator"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the nodes as JSON.")] = False,
) -> None:
    """The admitted nodes and those connected: name, organisation, node id, status, when last seen,
    and the environment fingerprint each reported in its last run."""
    from lab.runtime.coordinator_host import nodes

    rows = nodes(home)
    if as_json:
        print(json.dumps(rows))
        return
    table = RichTable(title="Nodes of this coordinator")
    for column in ("name", "organisation", "node id", "status", "last seen", "environment", "last run"):
        table.add_column(column)
    for row in rows:
        since = f" (online since {row['online_since']})" if row["online_since"] else ""
        table.add_row(
            escape(row["name"]),
            escape(row["organisation"]),
            str(row["node_id"]),
            row["status"],
            row["last_seen"] + since,
            row["environment"][:12],
            str(row["last_run"]),
        )
    console.print(table)


@node_app.command("enroll")
def node_enroll(
    name: Annotated[str, typer.Argument(help="The node's name.")],
    folder: Annotated[Path, typer.Option("--dir", help="Where to write the key pair.")] = Path("keys"),
) -> None:
    """Create the node's key pair (EC, OpenSSH format): hand the public key to the coordinator."""
    from lab.runtime.security import enroll_node

    keys = enroll_node(folder, name)
    console.print(f"private key  {keys.private_key}   (stays here: lab node start --key)")
    console.print(f"public key   {keys.public_key}   (the coordinator admits it: lab coordinator admit {name} FILE)")


@node_app.command("start")
def node_start(
    name: Annotated[str, typer.Option(help="The node's name, as the coordinator admitted it.")],
    coordinator: Annotated[str, typer.Option(help="HOST:PORT of the coordinator's Fleet API.")],
    ca: Annotated[Path, typer.Option(help="The federation's CA certificate.")],
    key: Annotated[Path, typer.Option(help="The node's private key (`lab node enroll`).")],
    data: Annotated[str, typer.Option(help="The node's table: a CSV or Parquet file, or a database URL.")],
    home: Annotated[Path, typer.Option(help="The node's home: its audit log, ledger and Flower home.")],
    agreement: Annotated[Path | None, typer.Option(help="The node's data-use agreement, which it enforces.")] = None,
    no_agreement: Annotated[
        bool, typer.Option("--no-agreement", help="Run without an agreement, on purpose: nothing is checked.")
    ] = False,
    node_runtime: NodeRuntime = "warm",
) -> None:
    """Run this organisation's node in the foreground: the SuperNode with the node's gate, agreement,
    audit log, privacy ledger and environment check; Ctrl-C stops it."""
    from lab.core.sources import TableSource
    from lab.node.audit import AuditLog
    from lab.runtime.connection import Connection
    from lab.runtime.node import Node

    for option, path in (("--ca", ca), ("--key", key), ("--agreement", agreement)):
        if path is not None and not path.is_file():
            raise UsageError(f"{option} {str(path)!r} does not exist; give the path of the file")
    if (agreement is None) == (not no_agreement):
        raise UsageError(
            "give the node's data-use agreement, --agreement FILE (`lab agreement template` starts one), or start "
            "it knowingly without one, --no-agreement; a node without either answers nothing"
        )
    node = Node.at_home(
        name,
        TableSource.of(data).located(),
        home,
        Connection(coordinator, ca.resolve()),
        agreement=agreement,
        no_agreement=no_agreement,
        auth_key=key.resolve(),
        runtime=node_runtime,
    )
    audit = AuditLog(node.site.audit_path)
    shown = len(audit.entries()) if Path(node.site.audit_path).is_file() else 0
    interrupt_on_stop_signals()  # SIGTERM and SIGHUP stop the unit the way Ctrl-C does
    with node:
        console.print(f"[green]node {escape(name)} started[/], connecting to {escape(coordinator)} (home {node.home})")
        if no_agreement:
            console.print("  [yellow]no agreement[/] (--no-agreement): nothing is checked; each audit entry says so")
        connected = False
        while True:
            log = node.log_text()
            if not connected and any(mark in log for mark in CONNECTED):
                connected = True
                console.print(f"  connected to {escape(coordinator)}; waiting for messages")
            entries = audit.entries() if Path(node.site.audit_path).is_file() else []
            for entry in entries[shown:]:
                console.print("  " + _decision(entry))
            shown = len(entries)
            time.sleep(1.0)


def _decision(entry: dict[str, Any]) -> str:
    run, kind, decision = entry.get("run_id"), entry.get("message_type"), entry.get("decision")
    if decision == "accepted":
        return f"[green]answered[/] {escape(str(kind))} of run {run}"
    reason = escape(str(entry.get("reason") or entry.get("clause") or ""))
    return f"[red]{escape(str(decision))}[/] {escape(str(kind))} of run {run}: {reason}"
