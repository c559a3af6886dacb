"""Run the lab's own ServerApp and ClientApp on Flower's simulation runtime (Ray, in this process).

The benchmarks need dozens of federated runs (strategies x seeds, and up to 64 nodes), which the
deployment runtime, with a fresh process per message, cannot give in minutes. Flower's simulation
runtime runs the same apps (``federation.server_app.app``, ``federation.client_app.app``,
unchanged), the nodes served by Ray actors. Only two things are added around the ClientApp here:

- each simulated node is given the ``node-name`` and ``data-path`` a real SuperNode gets from its
  ``--node-config`` (the simulation runtime only numbers its nodes), and runs without an agreement
  on purpose (``no-agreement``: these are benchmarks on public data, which no agreement governs);
- every message is measured: bytes in and out (Flower's ``count_bytes`` of each record) and the
  peak memory of the process that handled it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import active_children, get_context
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from lab.contract import events
from lab.contract.settings import RunSettings

ROOT = Path(__file__).resolve().parent.parent

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
        # Benchmark nodes on public data hold no agreement, on purpose (a SuperNode's --no-agreement).
        context.node_config = {
            **context.node_config,
            "node-name": node.name,
            "data-path": node.data_path,
            "no-agreement": "true",
        }
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


def simulate(settings: RunSettings, nodes: list[SimulatedNode], workdir: Path, *, ray_address: str) -> dict[str, Any]:
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
    output = workdir / "output.log"  # the ServerApp's output, with its progress events (lab.contract.events)
    measurements = workdir / "messages.jsonl"
    for path in (output, measurements):
        path.unlink(missing_ok=True)
    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=settings.to_run_config())
    logging.getLogger("flwr").setLevel(logging.WARNING)
    with output.open("w", encoding="utf-8") as sink, contextlib.redirect_stdout(sink):
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
    parsed = [events.parse(line) for line in output.read_text(encoding="utf-8").splitlines()]
    lines = [event.to_json() for event in parsed if event is not None]
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


def _worker_setup() -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from lab.core.environ import PRIVATE_ENV

    os.environ.update(PRIVATE_ENV)


def _job(job: dict[str, Any]) -> dict[str, Any]:
    """One simulated run (in a worker process): its summary, history and measurements.

    ``job`` holds the spec's path, the nodes as (name, data source) pairs, the run settings, a
    work folder and, for a run that registers, the federation's signing key; the settings below
    are the defaults a job's own settings override. A failed run raises, or with ``keep_going``
    returns the job with its ``error``.
    """
    from lab.core.environ import SIGNING_KEY
    from lab.core.spec import load_spec
    from lab.runtime.run import run_settings

    if job.get("signing_key"):  # the federation's key: a run that registers signs its model with it
        os.environ[SIGNING_KEY.name] = job["signing_key"]
    workdir = Path(job["workdir"])
    spec = load_spec(Path(job["spec"]))
    nodes = [SimulatedNode(name, path) for name, path in job["nodes"]]
    values = {
        "register": False,
        # Ray puts its own vendored packages (colorama) on its workers' path; a strict node
        # would refuse that drift. Warn still checks every node and flags the run.
        "environment_policy": "warn",
        "min_nodes": len(nodes),
        # A simulated node that has not answered is waiting its turn for the cluster's actors (runs
        # that share the cluster take turns, run_jobs), not lost: one that fails answers with its
        # error. So the runs wait as long as a whole benchmark may take.
        "round_timeout": 3600.0,
        **job["settings"],
    }
    settings = run_settings(spec, tracking_uri=job["tracking_uri"], nodes=len(nodes), values=values)
    try:
        result = simulate(settings, nodes, workdir, ray_address=job["ray_address"])
    except Exception as exc:
        failure = f"simulated run {workdir.name} failed: {exc} (its events are in {workdir})"
        if job.get("keep_going"):  # the caller reports each job's outcome itself
            return {**job, "error": failure}
        raise RuntimeError(failure) from exc
    return {**job, **result}


def run_jobs(
    jobs: list[dict[str, Any]], workers: int, progress: Callable[[dict[str, Any]], None], *, tracking_uri: str
) -> list[dict[str, Any]]:
    """Run simulated jobs ``workers`` at a time (each waits on Ray and MLflow more than it computes)
    on one Ray cluster this process starts and stops, every run recorded at ``tracking_uri``."""
    import ray

    results: list[dict[str, Any]] = []
    # Flower sizes each run's actor pool to the whole cluster, so runs that share it take turns
    # for actors: ``workers`` only overlaps one run's start (process, imports) with another's rounds.
    _start_ray()
    try:
        address = ray.get_runtime_context().gcs_address
        results = _run_on(address, jobs, workers, progress, tracking_uri)
    finally:
        ray.shutdown()
    return results


def _start_ray(attempts: int = 3) -> None:
    """Start this process's Ray cluster. Ray gives its raylet a fixed 30 s to register; a loaded
    machine can take longer, and then the next attempt usually succeeds."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, logging_level="error", log_to_driver=False)
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for its startup timeout
            ray.shutdown()
            if attempt == attempts or "timed out during startup" not in str(exc):
                raise
            print(f"Ray did not start in time (attempt {attempt} of {attempts}); trying again", file=sys.stderr)


def _run_on(
    address: str,
    jobs: list[dict[str, Any]],
    workers: int,
    progress: Callable[[dict[str, Any]], None],
    tracking_uri: str,
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    # One MLflow store for every run, its schema made here once (not in every worker).
    import mlflow

    mlflow.MlflowClient(tracking_uri).search_experiments()
    jobs = [{**job, "ray_address": address, "tracking_uri": tracking_uri} for job in jobs]
    # Flower's simulation runtime runs once per process (a second run in the same process hangs).
    context = get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_setup, max_tasks_per_child=1)
    try:
        for result in pool.map(_job, jobs):
            results.append(result)
            progress(result)
    except BaseException:  # a failed run, Ctrl-C or kill: stop the other runs now, not after them
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in active_children():
            worker.terminate()
        raise
    pool.shutdown()
    return results
