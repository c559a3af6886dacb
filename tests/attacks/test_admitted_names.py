"""Whoever submits a run cannot rename the nodes a coordinator admitted by key: the ServerApp holds
each node to the name its roster gives it, whatever the run's config says. Played through the
lab's real ServerApp and ClientApp on the in-process runtime (benchmarks/inprocess.py)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lab.contract.results import RunSummary
from lab.core.environ import ROSTER
from lab.core.spec import load_spec
from lab.runtime.roster import write_admitted
from lab.runtime.run import run_settings

from ..conftest import HEART, ROOT, SILOS


def test_a_run_config_naming_the_nodes_otherwise_is_ignored_for_the_roster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import inprocess

    ids = iter([1111, 2222])
    monkeypatch.setattr(inprocess, "_random_id", lambda taken: next(ids))
    # The coordinator admitted cleveland's key as node 1111 and hungary's as 2222 ...
    write_admitted(tmp_path, {"cleveland": {"node_id": 1111}, "hungary": {"node_id": 2222}})
    monkeypatch.setenv(ROSTER.name, str(tmp_path))
    # ... and the run's config, as its submitter wrote it, swaps them.
    swapped = json.dumps({"1111": "hungary", "2222": "cleveland"})
    values: dict[str, Any] = {"num_rounds": 1, "baseline_epochs": 1, "local_steps": 5, "register": False}
    settings = run_settings(load_spec(HEART / "task.toml"), tracking_uri="", nodes=2, values=values)
    nodes = {name: str(SILOS[name]) for name in ("cleveland", "hungary")}
    result = inprocess.run_federation(replace(settings, admitted_nodes=swapped), nodes, tmp_path / "run")
    # Each node took part under its own, admitted name: none was refused as another's.
    assert [row.node for row in RunSummary.of(result["final"]).nodes] == ["cleveland", "hungary"]
    assert not [e for e in result["events"] if e["event"] == "refused"]
