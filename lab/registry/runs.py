"""The coordinator's MLflow runs: their state, whether they can be resumed, and the runs a dead
coordinator left RUNNING, which are marked KILLED with the reason.

Every coordinator tags its run with its host, process id and the process's start time. A run
still RUNNING whose coordinator process is gone from that host is an orphan: nothing will ever
finish it. The next run, a resume, and `lab runs --clean` close such runs; a run whose
coordinator ran on another host is left to that host.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from lab.registry.checkpoints import ROUND_TAG
from lab.registry.tracking import patience, store, tracking_errors

__all__ = [
    "FLOWER_RUN",
    "FLOWER_RUN_TAGS",
    "KILLED_REASON",
    "RESUMED_BY",
    "RunRow",
    "close_orphans",
    "coordinator_gone",
    "coordinator_tags",
    "list_runs",
    "run_tags",
    "runs_of",
]

logger = logging.getLogger(__name__)

HOST, PID, STARTED = "lab.coordinator.host", "lab.coordinator.pid", "lab.coordinator.started"
#: The tag saying why a run was marked KILLED.
KILLED_REASON = "lab.killed_reason"
#: The tags naming the Flower run that opened an MLflow run, and the one that last resumed it.
FLOWER_RUN, RESUMED_BY = "flwr.run_id", "lab.resumed_by.flwr.run_id"
FLOWER_RUN_TAGS = (FLOWER_RUN, RESUMED_BY)


def coordinator_tags() -> dict[str, str]:
    """Tags naming this process as a run's coordinator."""
    return {
        HOST: socket.gethostname(),
        PID: str(os.getpid()),
        STARTED: f"{psutil.Process().create_time():.3f}",
    }


def coordinator_gone(tags: dict[str, str]) -> str | None:
    """Why the coordinator of a run with ``tags`` is known to be gone; None while it runs, or when
    it ran on another host (this host cannot tell)."""
    host, pid, started = tags.get(HOST), tags.get(PID), tags.get(STARTED)
    if not host or not pid or not started or host != socket.gethostname():
        return None
    try:
        process = psutil.Process(int(pid))
        if abs(process.create_time() - float(started)) < 1.0 and process.status() != psutil.STATUS_ZOMBIE:
            return None  # the same process, still running
    except psutil.Error:  # gone (or a zombie whose details can no longer be read)
        pass
    return f"its coordinator (process {pid} on {host}) stopped without closing the run"


@dataclass(frozen=True)
class RunRow:
    """One run as `lab runs` lists it."""

    run_id: str
    name: str
    experiment: str
    status: str
    started: str
    rounds_done: int | None  # the last checkpointed round of a training run
    rounds: int | None
    resumable: bool
    note: str


def list_runs(tracking_uri: str, *, limit: int = 50) -> list[RunRow]:
    """The newest ``limit`` runs of every experiment, newest first."""
    client = store(tracking_uri)
    with tracking_errors(f"cannot list the runs of {tracking_uri!r}", "check the tracking URI"):
        experiments = {e.experiment_id: e.name for e in client.search_experiments()}
        runs = client.search_runs(list(experiments), max_results=limit, order_by=["attributes.start_time DESC"])
    rows = []
    for run in runs:
        tags, params = run.data.tags, run.data.params
        done = int(tags[ROUND_TAG]) if ROUND_TAG in tags else None
        rounds = int(params["num_rounds"]) if "num_rounds" in params and not params.get("query") else None
        orphan = coordinator_gone(tags) if run.info.status == "RUNNING" else None
        note = tags.get(KILLED_REASON, "") or (orphan or "")
        rows.append(
            RunRow(
                run_id=run.info.run_id,
                name=run.info.run_name or "",
                experiment=experiments.get(run.info.experiment_id, run.info.experiment_id),
                status=run.info.status,
                started=time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000)),
                rounds_done=done,
                rounds=rounds,
                resumable=done is not None and (run.info.status in ("FAILED", "KILLED") or orphan is not None),
                note=note,
            )
        )
    return rows


def close_orphans(tracking_uri: str) -> dict[str, str]:
    """Mark KILLED, with the reason, every RUNNING run whose coordinator is gone from this host."""
    client = store(tracking_uri)
    closed: dict[str, str] = {}
    with tracking_errors(f"cannot close the orphaned runs of {tracking_uri!r}", "check the tracking URI"):
        experiments = [e.experiment_id for e in client.search_experiments()]
        running = client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'", max_results=1000)
        for run in running:
            reason = coordinator_gone(run.data.tags)
            if reason is None:
                continue
            client.set_tag(run.info.run_id, KILLED_REASON, reason)
            client.set_terminated(run.info.run_id, "KILLED")
            logger.warning("marked MLflow run %s KILLED: %s", run.info.run_id, reason)
            closed[run.info.run_id] = reason
    return closed


def runs_of(tracking_uri: str, flower_run_ids: list[str]) -> list[str]:
    """The MLflow runs the coordinators of these Flower runs opened (or resumed)."""
    if not flower_run_ids:
        return []
    client = store(tracking_uri)
    found: list[str] = []
    with tracking_errors(f"cannot read the runs of {tracking_uri!r}", "check the tracking URI"):
        experiments = [e.experiment_id for e in client.search_experiments()]
        for flower_id in flower_run_ids:
            for tag in FLOWER_RUN_TAGS:
                runs = client.search_runs(experiments, filter_string=f"tags.`{tag}` = '{int(flower_id)}'")
                found += [r.info.run_id for r in runs if r.info.run_id not in found]
    return found


def run_tags(tracking_uri: str, run_id: str) -> dict[str, str]:
    """Run ``run_id``'s tags; none where the store cannot be read within about 3 s (a tracking
    server that is down is not waited for: MLflow's own retries take minutes)."""
    try:
        with patience(3):
            return dict(store(tracking_uri).get_run(run_id).data.tags)
    except Exception:  # noqa: BLE001
        return {}


def compared(tracking_uri: str, run_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Each run's name, status, strategy, rounds and final metrics (not the per-node ones), one
    row a run, for runs side by side."""
    client = store(tracking_uri)
    rows = []
    with tracking_errors(f"cannot read the runs of {tracking_uri!r}", "check the tracking URI and the run ids"):
        for run_id in run_ids:
            run = client.get_run(run_id)
            params, metrics = run.data.params, run.data.metrics
            final = {
                k.removeprefix("final."): v for k, v in metrics.items() if k.startswith("final.") and ".node." not in k
            }
            rows.append(
                {
                    "run_id": run_id,
                    "name": run.info.run_name,
                    "status": run.info.status,
                    "strategy": params.get("strategy"),
                    "rounds": params.get("num_rounds"),
                    **final,
                }
            )
    return rows


def metric_curves(tracking_uri: str, run_ids: Sequence[str], metric: str) -> dict[str, dict[int, float]]:
    """``metric`` round by round (step: value) of each run, keyed by its strategy and the start of its id."""
    client = store(tracking_uri)
    series = {}
    with tracking_errors(f"cannot read the runs of {tracking_uri!r}", "check the tracking URI and the run ids"):
        for run_id in run_ids:
            name = f"{client.get_run(run_id).data.params.get('strategy', '')} {run_id[:8]}".strip()
            series[name] = {m.step: m.value for m in client.get_metric_history(run_id, metric)}
    return series
