"""The bare Flower app: its run config, one `flwr run` of it on the local federation, and its rounds and messages."""

from __future__ import annotations

import json
import time
from typing import Any

import tomli_w

from lab.contract.settings import RunSettings
from lab.runtime.connection import FEDERATION
from lab.runtime.local import LocalFederation
from lab.runtime.processes import executable
from lab.runtime.submit import OUTPUT

from .commands import run_logged
from .costs import node_costs
from .messages import all_nodes, plain_text, received_messages
from .paths import BARE_APP
from .rounds import split_rounds, summarise
from .watch import ProcessWatch, listed

__all__ = ["BARE_TIMEOUT", "bare_run_config", "run_bare", "wait_connected"]

BARE_TIMEOUT = 420.0  # seconds for one `flwr run` of the bare app


def bare_run_config(rounds: int, fraction_evaluate: float, nodes: int) -> dict[str, Any]:
    """The bare app's run config with the lab demo's hyperparameters (lab.contract.settings.RunSettings defaults)."""
    lab = RunSettings.defaults()
    return {
        "num-rounds": rounds,
        **{key: lab[key] for key in ("local-steps", "batch-size", "learning-rate", "seed")},
        "min-nodes": nodes,
        "fraction-evaluate": float(fraction_evaluate),
    }


def run_bare(federation: LocalFederation, watch: ProcessWatch, name: str, run_config: dict[str, Any]) -> dict[str, Any]:
    """Submit the bare app with `flwr run ... --stream` (as lab.runtime.submit.submit_run does, but from its own
    folder: it holds only the app's files, so it needs no staging) and wait for its end."""
    run_dir = federation.workspace / "runs" / name
    run_dir.mkdir(parents=True)
    timings = run_dir / "timings.jsonl"
    config_path = run_dir / "run-config.toml"
    config_path.write_text(tomli_w.dumps({**run_config, "timings-file": str(timings)}), encoding="utf-8")
    log_path = run_dir / OUTPUT
    command = [executable("flwr"), "run", str(BARE_APP), FEDERATION, "--run-config", str(config_path), "--stream"]
    submitted = time.time()
    status = run_logged(
        "flwr run",
        command,
        env=federation.connection.env(run_dir / "flwr-home"),
        log_path=log_path,
        cwd=federation.workspace,
        timeout=BARE_TIMEOUT,
        grace=10,
    )  # a timeout is reported below: the timings file has no end
    exited = time.time()
    stamps = [json.loads(line) for line in timings.read_text(encoding="utf-8").splitlines()] if timings.exists() else []
    if not stamps or stamps[-1]["event"] != "end":
        tail = "\n".join(plain_text(log_path).splitlines()[-15:])
        ended = f"status {status}" if status is not None else f"still running after {BARE_TIMEOUT:.0f} s"
        raise RuntimeError(f"bare run {name!r} did not finish (`flwr run` {ended}):\n{tail}")
    start, end = stamps[0], stamps[-1]
    boundaries = [s["time"] for s in stamps if s["event"] == "round"]
    serverapp = watch.processes("serverapp", since=submitted)
    clientapps = watch.processes("clientapp", since=submitted, until=exited)
    run_id = str(start["run_id"])
    nodes = len(federation.nodes)
    total = all_nodes(received_messages(federation.logs).get(run_id, {}))
    in_rounds = [line for line in watch.messages(since=boundaries[0], until=boundaries[-1]) if line.run == run_id]
    costs = node_costs(
        watch,
        since=boundaries[0],
        until=boundaries[-1],
        messages=len([line for line in in_rounds if line.direction == "Receiving"]),
        runtime=federation.node_runtime,
        clientapps=clientapps,
    )
    stamps_ = [
        ("`flwr run` builds and submits the app", submitted),
        ("ServerApp process starts, imports", serverapp[0].start if serverapp else submitted),
        (f"{run_config['num-rounds']} rounds", start["time"]),
        ("the run ends, `flwr run` exits", end["time"]),
        ("end", exited),
    ]
    return {
        "command": " ".join(["flwr", *command[1:]]),
        "node_runtime": federation.node_runtime,
        "run_config": run_config,
        "run_id": run_id,
        "submit_to_end_seconds": end["time"] - submitted,
        "submit_to_serverapp_ready_seconds": start["time"] - submitted,
        "phases": [{"phase": n, "seconds": nxt - at} for (n, at), (_, nxt) in zip(stamps_, stamps_[1:], strict=False)],
        **summarise(split_rounds(boundaries, clientapps, in_rounds), nodes),
        "clientapps_total": len(clientapps),
        "messages_received": {k: total[k] for k in sorted(total)},
        "messages_per_node_per_round": sum(total.values()) / run_config["num-rounds"] / nodes,
        **costs,
        "cores_during_rounds": watch.cores(boundaries[0], boundaries[-1]),
        "clientapp_processes": listed(clientapps, submitted),
        "run_dir": str(run_dir),
    }


def wait_connected(federation: LocalFederation, timeout: float = 120.0) -> None:
    """Until every SuperNode has registered with the SuperLink (its log names its node ID)."""
    deadline = time.monotonic() + timeout
    logs = [federation.logs / f"node-{n.name}.log" for n in federation.nodes]
    while time.monotonic() < deadline:
        if all(p.exists() and "SuperNode ID" in p.read_text(errors="replace") for p in logs):
            return
        time.sleep(0.25)
    raise RuntimeError(f"the SuperNodes did not connect within {timeout:.0f} s; see {federation.logs}")
