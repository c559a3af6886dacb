"""Run the lab's own ServerApp and ClientApp on Flower's simulation runtime (Ray, in this process).

The benchmarks need dozens of federated runs (strategies x seeds, and up to 64 nodes), which the
deployment runtime, with a fresh process per message, cannot give in minutes. Flower's simulation
runtime runs the same apps (``federation.server_app.app``, ``federation.client_app.app``,
unchanged), the nodes served by Ray actors. Only two things are added around the ClientApp here:

- each simulated node is given the ``node-name`` and ``data-path`` a real SuperNode gets from its
  ``--node-config`` (the simulation runtime only numbers its nodes);
- every message is measured: bytes in and out (Flower's ``count_bytes`` of each record) and the
  peak memory of the process that handled it.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

RUNTIME = "Flower simulation runtime (Ray backend; nodes served in turn by a pool of 1-CPU Ray actors)"


@dataclass(frozen=True)
class SimulatedNode:
    name: str
    data_path: str


def _size(content: RecordDict) -> int:
    """Bytes of a message's records: the arrays' payload, and the other records as serialised
    (Flower's ``count_bytes`` fails on some list values)."""
    return sum(
        record.count_bytes() if isinstance(record, ArrayRecord) else len(record.deflate())
        for record in content.values()
    )


class SimulatedNodes(ClientApp):
    """The lab's ClientApp, as each numbered simulated node: its node config, and a measurement."""

    def __init__(self, app: ClientApp, nodes: list[SimulatedNode], measurements: str) -> None:
        super().__init__()
        self.app = app
        self.nodes = nodes
        self.measurements = measurements

    def __call__(self, message: Message, context: Context) -> Message:
        node = self.nodes[int(context.node_config["partition-id"])]
        context.node_config = {**context.node_config, "node-name": node.name, "data-path": node.data_path}
        started = time.monotonic()
        reply = self.app(message, context)
        row = {
            "node": node.name,
            "type": message.metadata.message_type,
            "round": _round(message),
            "bytes_in": _size(message.content),
            "bytes_out": 0 if reply.has_error() else _size(reply.content),
            "seconds": time.monotonic() - started,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "pid": os.getpid(),
        }
        with open(self.measurements, "a", encoding="utf-8") as fh:  # one short line per message
            fh.write(json.dumps(row) + "\n")
        return reply


def _round(message: Message) -> int:
    config = message.content.config_records.get("config")
    value = config.get("server-round", 0) if config is not None else 0
    return int(value) if isinstance(value, int | float) else 0


def simulate(
    run_config: dict[str, Any], nodes: list[SimulatedNode], workdir: Path, *, ray_address: str
) -> dict[str, Any]:
    """One federated run of the lab's apps on the simulation runtime, its nodes as actors of the
    Ray cluster at ``ray_address`` (one cluster serves every run: starting one per run costs more
    than the run).

    Returns the coordinator's final event (the run's summary), its progress events and the
    per-message measurements. Raises RuntimeError when the run did not end with ``done``.
    """
    from flwr.app import Context
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    from federation.client_app import app as client_app
    from federation.server_app import app as server_app

    workdir.mkdir(parents=True, exist_ok=True)
    events = workdir / "events.jsonl"
    measurements = workdir / "messages.jsonl"
    for path in (events, measurements):
        path.unlink(missing_ok=True)
    config = {**run_config, "events-file": str(events)}
    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=config)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    _run_simulation(
        num_supernodes=len(nodes),
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=SimulatedNodes(client_app, nodes, str(measurements)),
        server_app=server_app,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"address": ray_address, "logging_level": "error", "log_to_driver": False},
        },
        server_app_context=context,
    )
    lines = [json.loads(line) for line in events.read_text(encoding="utf-8").splitlines()] if events.exists() else []
    final = lines[-1] if lines else {"event": "missing"}
    if final["event"] != "done":
        raise RuntimeError(f"the simulated run did not finish: {final.get('reason', final['event'])}")
    messages = (
        [json.loads(line) for line in measurements.read_text(encoding="utf-8").splitlines()]
        if measurements.exists()
        else []
    )
    coordinator_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the ServerApp ran in this process
    return {"final": final, "events": lines, "messages": messages, "coordinator_peak_rss_mb": coordinator_mb}
