"""The agreement a local node holds when its operator names none: the template, in its home.

A federation started on one machine (`lab demo`, `lab run --node ...`, the workbench's local
nodes) has one operator for every node. A node given no agreement there gets the one
`lab agreement template` prints for the run's task and this checkout's app, written to
``nodes/NAME/agreement.toml``: it enforces the default limits like any organisation's node, so a
local run is held to what a deployment holds (`--no-agreement` starts the nodes unbound instead).
Only ``node-figures`` differs from the template: one operator reads every node's own figures anyway.
"""

from __future__ import annotations

from pathlib import Path

from lab.core.spec import TaskSpec
from lab.node.agreement import template
from lab.runtime.app import app_hash

__all__ = ["AGREEMENT_FILE", "default_agreements"]

#: A local node's default agreement, in its home.
AGREEMENT_FILE = "agreement.toml"


def default_agreements(workspace: Path, spec: TaskSpec, names: list[str]) -> dict[str, Path]:
    """Write the template agreement for ``spec`` into the home of each node in ``names`` (replacing
    an earlier one: it is the lab's default, not the operator's own), by node name."""
    written: dict[str, Path] = {}
    fab_hash = app_hash() if names else ""
    for name in names:
        path = workspace / "nodes" / name / AGREEMENT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template(spec, fab_hash, spec.organisation(name), node_figures=True), encoding="utf-8")
        written[name] = path
    return written
