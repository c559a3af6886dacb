"""The benchmark: the lab demo and the bare Flower app on the same runtime, and where the lab's extra time goes."""

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
from .lab_run import run_lab
from .paths import DATA
from .probes import RUNTIME_STEP, probe_clientapp
from .watch import ProcessWatch

__all__ = ["RUNTIME", "extra", "measure", "wait_quiet"]

RUNTIME = "Flower deployment runtime, 1 SuperLink + 4 SuperNodes on loopback"


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
    """Run the lab demo and the bare Flower app (1 and 2 messages per node per round) on the same runtime,
    in sub-workspaces of ``workspace``; their seconds per round, the ratios and where the lab's time goes.

    With ``quiet_wait`` > 0, each federation waits up to that many seconds for other processes to leave the
    CPUs alone first (another test suite on a 2-core machine doubles every figure).
    """
    workspace = workspace.resolve()
    if workspace.exists():  # counts come from the workspace's logs: start from an empty one
        shutil.rmtree(workspace)
    began, load_before = time.time(), os.getloadavg()
    waited = [wait_quiet(quiet_wait)] if quiet_wait > 0 else []
    lab = run_lab(workspace / "lab", rounds)
    waited += [wait_quiet(quiet_wait)] if quiet_wait > 0 else []
    nodes = [NodeSpec(name, DATA / file) for name, file in DEMO_NODES.items()]
    bare: dict[str, dict[str, Any]] = {}
    bare_ws = workspace / "bare"
    with ProcessWatch(bare_ws) as watch, LocalFederation(bare_ws, nodes) as federation:
        wait_connected(federation)
        for name, fraction in (("train-only", 0.0), ("train+evaluate", 1.0)):
            bare[name] = run_bare(federation, watch, name, bare_run_config(rounds, fraction, len(nodes)))
    foreign = len(watch.processes("foreign-clientapp")) + lab["foreign_clientapps_seen"]
    probes = probe_clientapp()
    one, two = bare["train-only"], bare["train+evaluate"]
    return {
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
            "waited_for_quiet_seconds": waited,
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(began)),
        "benchmark_seconds": time.time() - began,
        "seconds_per_round": {
            "lab": lab["seconds_per_round"],
            "bare_train_only": one["seconds_per_round"],
            "bare_train_evaluate": two["seconds_per_round"],
        },
        "seconds_each_round": {
            "lab": lab["seconds_each_round"],
            "bare_train_only": one["seconds_each_round"],
            "bare_train_evaluate": two["seconds_each_round"],
        },
        "messages_per_node_per_round": {
            "lab": lab["messages_per_node_per_round"],
            "bare_train_only": one["messages_per_node_per_round"],
            "bare_train_evaluate": two["messages_per_node_per_round"],
        },
        "ratio": {
            "lab_vs_bare_train_only": lab["seconds_per_round"] / one["seconds_per_round"],
            "lab_vs_bare_train_evaluate": lab["seconds_per_round"] / two["seconds_per_round"],
        },
        "goals": {"ratio_at_most": 1.15, "demo_seconds_after_setup_under": 90.0},
        "demo_wall_seconds": lab["wall_seconds"],
        "demo_reported_wall_seconds": lab["demo_reported_wall_seconds"],
        "demo_submit_to_done_seconds": lab["submit_to_done_seconds"],
        "lab_extra": extra(lab, one, probes),
        "clientapp_probe": probes,
        "lab": lab,
        "bare": bare,
    }


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
        "per_round": per_round,  # dispatch, span, collect, clientapp_seconds: lab minus bare
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
