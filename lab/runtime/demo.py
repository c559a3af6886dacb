"""The demo federation: the four hospitals of the UCI Heart Disease data, each with its agreement."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lab.core.spec import load_spec
from lab.runtime.agreements import default_agreements
from lab.runtime.environ import project_root

__all__ = ["DEMO_NODES", "Demo", "demo_federation"]

#: The demo's nodes: node name -> its silo under data/heart-disease/.
DEMO_NODES = {
    "cleveland": "processed.cleveland.data",
    "hungary": "processed.hungarian.data",
    "switzerland": "processed.switzerland.data",
    "va": "processed.va.data",
}


@dataclass(frozen=True)
class Demo:
    """The demo's task spec, each node's table and each node's agreement."""

    spec: Path
    nodes: dict[str, str]
    agreements: dict[str, Path]


def demo_federation(workspace: Path) -> Demo:
    """The demo's files, each hospital's agreement approving this task and this checkout's app (its
    FAB hash) written to its home in ``workspace``."""
    data = project_root() / "data" / "heart-disease"
    spec_path = data / "task.toml"
    nodes = {name: str(data / file) for name, file in DEMO_NODES.items()}
    return Demo(spec_path, nodes, default_agreements(workspace, load_spec(spec_path), list(DEMO_NODES)))
