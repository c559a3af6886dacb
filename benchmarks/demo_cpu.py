"""What `lab demo` costs in CPU, process by process: every process it starts (the SuperLink, the
forkserver and what it forks: SuperNodes, workers, the SuperExec and its ServerApps; `flwr run`), sampled
every half second until the demo ends, with the seconds since the start at which each appeared.

    .venv/bin/python benchmarks/demo_cpu.py [--workspace DIR]

A timer of the whole command (farm-bench, `time`) counts only the processes the command waits for:
not the processes forked from the forkserver (children of the forkserver, which ends with the
demo). This counts them all, and so runs a little beside the
demo itself (one sample of the host's processes every half second).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def _belongs(process: psutil.Process, workspace: str, root: int) -> bool:
    """Started by the demo: a descendant of it, or working or homed in its workspace."""
    try:
        if process.pid == root or root in {parent.pid for parent in process.parents()}:
            return True
        return any(place.startswith(workspace) for place in (process.environ().get("FLWR_HOME", ""), process.cwd()))
    except psutil.Error:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, help="the demo's workspace (default: a new temporary folder)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp()) if args.workspace is None else args.workspace
    workspace = folder.resolve()
    shutil.rmtree(workspace, ignore_errors=True)
    env = {**os.environ, "LAB_WORKSPACE": str(workspace)}
    started = time.monotonic()
    lab = Path(sys.executable).parent / "lab"
    demo = subprocess.Popen([str(lab), "demo"], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    seen: dict[int, tuple[float, float, str]] = {}  # pid -> (first seen, CPU-seconds, command)
    while demo.poll() is None:
        for process in psutil.process_iter():
            if not _belongs(process, str(workspace), demo.pid):
                continue
            try:
                times = process.cpu_times()
                command = " ".join(Path(part).name if i == 1 else part for i, part in enumerate(process.cmdline()[:4]))
            except psutil.Error:
                continue
            first = seen.get(process.pid, (time.monotonic() - started, 0.0, ""))[0]
            seen[process.pid] = (first, times.user + times.system, command[:90])
        time.sleep(0.5)
    wall = time.monotonic() - started
    printed = [line for line in (demo.stdout.read() if demo.stdout else "").splitlines() if "wall time" in line]
    for first, seconds, command in sorted(seen.values()):
        print(f"{first:6.1f} s  {seconds:6.1f} CPU-s  {command}")
    print(f"{sum(s for _, s, _ in seen.values()):6.1f} CPU-s in {len(seen)} processes; {wall:.1f} s whole; {printed}")
    if args.workspace is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
