"""The app the lab submits, and how the benchmarks read a run's events (no runtime started)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from flwr.cli.build import build_fab_from_disk

from lab.governance_cli import app_hash
from lab.launch import stage_app

ROOT = Path(__file__).resolve().parent.parent


def _quality() -> ModuleType:
    # benchmarks/ is a folder of scripts (a site package is called "benchmarks" too): load by path.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "benchmarks" / "quality.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_staged_app_builds_the_fab_the_checkout_builds(tmp_path: Path) -> None:
    staged = stage_app(ROOT, tmp_path / "app")
    assert {p.relative_to(staged).parts[0] for p in staged.rglob("*") if p.is_file()} == {
        "pyproject.toml",
        "lab",
        "federation",
    }
    from_checkout = hashlib.sha256(build_fab_from_disk(ROOT)).hexdigest()
    assert app_hash() == from_checkout
    assert hashlib.sha256(build_fab_from_disk(staged)).hexdigest() == from_checkout


def test_an_app_without_fab_include_is_submitted_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.flwr.app]\npublisher = "someone"\n')
    assert stage_app(tmp_path, tmp_path / "staged") == tmp_path
    assert not (tmp_path / "staged").exists()


def _events(accuracies_received: list[float], final: float) -> list[dict[str, object]]:
    events: list[dict[str, object]] = [{"event": "started", "time": 0.0}, {"event": "joined", "time": 10.0}]
    for r, accuracy in enumerate(accuracies_received, start=1):
        events.append({"event": "train", "round": r, "time": 10.0 + 2 * r, "mean": {"accuracy": accuracy}})
    events.append({"event": "evaluate", "round": len(accuracies_received), "time": 99.0, "mean": {"accuracy": final}})
    return events


def test_accuracy_after_each_round_comes_from_the_next_rounds_scores() -> None:
    quality = _quality()
    run = {"events": _events([0.40, 0.65, 0.73], final=0.80)}
    # The train event of round r scores the model the nodes received: the one after r - 1 rounds.
    assert quality.history(run) == [0.40, 0.65, 0.73, 0.80]
    assert quality.rounds_to(quality.history(run), 0.72) == 2
    assert quality.rounds_to([0.5, 0.6], 0.72) is None


def test_round_seconds_start_when_the_preparation_ends() -> None:
    quality = _quality()
    assert quality.round_seconds({"events": _events([0.4, 0.5, 0.6], final=0.7)}) == pytest.approx([2.0, 2.0, 2.0])
