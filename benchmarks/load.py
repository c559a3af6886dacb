"""Benchmark: a standing federation under load (issue: nothing lost when things break).

Starts 16 real SuperNodes on loopback (the warm runtime; the four heart-disease tables, each
served by four nodes), runs one 5-round training run, then 100 consecutive federated-statistics
queries against the same standing federation (what `lab stats --coordinator` sends), and writes
benchmarks/load.md and benchmarks/load.json:

- every answer complete: all 16 nodes answered every query, and the pooled count is the same each time;
- the federation's processes (coordinator, SuperNodes, workers and everything they started),
  their open file descriptors and their resident memory, after the 1st, 10th, 50th and 100th query;
- the MLflow store consistent: one FINISHED run per run and query, none left RUNNING.

    .venv/bin/python benchmarks/load.py [--nodes 16] [--queries 100] [--rounds 5] [--out benchmarks/load]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.core.environ import PRIVATE_ENV  # noqa: E402

os.environ.update(PRIVATE_ENV)

import psutil  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from lab.core.analytics import StatsRequest  # noqa: E402
from lab.core.spec import load_spec  # noqa: E402
from lab.runtime.local import LocalFederation  # noqa: E402
from lab.runtime.run import node_specs, run_on, run_settings  # noqa: E402

DATA = ROOT / "data" / "heart-disease"
TABLES = [
    DATA / "processed.cleveland.data",
    DATA / "processed.hungarian.data",
    DATA / "processed.switzerland.data",
    DATA / "processed.va.data",
]
OUT = Path(__file__).resolve().parent


#: Which part of the federation a process is, by the process the lab started (its name) and its command.
ROLES = ("SuperLink", "SuperExec", "ServerApp", "SuperNodes", "workers")


def _role(started: str, member: psutil.Process) -> str:
    if started.startswith("node-"):
        return "SuperNodes"
    if started.startswith("worker-"):
        return "workers"
    command = " ".join(member.cmdline())
    return "ServerApp" if "flwr-serverapp" in command else "SuperExec" if "flower-superexec" in command else "SuperLink"


def footprint(federation: LocalFederation) -> dict[str, Any]:
    """Processes of the federation (every process it started, and theirs), open descriptors, RSS
    (in all, and by part: SuperLink, SuperExec, ServerApp, the SuperNodes, the nodes' workers)."""
    tree: list[tuple[str, psutil.Process]] = []
    for proc in federation.processes:
        try:
            parent = psutil.Process(proc.popen.pid)
            tree += [(proc.name, member) for member in (parent, *parent.children(recursive=True))]
        except psutil.NoSuchProcess:
            continue
    fds, rss, alive = 0, 0, 0
    by_role = dict.fromkeys(ROLES, 0)
    for started, member in tree:
        try:
            if member.status() == psutil.STATUS_ZOMBIE:
                continue
            fds += member.num_fds()
            resident = member.memory_info().rss
            rss += resident
            by_role[_role(started, member)] += resident
            alive += 1
        except psutil.NoSuchProcess:
            continue
    return {
        "processes": alive,
        "open_fds": fds,
        "rss_mib": round(rss / 2**20, 1),
        "rss_mib_by_part": {role: round(value / 2**20, 1) for role, value in by_role.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT / "load", help="write OUT.md and OUT.json")
    args = parser.parse_args()
    spec = load_spec(DATA / "task.toml")
    tables = {f"site{i + 1:02d}": str(TABLES[i % len(TABLES)]) for i in range(args.nodes)}
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp) / "workspace"
        nodes = node_specs(tables, None, workspace=workspace, spec=spec)  # each with the default agreement
        uri = f"sqlite:///{workspace / 'mlflow.db'}"
        started = time.monotonic()
        with LocalFederation(workspace, nodes) as federation:
            up = time.monotonic() - started
            settings = run_settings(
                spec, tracking_uri=uri, nodes=args.nodes, values={"num_rounds": args.rounds, "node_wait_seconds": 600}
            )
            t0 = time.monotonic()
            trained = run_on(federation.connection, settings, workspace=workspace)
            training = {
                "seconds": round(time.monotonic() - t0, 1),
                "nodes_in_final_table": len(trained.summary.nodes),
                "mean": trained.summary.mean,
            }
            print(f"training: {training['seconds']} s, {training['nodes_in_final_table']} nodes", flush=True)
            request = StatsRequest(columns=("age", "chol"), by=None, crosstab=None, correlation=False)
            query = replace(
                run_settings(spec, tracking_uri=uri, nodes=args.nodes),
                query="stats",
                query_request=request.to_json(),
                min_nodes=args.nodes,
            )
            seconds: list[float] = []
            counts: set[str] = set()
            samples: dict[int, dict[str, float]] = {0: footprint(federation)}
            for i in range(1, args.queries + 1):
                t0 = time.monotonic()
                result = run_on(federation.connection, query, workspace=workspace)
                seconds.append(time.monotonic() - t0)
                answered = result.stats.pooled.get("nodes")
                counts.add(json.dumps(result.stats.pooled, sort_keys=True, default=str))
                if i in (1, 10, 50, args.queries):
                    samples[i] = footprint(federation)
                    print(f"query {i}: {seconds[-1]:.1f} s, {samples[i]}, answered {answered}", flush=True)
            client = MlflowClient(tracking_uri=uri)
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=10_000)
        report: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "nodes": args.nodes,
            "federation_start_seconds": round(up, 1),
            "training": training,
            "queries": args.queries,
            "query_seconds": {
                "median": round(sorted(seconds)[len(seconds) // 2], 2),
                "first": round(seconds[0], 2),
                "last": round(seconds[-1], 2),
                "max": round(max(seconds), 2),
            },
            "identical_answers": len(counts) == 1,
            "footprint_after_query": samples,
            "mlflow": {
                "runs": len(runs),
                "expected": args.queries + 1,
                "by_status": {s: sum(r.info.status == s for r in runs) for s in sorted({r.info.status for r in runs})},
            },
        }
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    rows = "\n".join(
        f"| {i} | {s['processes']} | {s['open_fds']} | {s['rss_mib']} | "
        + " | ".join(str(s["rss_mib_by_part"][role]) for role in ROLES)
        + " |"
        for i, s in sorted(samples.items())
    )
    args.out.with_suffix(".md").write_text(
        f"""# A standing federation under load

`.venv/bin/python benchmarks/load.py{_options(args)}` on {report["machine"]["cpus"]} CPUs:
{args.nodes} SuperNodes on loopback (warm runtime), one {args.rounds}-round training run
({training["seconds"]} s, {training["nodes_in_final_table"]} nodes in the final table), then {args.queries}
consecutive federated-statistics queries against the same federation.

- Query wall time: median {report["query_seconds"]["median"]} s, first {report["query_seconds"]["first"]} s,
  last {report["query_seconds"]["last"]} s, slowest {report["query_seconds"]["max"]} s.
- Every query was answered by all {args.nodes} nodes (min-nodes = {args.nodes}); the pooled figures were
  {"identical in every answer" if report["identical_answers"] else "NOT identical across answers"}.
- MLflow: {report["mlflow"]["runs"]} runs for {report["mlflow"]["expected"]} runs and queries, by status
  {report["mlflow"]["by_status"]}.

| after query | processes | open file descriptors | resident memory (MiB) | {" | ".join(ROLES)} |
| ---: | ---: | ---: | ---: |{" ---: |" * len(ROLES)}
{rows}

Processes, descriptors and memory are summed over everything the federation started (the
coordinator's SuperLink, SuperExec and ServerApps, each SuperNode and its worker), and then by
part (MiB); 0 is the standing federation after the training run, before the first query.
""",
        encoding="utf-8",
    )
    print(args.out.with_suffix(".md").read_text(encoding="utf-8"))


def _options(args: argparse.Namespace) -> str:
    """The options the benchmark ran with, as typed, where they differ from the defaults."""
    given = [("--nodes", args.nodes, 16), ("--queries", args.queries, 100), ("--rounds", args.rounds, 5)]
    out = [] if args.out == OUT / "load" else [f" --out {_relative(args.out)}"]
    return "".join(f" {flag} {value}" for flag, value, default in given if value != default) + "".join(out)


def _relative(path: Path) -> str:
    """``path`` from the checkout's root where it lies inside it (no machine's folders in results)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    main()
