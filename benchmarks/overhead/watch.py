"""ProcessWatch: a sampler of the processes one federation starts (ClientApps, ServerApp, SuperLink) and of CPU use."""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

__all__ = ["ProcessWatch", "Seen", "listed"]


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


def listed(processes: list[Seen], since: float) -> list[dict[str, Any]]:
    """ClientApp processes as JSON: node, start (seconds after ``since``) and seconds alive."""
    return [
        {"node": p.node, "start": round(p.start - since, 2), "seconds": round(p.end - p.start, 2), "cpu": p.cpu}
        for p in processes
    ]
