"""`make deploy-demo`: the README's "Deploy across organisations", each party on its own host (a
network namespace), shown as each party's terminal, in the order the parties type.

    sudo .venv/bin/python deploy/demo.py [--folder DIR]

The coordinator and the four organisations of `lab demo` on a private network: the coordinator
starts its host and admits the organisations, each starts its node on its own machine, the
coordinator launches a run with the demo's settings, and an organisation pulls the champion and
reruns it in-house.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from netns import available  # noqa: E402
from sequence import Deployment  # noqa: E402

from lab.core.environ import PRIVATE_ENV  # noqa: E402
from lab.runtime.processes import interrupt_on_stop_signals  # noqa: E402


def show(party: str, text: str) -> None:
    """One party's terminal: a header with who and where, then what it typed and saw."""
    print(f"\n\033[1m─── {party} ─────────────────────────────────────────────\033[0m", flush=True)
    print(text, flush=True)


def main() -> None:
    import os

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, help="Where every party's home goes (default: a new temporary folder).")
    args = parser.parse_args()
    reason = available()
    if reason:
        sys.exit(f"the deployment demo needs separate hosts: {reason}")
    os.environ.update(PRIVATE_ENV)
    # SIGTERM and SIGHUP end the demo the way Ctrl-C does: the hosts' processes, namespaces and
    # bridge are removed on the way out (by default either signal would leave them all running).
    interrupt_on_stop_signals()
    folder = (args.folder or Path(tempfile.mkdtemp(prefix="lab-deploy-demo-"))).resolve()
    started = time.monotonic()
    with Deployment(folder, say=show) as deployment:  # the four organisations of `lab demo`
        for party in ["coordinator", *deployment.organisations]:
            show(party, f"(host {deployment.net.address(party)}, home {deployment.home(party)})")
        deployment.coordinator_up()
        for organisation in deployment.organisations:
            deployment.enroll_and_admit(organisation)
        deployment.nodes_up(deployment.organisations)
        deployment.type("coordinator", [*_lab(), "coordinator", "nodes", "--home", str(deployment.home("coordinator"))])
        deployment.run()  # the rounds and strategy of `lab demo`
        deployment.pull_and_evaluate("hungary")
        for organisation in deployment.organisations:
            show(organisation, deployment.terminal(organisation).rstrip())
    print(f"\nthe whole sequence took {time.monotonic() - started:.0f} s; every party's home is in {folder}")


def _lab() -> list[str]:
    return [str(Path(sys.executable).parent / "lab")]


if __name__ == "__main__":
    main()
