"""The app the lab submits, and how the benchmarks read a run's events (no runtime started)."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest
from flwr.cli.build import build_fab_from_disk

from lab.runtime.app import app_hash, stage_app

ROOT = Path(__file__).resolve().parent.parent


def _quality() -> ModuleType:
    # benchmarks/ is a folder of scripts (a site package is called "benchmarks" too): load by path.
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


def test_staging_follows_flowers_rules_for_any_app(tmp_path: Path) -> None:
    app = tmp_path / "app"
    shutil.copytree(ROOT / "benchmarks" / "bare_flower", app)
    (app / ".gitignore").write_text("secret/\n")
    for name in (".venv/lib/site.py", "secret/key.py", "bareheart/extra.py", "notes.txt"):
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text("x = 1\n")
    staged = stage_app(app, tmp_path / "staged")
    names = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    assert "bareheart/extra.py" in names and "bareheart/client_app.py" in names
    assert not {n for n in names if n.startswith((".venv", "secret")) or n == "notes.txt"}
    assert hashlib.sha256(build_fab_from_disk(staged)).hexdigest() == app_hash(app)
    assert app_hash(app) == hashlib.sha256(build_fab_from_disk(app)).hexdigest()


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
