"""Shared fixtures: the demo data, the heart spec, and the lab's command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from lab.core.spec import TaskSpec, load_spec
from lab.runtime.environ import PRIVATE_ENV, private_environ

ROOT = Path(__file__).resolve().parent.parent
HEART = ROOT / "data" / "heart-disease"
SILOS = {
    "cleveland": HEART / "processed.cleveland.data",
    "hungary": HEART / "processed.hungarian.data",
    "switzerland": HEART / "processed.switzerland.data",
    "va": HEART / "processed.va.data",
}

os.environ.update(PRIVATE_ENV)


@pytest.fixture
def identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower stamps new messages with the process's task identity, which the runtime sets."""
    from flwr.supercore.task_identity import TaskIdentity

    for attribute in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attribute, 1)


@pytest.fixture(scope="session")
def heart_spec() -> TaskSpec:
    return load_spec(HEART / "task.toml")


def lab_command() -> list[str]:
    """The `lab` console command of the environment running the tests."""
    return [str(Path(sys.executable).parent / "lab")]


def agreement_file(
    folder: Path, spec: TaskSpec, node: str, *replacements: tuple[str, str], node_figures: bool = True
) -> Path:
    """A node's agreement approving this checkout's app for ``spec``, with clauses rewritten by
    (old, new) text replacements (each must match). It shows the node's own figures, as a local
    federation's default agreement does, unless ``node_figures`` is False: the tests that compare
    a node's rerun with the run's record read them."""
    from lab.node.agreement import template
    from lab.runtime.app import app_hash

    text = template(spec, app_hash(ROOT), spec.organisation(node), node_figures=node_figures)
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    path = folder / f"{node}.toml"
    path.write_text(text)
    return path


def run_lab(*args: str, workspace: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`lab ARGS` in a new process, recording to the workspace's own MLflow store."""
    env = private_environ(LAB_WORKSPACE=str(workspace), COLUMNS="200")
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [*lab_command(), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def leftover_processes(workspace: Path) -> list[str]:
    """Processes whose FLWR_HOME lies in the workspace: everything the lab started there."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.environ().get("FLWR_HOME", "").startswith(str(workspace)):
                found.append(f"{proc.pid}: {' '.join(proc.info['cmdline'] or [])}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules marked ``long`` (minutes each) go first: pytest-xdist hands out modules in this
    order, so the workers start on the longest and finish together instead of one waiting at
    the end for a long module handed out last."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)  # stable: the rest keep their order
