"""ProcessWatch: a sampler of the processes one federation starts (ClientApps, warm workers, SuperNodes, ServerApp,
SuperLink), of their CPU time and memory, of the machine's CPU use, and of the messages its SuperNodes log."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from .messages import RUN_LINE, message_line

__all__ = ["APP_KINDS", "LogLine", "NODE_KINDS", "ProcessWatch", "Seen", "listed"]

#: Kinds of the processes that answer a node's messages: Flower's one per message, or the lab's warm worker.
APP_KINDS = ("clientapp", "worker")
#: Kinds of a node's own Flower processes: the SuperNode and, with ``--isolation subprocess``, its SuperExec.
NODE_KINDS = ("supernode", "superexec")


@dataclass
class Seen:
    """One process of the federation: what it is, when it started and when it was last seen alive."""

    pid: int
    kind: str  # clientapp | worker | supernode | superexec | serverapp | superlink | foreign-clientapp | foreign-worker
    node: str
    start: float
    end: float
    cpu: float = 0.0  # CPU seconds (user + system) when last seen
    rss_peak: int = 0  # bytes, the largest resident set size sampled
    samples: list[tuple[float, float]] = field(default_factory=list, repr=False)  # (time, CPU seconds)

    def cpu_at(self, when: float) -> float:
        """Its CPU seconds at ``when`` (0 before it started; its last sample after it ended)."""
        if when < self.start or not self.samples:
            return 0.0
        value = self.samples[0][1]
        for at, cpu in self.samples:
            if at > when:
                break
            value = cpu
        return value

    def cpu_between(self, since: float, until: float) -> float:
        """CPU seconds it spent between two times (to the sampler's resolution)."""
        return max(0.0, self.cpu_at(until) - self.cpu_at(since))


@dataclass(frozen=True)
class LogLine:
    """A message a SuperNode logged: when the sampler first saw the line, the node, run, direction and type."""

    time: float
    node: str
    run: str
    direction: str  # "Receiving" (pulled from the SuperLink) | "Sending" (its reply, pushed to the SuperLink)
    message_type: str


class ProcessWatch:
    """Samples the machine's processes in a thread every ``interval`` seconds and keeps those of one workspace;
    a second thread follows the SuperNodes' logs (``WORKSPACE/logs/node-NAME.log``) every ``follow_interval``
    seconds and stamps each message line with the time it appeared (Flower's SuperNode log has no timestamps).

    A ClientApp process is recognised by the node gate it runs (``WORKSPACE/nodes/NAME/bin/flwr-clientapp``,
    lab.runtime.node), which names its node (a process it forks is not counted again); a warm worker
    (``python -m lab.runtime.worker``), a SuperNode (``flower-supernode``) and its SuperExec (``flower-superexec``)
    by their working folder, the node's home ``WORKSPACE/nodes/NAME``; the ServerApp by its ``FLWR_HOME`` inside
    the workspace; a process forked from the lab's forkserver by the log it writes to (``_forked``). ClientApps
    and workers of other workspaces are counted as foreign, and the CPU time of every process outside this
    benchmark's process tree is summed: another federation or test suite on the same machine slows every
    figure down.
    """

    def __init__(self, workspace: Path, interval: float = 0.25, follow_interval: float = 0.05) -> None:
        self.workspace = workspace.resolve()
        self.prefix = str(self.workspace) + os.sep
        self.interval = interval
        self.follow_interval = follow_interval
        self.seen: dict[tuple[int, float], Seen] = {}  # by PID and start time: a PID can be reused
        self.samples: list[
            tuple[float, float, float]
        ] = []  # time, CPU seconds of this benchmark's and others' processes
        self.lines: list[LogLine] = []
        self._cpu: dict[tuple[int, float], tuple[float, float, bool]] = {}  # first and last CPU seconds, ours
        self._logs: dict[Path, tuple[int, bytes, str]] = {}  # offset read, partial line, current run
        self._started = time.time()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name="process-watch", daemon=True),
            threading.Thread(target=self._follow, name="log-follow", daemon=True),
        ]

    def __enter__(self) -> ProcessWatch:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._read_logs(time.time())  # the lines written since the last look

    def processes(self, kind: str, since: float = 0.0, until: float = float("inf")) -> list[Seen]:
        """Processes of ``kind`` that started in [since, until), oldest first."""
        found = [p for p in list(self.seen.values()) if p.kind == kind and since <= p.start < until]
        return sorted(found, key=lambda p: p.start)

    def alive(self, kinds: tuple[str, ...], since: float, until: float) -> list[Seen]:
        """Processes of these kinds seen alive at some time in [since, until]."""
        return [p for p in list(self.seen.values()) if p.kind in kinds and p.start <= until and p.end >= since]

    def messages(self, since: float = 0.0, until: float = float("inf")) -> list[LogLine]:
        """The message lines the SuperNodes logged in [since, until), in the order they appeared."""
        return [line for line in self.lines if since <= line.time < until]

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

    def _follow(self) -> None:
        while not self._stop.is_set():
            self._read_logs(time.time())
            self._stop.wait(self.follow_interval)

    def _read_logs(self, now: float) -> None:
        """Read what the SuperNodes' logs gained since the last look; stamp each message line with ``now``."""
        for path in sorted((self.workspace / "logs").glob("node-*.log")):
            if path.stem.endswith("-worker"):
                continue
            offset, partial, run = self._logs.get(path, (0, b"", "?"))
            try:
                with path.open("rb") as fh:
                    fh.seek(offset)
                    data = fh.read()
            except OSError:
                continue
            if not data:
                continue
            *complete, partial = (partial + data).split(b"\n")
            node = path.stem.removeprefix("node-")
            for raw in complete:
                text = raw.decode("utf-8", errors="replace")
                if started := RUN_LINE.search(text):
                    run = started.group(1)
                elif found := message_line(text):
                    self.lines.append(LogLine(now, node, run, *found))
            self._logs[path] = (offset + len(data), partial, run)

    def _sweep(self, now: float) -> None:
        procs = [
            p.info for p in psutil.process_iter(["pid", "ppid", "cmdline", "create_time", "cpu_times", "memory_info"])
        ]
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
            rss = info["memory_info"].rss if info["memory_info"] is not None else 0
            if cpu is not None:
                first, _, mine = self._cpu.get(key, (cpu if key[1] < self._started else 0.0, 0.0, False))
                self._cpu[key] = (first, cpu, mine or info["pid"] in ours)
            if key in self.seen:
                seen = self.seen[key]
                if info["cmdline"]:  # a zombie has none: it has ended
                    seen.end = now
                    seen.cpu = cpu or seen.cpu
                    seen.rss_peak = max(seen.rss_peak, rss)
                    seen.samples.append((now, seen.cpu))
                continue
            if info["ppid"] in clientapps:
                continue  # forked by a ClientApp: the same cmdline until it execs
            kind = self._classify(info["pid"], info["cmdline"] or [])
            if kind is not None:
                self.seen[key] = Seen(info["pid"], kind[0], kind[1], key[1], now, cpu or 0.0, rss, [(now, cpu or 0.0)])
        used = {True: 0.0, False: 0.0}
        for first, last, mine in self._cpu.values():
            used[mine] += last - first
        self.samples.append((now, used[True], used[False]))

    def _node_home(self, pid: int) -> str | None:
        """The node a process works for, from its working folder ``WORKSPACE/nodes/NAME``; None if elsewhere."""
        try:
            cwd = Path(psutil.Process(pid).cwd())
        except psutil.Error:
            return None
        return cwd.name if cwd.parent == self.workspace / "nodes" else None

    def _forked(self, pid: int) -> tuple[str, str] | None:
        """A process forked from the lab's forkserver (lab.runtime.forked) shows the server's command
        line: it is known by the log its output goes to, ``WORKSPACE/logs/node-NAME[-worker].log`` or
        ``superexec.log`` (the SuperExec's ServerApps, forked from it, write there too)."""
        try:
            log = Path(os.readlink(f"/proc/{pid}/fd/1"))
        except OSError:
            return None
        if log.parent != self.workspace / "logs":
            return None
        if log.name == "superexec.log":
            parent = psutil.Process(pid).ppid()
            parent_log = Path(os.readlink(f"/proc/{parent}/fd/1")) if psutil.pid_exists(parent) else None
            return ("serverapp", "") if parent_log == log else ("superexec", "")
        if log.name.startswith("node-") and log.suffix == ".log":
            name = log.stem.removeprefix("node-")
            return ("worker", name.removesuffix("-worker")) if name.endswith("-worker") else ("supernode", name)
        return None

    def _classify(self, pid: int, cmdline: list[str]) -> tuple[str, str] | None:
        if "multiprocessing.forkserver" in " ".join(cmdline[:3]):
            with contextlib.suppress(psutil.Error, OSError):
                return self._forked(pid)
            return None
        head = cmdline[:2]
        names = {Path(arg).name for arg in head}
        if "flwr-clientapp" in names:
            gate = next((arg for arg in head if arg.startswith(self.prefix)), None)
            return ("clientapp", Path(gate).parent.parent.name) if gate else ("foreign-clientapp", "")
        if cmdline[1:3] == ["-m", "lab.runtime.worker"]:
            node = self._node_home(pid)
            return ("worker", node) if node is not None else ("foreign-worker", "")
        if names & {"flower-supernode", "flower-superexec"}:
            node = self._node_home(pid)  # the SuperLink's SuperExec (it starts ServerApps) works elsewhere
            kind = "supernode" if "flower-supernode" in names else "superexec"
            return (kind, node) if node is not None else None
        if "flower-superlink" in names and any(self.prefix in a for a in cmdline):
            return "superlink", ""
        if "flwr-serverapp" in names:
            try:
                home = psutil.Process(pid).environ().get("FLWR_HOME", "")
            except psutil.Error:
                return None
            return ("serverapp", "") if home.startswith(self.prefix) else None
        return None


def listed(processes: list[Seen], since: float) -> list[dict[str, Any]]:
    """Processes as JSON: node, start (seconds after ``since``), seconds alive, CPU seconds and peak RSS (MB)."""
    return [
        {
            "node": p.node,
            "start": round(p.start - since, 2),
            "seconds": round(p.end - p.start, 2),
            "cpu": p.cpu,
            "rss_peak_mb": round(p.rss_peak / 2**20, 1),
        }
        for p in processes
    ]
