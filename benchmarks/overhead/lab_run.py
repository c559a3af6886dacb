"""The lab demo: `lab demo` run as a user runs it (on either node runtime), its phases from its events, its rounds,
its messages and their cost."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

from lab.contract.events import parse
from lab.runtime.demo import DEMO_NODES
from lab.runtime.environ import private_environ
from lab.runtime.processes import executable
from lab.runtime.submit import OUTPUT

from .commands import run_logged
from .costs import node_costs
from .messages import all_nodes, audited_messages, plain_text, received_messages
from .rounds import split_rounds, summarise
from .watch import ProcessWatch, listed

__all__ = ["LAB_TIMEOUT", "demo_events", "run_lab"]

LAB_TIMEOUT = 900.0  # seconds for the whole `lab demo`


def demo_events(workspace: Path) -> tuple[Path, list[dict[str, Any]]]:
    """The folder of the workspace's last run, and the events its coordinator wrote to the run's streamed output."""
    run_dir = sorted(workspace.glob(f"runs/*/{OUTPUT}"))[-1].parent
    events = [event.to_json() for event in map(parse, plain_text(run_dir / OUTPUT).splitlines()) if event is not None]
    return run_dir, events


def run_lab(workspace: Path, rounds: int, node_runtime: str = "warm") -> dict[str, Any]:
    """`lab demo --node-runtime NODE_RUNTIME` in ``workspace``, exactly as a user runs it; its phases, rounds,
    messages and what answering them cost the nodes."""
    workspace.mkdir(parents=True, exist_ok=True)
    log_path = workspace.parent / f"{workspace.name}-demo.log"
    log_path.unlink(missing_ok=True)  # its output is this run's only
    command = [executable("lab"), "demo", "--rounds", str(rounds), "--node-runtime", node_runtime]
    command += ["--workspace", str(workspace)]
    with ProcessWatch(workspace) as watch:
        launched = time.time()
        # On a timeout, an error or Ctrl-C it is stopped: the lab stops its processes on SIGTERM.
        status = run_logged(
            "lab demo",
            command,
            env=private_environ(PYTHONUNBUFFERED="1", COLUMNS="120"),
            log_path=log_path,
            cwd=workspace.parent,
            timeout=LAB_TIMEOUT,
            grace=60,
        )
        if status is None:
            raise RuntimeError(f"`lab demo` did not finish within {LAB_TIMEOUT:.0f} s; see {log_path}")
        exited = time.time()
    output = plain_text(log_path)
    if status != 0:
        raise RuntimeError(f"`lab demo` failed (status {status}); its output ends with:\n{output[-2000:]}")
    run_dir, events = demo_events(workspace)
    times = {e["event"]: e["time"] for e in events}  # the last of each kind
    trains = [e["time"] for e in events if e["event"] == "train"]
    prepared = max(e["time"] for e in events if e["event"] in ("joined", "warning", "refused"))
    submitted = (run_dir / "run-config.toml").stat().st_mtime  # written just before the app is staged and submitted
    superlink = watch.processes("superlink")
    serverapp = watch.processes("serverapp", since=submitted)
    clientapps = watch.processes("clientapp")
    nodes = len(DEMO_NODES)
    stamps = [
        ("`lab demo` starts: imports, app hash, agreements", launched),
        ("SuperLink, SuperNodes (and their warm workers) start", superlink[0].start if superlink else launched),
        ("`flwr run` builds and submits the app", submitted),
        ("ServerApp imports, opens the MLflow run", serverapp[0].start if serverapp else submitted),
        ("prepare: nodes check env and table, scaler sums, local baselines", times["started"]),
        (f"{rounds} rounds", prepared),
        ("final evaluation (one evaluate message per node)", trains[-1]),
        ("log and register the model", times["evaluate"]),
        ("stop every process, print the table", times["done"]),
        ("end", exited),
    ]
    total: Counter[str] = Counter()
    for per_node in received_messages(workspace / "logs").values():  # the workspace holds this one run
        total.update(all_nodes(per_node))
    wall = re.search(r"wall time (\d+) s", output)
    costs = node_costs(
        watch, since=prepared, until=trains[-1], messages=total["train"], runtime=node_runtime, clientapps=clientapps
    )
    workers = watch.processes("worker")
    return {
        "command": " ".join(["lab", *command[1:]]),
        "node_runtime": node_runtime,
        "wall_seconds": exited - launched,
        "demo_reported_wall_seconds": float(wall.group(1)) if wall else None,
        "submit_to_done_seconds": times["done"] - submitted,
        "submit_to_serverapp_ready_seconds": times["started"] - submitted,  # the ServerApp's MLflow run is open
        "prepare_seconds": prepared - times["started"],
        "final_evaluate_seconds": times["evaluate"] - trains[-1],
        "model_logging_seconds": times["done"] - times["evaluate"],
        "phases": [
            {"phase": name, "seconds": nxt - at} for (name, at), (_, nxt) in zip(stamps, stamps[1:], strict=False)
        ],
        **summarise(split_rounds([prepared, *trains], clientapps, watch.messages()), nodes),
        "prepare_clientapps": len([p for p in clientapps if p.start < prepared]),
        "final_evaluate_clientapps": len([p for p in clientapps if p.start >= trains[-1]]),
        "clientapps_total": len(clientapps),
        "messages_received": {k: total[k] for k in sorted(total)},
        "messages_per_node_per_round": total["train"] / rounds / nodes,
        **costs,
        # the workers' CPU time over the whole demo (their imports and the app's first load included)
        # over every message they answered (preparation and final evaluation included)
        "worker_cpu_seconds_per_message_whole_run": (
            sum(p.cpu for p in workers) / max(sum(total.values()), 1) if workers else None
        ),
        "audit_messages": audited_messages(workspace / "nodes"),
        "foreign_clientapps_seen": len(watch.processes("foreign-clientapp")),
        "foreign_workers_seen": len(watch.processes("foreign-worker")),
        "cores_during_rounds": watch.cores(prepared, trains[-1]),
        "cores_whole_run": watch.cores(launched, exited),
        "clientapp_processes": listed(clientapps, launched),
        "worker_processes": listed(workers, launched),
        "supernode_processes": listed(watch.processes("supernode") + watch.processes("superexec"), launched),
        "run_dir": str(run_dir),
        "log": str(log_path),
    }
