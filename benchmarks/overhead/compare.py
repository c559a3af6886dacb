"""The benchmark: the lab demo on both node runtimes and the bare Flower app on the same runtime, and where the
lab's time goes."""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from lab.runtime.demo import DEMO_NODES
from lab.runtime.local import LocalFederation, NodeSpec

from .bare_run import bare_run_config, run_bare, wait_connected
from .goals import GOALS, assess
from .lab_run import run_lab
from .paths import DATA
from .probes import RUNTIME_STEP, probe_clientapp
from .rounds import SUPERNODE_IDLE_POLL, SUPERNODE_REPLY_POLL
from .watch import ProcessWatch

__all__ = ["BARE_RUNTIME", "RUNTIME", "extra", "idle_poll", "measure", "wait_quiet"]

RUNTIME = "Flower deployment runtime, 1 SuperLink + 4 SuperNodes on loopback"
BARE_RUNTIME = "subprocess"  # Flower's own: a flwr-clientapp process per message


def wait_quiet(limit: float, threshold: float = 0.25, window: float = 5.0) -> float:
    """Wait up to ``limit`` seconds until the machine's other processes keep fewer than ``threshold`` cores
    busy over ``window`` seconds; the seconds waited."""
    began = time.time()
    with ProcessWatch(Path(tempfile.gettempdir()) / "lab-overhead-no-workspace") as watch:
        while time.time() - began < limit:
            time.sleep(window)
            busy = watch.cores(time.time() - window, time.time())["others"]
            if busy is not None and busy < threshold:
                break
    return time.time() - began


def measure(workspace: Path, rounds: int = 5, quiet_wait: float = 0.0) -> dict[str, Any]:
    """Run the lab demo on each node runtime (warm, then subprocess) and the bare Flower app (1 and 2 messages per
    node per round, on Flower's process per message) on the same runtime, in sub-workspaces of ``workspace``;
    their seconds per round, CPU seconds per message and peak memory per node, the ratios, the issue's goals,
    and where the lab's time goes.

    With ``quiet_wait`` > 0, each federation waits up to that many seconds for other processes to leave the
    CPUs alone first (another test suite on a 2-core machine doubles every figure).
    """
    workspace = workspace.resolve()
    if workspace.exists():  # counts come from the workspace's logs: start from an empty one
        shutil.rmtree(workspace)
    began, load_before = time.time(), os.getloadavg()
    waited: list[float] = []
    labs: dict[str, dict[str, Any]] = {}
    for runtime, folder in (("warm", "lab"), ("subprocess", "lab-subprocess")):
        waited += [wait_quiet(quiet_wait)] if quiet_wait > 0 else []
        labs[runtime] = run_lab(workspace / folder, rounds, runtime)
    lab, lab_sub = labs["warm"], labs["subprocess"]
    waited += [wait_quiet(quiet_wait)] if quiet_wait > 0 else []
    # The bare app is not the lab's: its nodes hold no agreement (none could approve it), as Flower's own.
    nodes = [NodeSpec(name, DATA / file, no_agreement=True) for name, file in DEMO_NODES.items()]
    bare: dict[str, dict[str, Any]] = {}
    bare_ws = workspace / "bare"
    # Bare Flower as a Flower user runs it: a flwr-clientapp process per message (not the lab's warm worker).
    with ProcessWatch(bare_ws) as watch, LocalFederation(bare_ws, nodes, node_runtime=BARE_RUNTIME) as federation:
        wait_connected(federation)
        for name, fraction in (("train-only", 0.0), ("train+evaluate", 1.0)):
            bare[name] = run_bare(federation, watch, name, bare_run_config(rounds, fraction, len(nodes)))
    foreign = len(watch.processes("foreign-clientapp")) + sum(r["foreign_clientapps_seen"] for r in labs.values())
    foreign_workers = len(watch.processes("foreign-worker")) + sum(r["foreign_workers_seen"] for r in labs.values())
    probes = probe_clientapp()
    one, two = bare["train-only"], bare["train+evaluate"]
    runs = {"lab": lab, "lab_subprocess": lab_sub, "bare_train_only": one, "bare_train_evaluate": two}
    result = {
        "runtime": RUNTIME,
        "rounds": rounds,
        "nodes": list(DEMO_NODES),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "foreign_clientapps_seen": foreign,  # another federation's ClientApps running meanwhile
            "foreign_workers_seen": foreign_workers,  # another federation's warm workers (they idle-poll)
            "waited_for_quiet_seconds": waited,
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(began)),
        "benchmark_seconds": time.time() - began,
        "node_runtime": {k: r["node_runtime"] for k, r in runs.items()},
        "seconds_per_round": {k: r["seconds_per_round"] for k, r in runs.items()},
        "seconds_each_round": {k: r["seconds_each_round"] for k, r in runs.items()},
        "messages_per_node_per_round": {k: r["messages_per_node_per_round"] for k, r in runs.items()},
        "cpu_seconds_per_message": {k: r["cpu_seconds_per_message"] for k, r in runs.items()},
        "supernode_cpu_seconds_per_message": {k: r["supernode_cpu_seconds_per_message"] for k, r in runs.items()},
        "peak_rss_mb_per_node": {k: r["peak_rss_mb_per_node"] for k, r in runs.items()},
        "ratio": {
            "lab_vs_bare_train_only": lab["seconds_per_round"] / one["seconds_per_round"],
            "lab_vs_bare_train_evaluate": lab["seconds_per_round"] / two["seconds_per_round"],
            "lab_subprocess_vs_bare_train_only": lab_sub["seconds_per_round"] / one["seconds_per_round"],
            "lab_vs_lab_subprocess": lab["seconds_per_round"] / lab_sub["seconds_per_round"],
        },
        "goals": dict(GOALS),
        "demo_wall_seconds": lab["wall_seconds"],
        "demo_reported_wall_seconds": lab["demo_reported_wall_seconds"],
        "demo_submit_to_done_seconds": lab["submit_to_done_seconds"],
        "demo_subprocess_wall_seconds": lab_sub["wall_seconds"],
        "demo_subprocess_submit_to_done_seconds": lab_sub["submit_to_done_seconds"],
        "idle_poll": idle_poll(runs),
        "lab_extra": extra(lab, one, probes),
        "clientapp_probe": probes,
        "lab": lab,
        "lab_subprocess": lab_sub,
        "bare": bare,
    }
    result["goals_met"] = {row["goal"]: row["met"] for row in assess(result)}
    return result


def idle_poll(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The SuperNode's idle poll in each run: how long a round's first message waited, from the round's start
    (the ServerApp pushes it right after the previous round's aggregate) until the node's SuperNode pulled it
    (its log line appeared), mean over rounds; per node (mean) and for the node that pulled last."""
    out: dict[str, Any] = {"sleep_seconds": SUPERNODE_IDLE_POLL, "reply_poll_seconds": SUPERNODE_REPLY_POLL}
    for key, run in runs.items():
        per_round = run["per_round"]
        out[key] = {
            "wait_mean": per_round.get("poll_wait"),
            "wait_last": per_round.get("poll_wait_last"),
            "seconds_per_round": run["seconds_per_round"],
            "share_of_round": (per_round["poll_wait_last"] / run["seconds_per_round"])
            if "poll_wait_last" in per_round
            else None,
        }
    return out


def extra(lab: dict[str, Any], bare: dict[str, Any], probes: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Where the lab's extra time goes, against the bare app with as many messages per round."""
    per_round = {k: lab["per_round"].get(k, 0.0) - bare["per_round"].get(k, 0.0) for k in lab["per_round"]}
    rounds = len(lab["seconds_each_round"])
    work = {
        label: probes["lab"].get(label, 0.0) - probes["bare"].get(label, 0.0)
        for label in probes["lab"]
        if label != RUNTIME_STEP[0]
    }
    return {
        "per_round_seconds": lab["seconds_per_round"] - bare["seconds_per_round"],
        "per_round": per_round,  # every figure of one round the lab has (rounds.summarise): lab minus bare
        "per_clientapp_probe": work,  # lab minus bare, steps a ClientApp process makes, measured apart
        "whole_run": {
            "submit until the ServerApp is ready (app build, ServerApp start, MLflow run)": (
                lab["submit_to_serverapp_ready_seconds"] - bare["submit_to_serverapp_ready_seconds"]
            ),
            "prepare (an extra message per node)": lab["prepare_seconds"],
            f"{rounds} rounds": rounds * (lab["seconds_per_round"] - bare["seconds_per_round"]),
            "final evaluation (an extra message per node)": lab["final_evaluate_seconds"],
            "log and register the model": lab["model_logging_seconds"],
            "total, submit to done vs submit to end": lab["submit_to_done_seconds"] - bare["submit_to_end_seconds"],
        },
    }
