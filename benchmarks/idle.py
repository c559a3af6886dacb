"""What a federation costs while it waits: CPU-seconds a second of every process of the demo's
four-node local federation, started, left idle for a while, and measured over ``--seconds``.

    .venv/bin/python benchmarks/idle.py [--seconds 20]

The nodes poll (each SuperNode asks the SuperLink every 3 s, Flower's own; each worker asks its
SuperNode every ``lab.runtime.worker.POLL_SECONDS``; the SuperExec asks the SuperLink every
``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``), and the suite runs several such federations at once.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.core.spec import load_spec  # noqa: E402
from lab.runtime.demo import demo_federation  # noqa: E402
from lab.runtime.local import LocalFederation  # noqa: E402
from lab.runtime.run import node_specs  # noqa: E402


def _cpu(processes: list[psutil.Process]) -> dict[int, tuple[float, str]]:
    seconds = {}
    for process in processes:
        try:
            times = process.cpu_times()
            seconds[process.pid] = (times.user + times.system, " ".join(process.cmdline()[1:3])[-50:])
        except psutil.Error:
            continue
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to measure the idle federation")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        workspace = Path(folder) / "workspace"
        demo = demo_federation(workspace)
        specs = node_specs(demo.nodes, None, workspace=workspace, spec=load_spec(demo.spec))
        with LocalFederation(workspace, specs):
            time.sleep(25)  # the workers' warm-up is over
            processes = psutil.Process().children(recursive=True)
            before = _cpu(processes)
            time.sleep(args.seconds)
            after = _cpu(processes)
    total = 0.0
    for pid, (seconds, name) in after.items():
        spent = (seconds - before.get(pid, (seconds, name))[0]) / args.seconds
        total += spent
        print(f"{spent:6.3f} CPU-s/s  {name}")
    print(f"{total:6.3f} CPU-s/s  the idle federation ({len(after)} processes)")


if __name__ == "__main__":
    main()
