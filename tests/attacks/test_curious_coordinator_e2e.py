"""A curious coordinator's own ServerApp, under the approved app's hash, on the real runtime.

The coordinator owns its SuperLink: it can run any ServerApp it likes while the nodes receive the
FAB their agreements approve (the gate passes it). Here its ``flwr-serverapp`` (first on the
SuperLink's PATH) loads ``curious_server_app`` instead of the lab's ServerApp, and plays the
issue's attacks through Flower's grid on two hospitals' real SuperNodes with their warm workers and
the default agreements the lab writes: every attack is refused, naming its clause, and the catalog
names only the spec's columns.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from lab.core.spec import load_spec
from lab.runtime.environ import tracking_uri_for
from lab.runtime.local import LocalFederation
from lab.runtime.run import node_specs, run_settings
from lab.runtime.submit import new_run_dir, submit_run

from ..conftest import HEART, ROOT, SILOS

pytestmark = pytest.mark.e2e

ATTACKER = Path(__file__).resolve().parent


def _shim(folder: Path) -> Path:
    """A ``flwr-serverapp`` that runs Flower's own, with the curious ServerApp in the lab's place."""
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "flwr-serverapp"
    shim.write_text(
        f"#!{sys.executable}\n"
        "import importlib, sys\n"
        "runtime = importlib.import_module('flwr.superlink.runtime.run_serverapp')\n"
        "lab_app = runtime.run_\n"
        "def curious(**kwargs):\n"
        f"    kwargs.update(server_app_dir={str(ATTACKER)!r}, server_app_attr='curious_server_app:app')\n"
        "    return lab_app(**kwargs)\n"
        "runtime.run_ = curious\n"
        "from flwr.superlink.cli.flwr_serverapp import flwr_serverapp\n"
        "sys.exit(flwr_serverapp())\n",
        encoding="utf-8",
    )
    shim.chmod(0o755)
    return folder


def test_a_curious_coordinators_own_serverapp_is_refused_by_every_node(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    spec = load_spec(HEART / "task.toml")
    names = ("cleveland", "hungary")
    nodes = node_specs({n: str(SILOS[n]) for n in names}, None, workspace=workspace, spec=spec)
    federation = LocalFederation(workspace, nodes)
    path = os.pathsep.join(
        [str(_shim(tmp_path / "attacker-bin")), str(Path(sys.executable).parent), os.environ["PATH"]]
    )
    federation.coordinator.env = {"PATH": path}
    federation.coordinator.flower_superexec = True  # Flower's own, which starts flwr-serverapp from the PATH
    settings = run_settings(
        spec, tracking_uri=tracking_uri_for(workspace), nodes=2, values={"environment_policy": "warn"}
    )
    with federation:
        outcome = submit_run(federation.connection, settings, app_dir=ROOT, run_dir=new_run_dir(workspace))
    attacks = outcome.final.reported["attacks"]
    assert len(attacks["nodes"]) == 2
    expected = {
        "one-row plan": "agreement clause limits.min-batch-size",
        "one-row message": "rule plan",
        "threshold models": "rule plan",
        "ages as groups": "rule spec",
    }
    for attack, clause in expected.items():
        said = attacks[attack]
        assert len(said) == 2 and all(clause in reason for reason in said.values()), (attack, said)
    assert all(reason == "answered" for reason in attacks["honest plan"].values())
    for answered in attacks["catalog"].values():
        columns = {c["column"] for c in json.loads(answered)["catalog"]["columns"]}
        assert columns == set(spec.raw_columns)  # slope, ca and thal are in the files, not in the spec
    for name in names:  # each node's audit log holds every request, in full
        entries = [json.loads(line) for line in (workspace / "nodes" / name / "audit.jsonl").read_text().splitlines()]
        assert [e["decision"] for e in entries].count("refused") == 4
        assert any(e["asked"].get("models") == 12 for e in entries)
