"""Benchmark: the lab's seconds per round against a bare Flower app on the same runtime (issue: benchmarks, overhead).

In one invocation, on one machine, on Flower's deployment runtime (1 SuperLink + 4 SuperNodes on loopback):

1. ``lab demo`` as a user runs it (four hospitals with their agreements, MLflow, the lab's ServerApp and ClientApp),
   in its own workspace; its phases and rounds come from the timestamps of the events its coordinator writes
   (``runs/*/events.jsonl``, federation/recorder.py EventLog);
2. the bare Flower app in ``benchmarks/bare_flower/`` (same model, data, split and hyperparameters, written as a
   Flower user would without the lab) on a ``lab.runtime.local.LocalFederation`` with the same four nodes' ``data-path``
   and no agreements, twice: ``fraction-evaluate = 0`` (one train message per node per round, like the lab, whose
   train message also scores the received model) and ``1.0`` (Flower's default: train + evaluate every round);
   its rounds come from the timings file its ServerApp writes.

Messages are counted, not assumed: every SuperNode logs each message it receives, and a sampler records when each
``flwr-clientapp`` process (one per message) starts and ends. The same sampler splits each round into the wait
before the first ClientApp process starts, the ClientApp processes themselves, and the wait after the last one.

    .venv/bin/python benchmarks/overhead.py [--rounds 5] [--workspace DIR] [--out benchmarks/overhead.json]
                                            [--quiet-wait SECONDS]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.runtime.environ import PRIVATE_ENV, private_environ  # noqa: E402

os.environ.update(PRIVATE_ENV)  # telemetry off here and in every process started from here

import psutil  # noqa: E402
import tomli_w  # noqa: E402

from lab.cli import DEMO_NODES  # noqa: E402
from lab.contract.settings import RunSettings  # noqa: E402
from lab.runtime.local import LocalFederation, NodeSpec, executable  # noqa: E402
from lab.runtime.submit import stop_process  # noqa: E402

__all__ = ["RUNTIME", "measure", "table"]

RUNTIME = "Flower deployment runtime, 1 SuperLink + 4 SuperNodes on loopback"
DATA = ROOT / "data" / "heart-disease"
PROBE_TABLE, PROBE_SPEC = str(DATA / DEMO_NODES["cleveland"]), str(DATA / "task.toml")
BARE_APP = ROOT / "benchmarks" / "bare_flower"
LAB_TIMEOUT = 900.0  # seconds for the whole `lab demo`
BARE_TIMEOUT = 420.0  # seconds for one `flwr run` of the bare app
ANSI = re.compile(r"\x1b\[[0-9;]*m")


# --------------------------------------------------------------------------------------------------
# Evidence: the processes a federation starts, and the messages its SuperNodes receive
# --------------------------------------------------------------------------------------------------


@dataclass
class Seen:
    """One process of the federation: what it is, when it started and when it was last seen alive."""

    pid: int
    kind: str  # clientapp | serverapp | superlink | foreign-clientapp
    node: str
    start: float
    end: float
    cpu: float = 0.0  # CPU seconds (user + system) when last seen


class ProcessWatch:
    """Samples the machine's processes in a thread every ``interval`` seconds and keeps those of one workspace.

    A ClientApp process is recognised by the node gate it runs (``WORKSPACE/nodes/NAME/bin/flwr-clientapp``,
    lab.runtime.local), which names its node (a process it forks is not counted again); the ServerApp by its
    ``FLWR_HOME`` inside the workspace. ClientApp processes of other workspaces are counted as foreign, and
    the CPU time of every process outside this benchmark's process tree is summed: another federation or
    test suite on the same machine slows every figure down.
    """

    def __init__(self, workspace: Path, interval: float = 0.25) -> None:
        self.prefix = str(workspace.resolve()) + os.sep
        self.interval = interval
        self.seen: dict[tuple[int, float], Seen] = {}  # by PID and start time: a PID can be reused
        self.samples: list[
            tuple[float, float, float]
        ] = []  # time, CPU seconds of this benchmark's and others' processes
        self._cpu: dict[tuple[int, float], tuple[float, float, bool]] = {}  # first and last CPU seconds, ours
        self._started = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-watch", daemon=True)

    def __enter__(self) -> ProcessWatch:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def processes(self, kind: str, since: float = 0.0, until: float = float("inf")) -> list[Seen]:
        """Processes of ``kind`` that started in [since, until), oldest first."""
        found = [p for p in self.seen.values() if p.kind == kind and since <= p.start < until]
        return sorted(found, key=lambda p: p.start)

    def cores(self, since: float, until: float) -> dict[str, float | None]:
        """CPU cores kept busy, on average, between two times: by this benchmark's processes (the federation, the
        sampler) and by every other process on the machine."""
        inside = [s for s in self.samples if since <= s[0] <= until]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return {"benchmark": None, "others": None}
        seconds = inside[-1][0] - inside[0][0]
        return {
            "benchmark": (inside[-1][1] - inside[0][1]) / seconds,
            "others": (inside[-1][2] - inside[0][2]) / seconds,
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sweep(time.time())
            self._stop.wait(self.interval)

    def _sweep(self, now: float) -> None:
        procs = [p.info for p in psutil.process_iter(["pid", "ppid", "cmdline", "create_time", "cpu_times"])]
        children: dict[int, list[int]] = defaultdict(list)
        for info in procs:
            children[info["ppid"]].append(info["pid"])
        ours, stack = {os.getpid()}, [os.getpid()]
        while stack:
            for child in children.get(stack.pop(), []):
                if child not in ours:
                    ours.add(child)
                    stack.append(child)
        clientapps = {p.pid for p in self.seen.values() if p.kind == "clientapp"}
        for info in procs:
            key = (info["pid"], info["create_time"] or 0.0)
            cpu = info["cpu_times"].user + info["cpu_times"].system if info["cpu_times"] is not None else None
            if cpu is not None:
                first, _, mine = self._cpu.get(key, (cpu if key[1] < self._started else 0.0, 0.0, False))
                self._cpu[key] = (first, cpu, mine or info["pid"] in ours)
            if key in self.seen:
                if info["cmdline"]:  # a zombie has none: it has ended
                    self.seen[key].end = now
                    self.seen[key].cpu = cpu or self.seen[key].cpu
                continue
            if info["ppid"] in clientapps:
                continue  # forked by a ClientApp: the same cmdline until it execs
            kind = self._classify(info["pid"], info["cmdline"] or [])
            if kind is not None:
                self.seen[key] = Seen(info["pid"], kind[0], kind[1], key[1], now, cpu or 0.0)
        used = {True: 0.0, False: 0.0}
        for first, last, mine in self._cpu.values():
            used[mine] += last - first
        self.samples.append((now, used[True], used[False]))

    def _classify(self, pid: int, cmdline: list[str]) -> tuple[str, str] | None:
        head = cmdline[:2]
        if any(Path(arg).name == "flwr-clientapp" for arg in head):
            gate = next((arg for arg in head if arg.startswith(self.prefix)), None)
            return ("clientapp", Path(gate).parent.parent.name) if gate else ("foreign-clientapp", "")
        if any(Path(arg).name == "flower-superlink" for arg in head) and any(self.prefix in a for a in cmdline):
            return "superlink", ""
        if any(Path(arg).name == "flwr-serverapp" for arg in head):
            try:
                home = psutil.Process(pid).environ().get("FLWR_HOME", "")
            except psutil.Error:
                return None
            return ("serverapp", "") if home.startswith(self.prefix) else None
        return None


def received_messages(logs: Path) -> dict[str, dict[str, Counter[str]]]:
    """Messages each SuperNode received, by run and message type, from its log (``Receiving: TYPE message``)."""
    runs: dict[str, dict[str, Counter[str]]] = defaultdict(dict)
    for log in sorted(logs.glob("node-*.log")):
        node = log.stem.removeprefix("node-")
        run = "?"
        for line in ANSI.sub("", log.read_text(encoding="utf-8", errors="replace")).splitlines():
            if match := re.search(r"\[RUN (\d+)", line):
                run = match.group(1)
            elif match := re.search(r"Receiving: (\S+) message", line):
                runs[run].setdefault(node, Counter())[match.group(1)] += 1
    return dict(runs)


def _total(per_node: dict[str, Counter[str]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for counts in per_node.values():
        total.update(counts)
    return total


# --------------------------------------------------------------------------------------------------
# Rounds: how long each took, and where the time went
# --------------------------------------------------------------------------------------------------


def split_rounds(boundaries: list[float], clientapps: list[Seen]) -> list[dict[str, Any]]:
    """Each round between consecutive boundaries: its seconds, the ClientApp processes that started in it,
    the wait before the first started (dispatch), the time from the first start to the last end (span)
    and the wait after the last ended (collect)."""
    rounds = []
    for number, (begin, end) in enumerate(zip(boundaries, boundaries[1:], strict=False), start=1):
        inside = [p for p in clientapps if begin <= p.start < end]
        row: dict[str, Any] = {"round": number, "seconds": end - begin, "clientapps": len(inside)}
        if inside:
            first, last = min(p.start for p in inside), max(p.end for p in inside)
            row |= {
                "dispatch": first - begin,
                "span": last - first,
                "collect": end - last,
                "clientapp_seconds": statistics.fmean(p.end - p.start for p in inside),
                "clientapp_cpu_seconds": statistics.fmean(p.cpu for p in inside),
            }
        rounds.append(row)
    return rounds


def summarise(rounds: list[dict[str, Any]], nodes: int) -> dict[str, Any]:
    """Mean over the rounds of every figure of ``split_rounds``."""
    keys = ("seconds", "dispatch", "span", "collect", "clientapp_seconds", "clientapp_cpu_seconds")
    mean = {k: statistics.fmean(r[k] for r in rounds if k in r) for k in keys if any(k in r for r in rounds)}
    return {
        "seconds_per_round": mean.pop("seconds"),
        "seconds_each_round": [r["seconds"] for r in rounds],
        "clientapps_per_node_per_round": statistics.fmean(r["clientapps"] for r in rounds) / nodes,
        "per_round": mean,
        "rounds": rounds,
    }


# --------------------------------------------------------------------------------------------------
# The lab demo
# --------------------------------------------------------------------------------------------------


def run_lab(workspace: Path, rounds: int) -> dict[str, Any]:
    """`lab demo` in ``workspace``, exactly as a user runs it; its phases, rounds and messages."""
    workspace.mkdir(parents=True, exist_ok=True)
    log_path = workspace.parent / "lab-demo.log"
    command = [executable("lab"), "demo", "--rounds", str(rounds), "--workspace", str(workspace)]
    with ProcessWatch(workspace) as watch, log_path.open("wb") as log:
        launched = time.time()
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=private_environ(PYTHONUNBUFFERED="1", COLUMNS="120"),
            cwd=workspace.parent,
        )
        try:
            status = proc.wait(timeout=LAB_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"`lab demo` did not finish within {LAB_TIMEOUT:.0f} s; see {log_path}") from None
        finally:  # on a timeout, an error or Ctrl-C: the lab stops its processes on SIGTERM
            stop_process(proc, grace=60)
        exited = time.time()
    output = ANSI.sub("", log_path.read_text(encoding="utf-8", errors="replace"))
    if status != 0:
        raise RuntimeError(f"`lab demo` failed (status {status}); its output ends with:\n{output[-2000:]}")
    run_dir = sorted(workspace.glob("runs/*/events.jsonl"))[-1].parent
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    times = {e["event"]: e["time"] for e in events}  # the last of each kind
    trains = [e["time"] for e in events if e["event"] == "train"]
    prepared = max(e["time"] for e in events if e["event"] in ("joined", "warning", "refused"))
    submitted = (run_dir / "run-config.toml").stat().st_mtime  # written just before `flwr run` starts
    superlink = watch.processes("superlink")
    serverapp = watch.processes("serverapp", since=submitted)
    clientapps = watch.processes("clientapp")
    nodes = len(DEMO_NODES)
    stamps = [
        ("`lab demo` starts: imports, app hash, agreements", launched),
        ("SuperLink and SuperNodes start", superlink[0].start if superlink else launched),
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
        total.update(_total(per_node))
    wall = re.search(r"wall time (\d+) s", output)
    return {
        "command": " ".join(["lab", *command[1:]]),
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
        **summarise(split_rounds([prepared, *trains], clientapps), nodes),
        "prepare_clientapps": len([p for p in clientapps if p.start < prepared]),
        "final_evaluate_clientapps": len([p for p in clientapps if p.start >= trains[-1]]),
        "clientapps_total": len(clientapps),
        "messages_received": {k: total[k] for k in sorted(total)},
        "messages_per_node_per_round": total["train"] / rounds / nodes,
        "foreign_clientapps_seen": len(watch.processes("foreign-clientapp")),
        "cores_during_rounds": watch.cores(prepared, trains[-1]),
        "cores_whole_run": watch.cores(launched, exited),
        "clientapp_processes": _listed(clientapps, launched),
        "run_dir": str(run_dir),
        "log": str(log_path),
    }


# --------------------------------------------------------------------------------------------------
# The bare Flower app
# --------------------------------------------------------------------------------------------------


def bare_run_config(rounds: int, fraction_evaluate: float, nodes: int) -> dict[str, Any]:
    """The bare app's run config with the lab demo's hyperparameters (federation/settings.py defaults)."""
    lab = {f.name: f.default for f in fields(RunSettings)}
    return {
        "num-rounds": rounds,
        "local-steps": lab["local_steps"],
        "batch-size": lab["batch_size"],
        "learning-rate": lab["learning_rate"],
        "seed": lab["seed"],
        "min-nodes": nodes,
        "fraction-evaluate": float(fraction_evaluate),
    }


def run_bare(federation: LocalFederation, watch: ProcessWatch, name: str, run_config: dict[str, Any]) -> dict[str, Any]:
    """Submit the bare app with `flwr run ... --stream` (as lab.runtime.submit.submit_run does) and wait for its end."""
    run_dir = federation.workspace / "runs" / name
    run_dir.mkdir(parents=True)
    timings = run_dir / "timings.jsonl"
    config_path = run_dir / "run-config.toml"
    config_path.write_text(tomli_w.dumps({**run_config, "timings-file": str(timings)}), encoding="utf-8")
    log_path = run_dir / "flwr-run.log"
    command = [executable("flwr"), "run", str(BARE_APP), "lab", "--run-config", str(config_path), "--stream"]
    with log_path.open("wb") as log:
        submitted = time.time()
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=federation.env(),
            cwd=federation.workspace,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=BARE_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass  # reported below: the timings file has no end
        finally:
            stop_process(proc, grace=10)
        exited = time.time()
    stamps = [json.loads(line) for line in timings.read_text(encoding="utf-8").splitlines()] if timings.exists() else []
    if not stamps or stamps[-1]["event"] != "end":
        tail = "\n".join(ANSI.sub("", log_path.read_text(errors="replace")).splitlines()[-15:])
        raise RuntimeError(f"bare run {name!r} did not finish (`flwr run` status {proc.returncode}):\n{tail}")
    start, end = stamps[0], stamps[-1]
    boundaries = [s["time"] for s in stamps if s["event"] == "round"]
    serverapp = watch.processes("serverapp", since=submitted)
    clientapps = watch.processes("clientapp", since=submitted, until=exited)
    run_id = str(start["run_id"])
    nodes = len(federation.nodes)
    total = _total(received_messages(federation.logs).get(run_id, {}))
    stamps_ = [
        ("`flwr run` builds and submits the app", submitted),
        ("ServerApp process starts, imports", serverapp[0].start if serverapp else submitted),
        (f"{run_config['num-rounds']} rounds", start["time"]),
        ("the run ends, `flwr run` exits", end["time"]),
        ("end", exited),
    ]
    return {
        "command": " ".join(["flwr", *command[1:]]),
        "run_config": run_config,
        "run_id": run_id,
        "submit_to_end_seconds": end["time"] - submitted,
        "submit_to_serverapp_ready_seconds": start["time"] - submitted,
        "phases": [{"phase": n, "seconds": nxt - at} for (n, at), (_, nxt) in zip(stamps_, stamps_[1:], strict=False)],
        **summarise(split_rounds(boundaries, clientapps), nodes),
        "clientapps_total": len(clientapps),
        "messages_received": {k: total[k] for k in sorted(total)},
        "messages_per_node_per_round": sum(total.values()) / run_config["num-rounds"] / nodes,
        "cores_during_rounds": watch.cores(boundaries[0], boundaries[-1]),
        "clientapp_processes": _listed(clientapps, submitted),
        "run_dir": str(run_dir),
    }


def _listed(processes: list[Seen], since: float) -> list[dict[str, Any]]:
    """ClientApp processes as JSON: node, start (seconds after ``since``) and seconds alive."""
    return [
        {"node": p.node, "start": round(p.start - since, 2), "seconds": round(p.end - p.start, 2), "cpu": p.cpu}
        for p in processes
    ]


def wait_connected(federation: LocalFederation, timeout: float = 120.0) -> None:
    """Until every SuperNode has registered with the SuperLink (its log names its node ID)."""
    deadline = time.monotonic() + timeout
    logs = [federation.logs / f"node-{n.name}.log" for n in federation.nodes]
    while time.monotonic() < deadline:
        if all(p.exists() and "SuperNode ID" in p.read_text(errors="replace") for p in logs):
            return
        time.sleep(0.25)
    raise RuntimeError(f"the SuperNodes did not connect within {timeout:.0f} s; see {federation.logs}")


# --------------------------------------------------------------------------------------------------
# One ClientApp process, measured apart
# --------------------------------------------------------------------------------------------------

_PROBE = """
import json, sys, time
sys.path.insert(0, {app_dir!r})
out = {{}}
for label, code in {steps!r}:
    began = time.perf_counter()
    exec(code)
    out[label] = time.perf_counter() - began
print(json.dumps(out))
"""

_RUNTIME_STEP = (
    "Flower's clientapp runtime and the node gate (imports)",
    "import flwr.supernode.cli.flwr_clientapp, flwr.supernode.runtime.run_clientapp, lab.node.guard",
)
PROBES = {
    "lab": [
        _RUNTIME_STEP,
        ("import the app's ClientApp module", "import federation.client_app"),
        (
            "environment fingerprint (every message)",
            "from lab.core.environment import Environment; Environment.current()",
        ),
        (
            "read, check and split the table",
            "from lab.core.spec import load_spec; from lab.core.training import load_node_data; "
            f"load_node_data('cleveland', {PROBE_TABLE!r}, load_spec({PROBE_SPEC!r}))",
        ),
    ],
    "bare": [
        _RUNTIME_STEP,
        ("import the app's ClientApp module", "import bareheart.client_app"),
        (
            "read, check and split the table",
            f"from bareheart.task import load_data; load_data({PROBE_TABLE!r})",
        ),
    ],
}


def probe_clientapp(repeats: int = 2) -> dict[str, dict[str, float]]:
    """Seconds of each step a ClientApp process of each app makes, in a fresh interpreter (best of ``repeats``)."""
    result: dict[str, dict[str, float]] = {}
    for app, steps in PROBES.items():
        best: dict[str, float] = {}
        for _ in range(repeats):
            code = _PROBE.format(app_dir=str(BARE_APP), steps=steps)
            out = subprocess.run(
                [sys.executable, "-c", code],
                env=private_environ(),
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
            if out.returncode != 0:
                raise RuntimeError(f"probing the {app} ClientApp failed:\n{out.stderr[-1500:]}")
            for label, seconds in json.loads(out.stdout.strip().splitlines()[-1]).items():
                best[label] = min(best.get(label, seconds), seconds)
        result[app] = best
    return result


# --------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------


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
        if label != _RUNTIME_STEP[0]
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


def _f(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(result: dict[str, Any]) -> str:
    """The result as markdown."""
    lab, bare = result["lab"], result["bare"]
    one, two = bare["train-only"], bare["train+evaluate"]
    machine = result["machine"]
    lines = [
        "## Overhead: the lab's federation against a bare Flower app",
        "",
        f"{result['runtime']}; {result['rounds']} rounds of FedAvg, same model (logistic regression, 13 features), "
        "data, split and hyperparameters; measured in the same run on "
        f"{machine['cpus']} CPUs ({result['measured_at']}; load average before "
        f"{machine['load_average_before'][0]:.1f}, after {machine['load_average_after'][0]:.1f}; "
        f"{machine['foreign_clientapps_seen']} ClientApp processes of other federations seen meanwhile). "
        "CPU cores busy: the mean over the rounds, by this benchmark's processes (the federation and the sampler) "
        "and by every other process on the machine (which slow every figure down).",
        "",
        "| variant | messages per node per round (SuperNode logs / ClientApp processes) | s per round, mean "
        "| each round (s) | lab / this | CPU cores busy: this benchmark | CPU cores busy: other processes |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    rows = [
        ("lab demo (the train message also scores the received model)", lab, None),
        ("bare Flower, train only (`fraction-evaluate = 0`)", one, result["ratio"]["lab_vs_bare_train_only"]),
        (
            "bare Flower, train + evaluate (Flower's default)",
            two,
            result["ratio"]["lab_vs_bare_train_evaluate"],
        ),
    ]
    for label, run, ratio in rows:
        each = ", ".join(_f(s) for s in run["seconds_each_round"])
        lines.append(
            f"| {label} | {_f(run['messages_per_node_per_round'])} / {_f(run['clientapps_per_node_per_round'])} "
            f"| {_f(run['seconds_per_round'])} | {each} | {'' if ratio is None else _f(ratio, 2)} "
            f"| {_f(run['cores_during_rounds']['benchmark'], 2)} | {_f(run['cores_during_rounds']['others'], 2)} |"
        )
    goals = result["goals"]
    lines += [
        "",
        f"Ratio lab / bare (train only): **{_f(result['ratio']['lab_vs_bare_train_only'], 2)}** "
        f"(goal: at most {goals['ratio_at_most']}); against Flower's default train + evaluate: "
        f"{_f(result['ratio']['lab_vs_bare_train_evaluate'], 2)}.",
        f"`lab demo` wall time: {_f(result['demo_wall_seconds'], 0)} s from the command to its exit "
        f"(it reports {_f(result['demo_reported_wall_seconds'], 0)} s); "
        f"**{_f(result['demo_submit_to_done_seconds'], 0)} s** from submitting the app to the run's end "
        f"(goal: under {goals['demo_seconds_after_setup_under']:.0f} s). "
        f"Messages the demo's SuperNodes received: {lab['messages_received']} "
        f"({lab['clientapps_total']} ClientApp processes).",
        "",
        "### The lab demo, phase by phase",
        "",
        "| phase | s |",
        "| --- | ---: |",
        *[f"| {p['phase']} | {_f(p['seconds'])} |" for p in lab["phases"]],
        "",
        "The bare app, train only: "
        + "; ".join(f"{p['phase']} {_f(p['seconds'])} s" for p in one["phases"])
        + f"; {_f(one['submit_to_end_seconds'], 0)} s from submitting the app to the run's end.",
        "",
        "### One round, mean (s)",
        "",
        "| | lab | bare, train only | bare, train + evaluate |",
        "| --- | ---: | ---: | ---: |",
    ]
    parts = [
        ("seconds", "round"),
        ("dispatch", "until the first ClientApp process starts (aggregate, push; SuperNode polls every 3 s)"),
        ("span", "first ClientApp process start to last end"),
        ("clientapp_seconds", "one ClientApp process, start to end"),
        ("clientapp_cpu_seconds", "one ClientApp process, CPU seconds (user + system)"),
        (
            "collect",
            "last ClientApp process end to the round's end (Flower's grid reads replies every 3 s, the lab's "
            "every 0.2 s; negative: the replies "
            "had left before the processes exited)",
        ),
    ]
    for key, label in parts:
        cells = [
            _f(run["seconds_per_round"] if key == "seconds" else run["per_round"].get(key)) for run in (lab, one, two)
        ]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    probes = result["clientapp_probe"]
    lines += [
        "",
        "### Steps of one ClientApp process, measured apart in a fresh interpreter (s, best of 2)",
        "",
        "| step | lab | bare |",
        "| --- | ---: | ---: |",
    ]
    for label in probes["lab"]:
        lines.append(f"| {label} | {_f(probes['lab'][label], 2)} | {_f(probes['bare'].get(label), 2)} |")
    lines.append(f"| total | {_f(sum(probes['lab'].values()), 2)} | {_f(sum(probes['bare'].values()), 2)} |")
    whole = result["lab_extra"]["whole_run"]
    lines += [
        "",
        "### The lab's extra time against the bare app, train only (s)",
        "",
        "| where | s |",
        "| --- | ---: |",
        *[f"| {k} | {_f(v)} |" for k, v in whole.items()],
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workspace", type=Path, help="where the federations run (default: a new temporary folder)")
    parser.add_argument("--out", type=Path, help="write the result as JSON here, e.g. benchmarks/overhead.json")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each federation, wait up to this many seconds for other processes to leave the CPUs alone",
    )
    args = parser.parse_args()
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="lab-overhead-"))
    result = measure(workspace, rounds=args.rounds, quiet_wait=args.quiet_wait)
    print(table(result))
    print(f"logs, events and timings kept in {workspace}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
