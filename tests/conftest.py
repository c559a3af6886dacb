"""Shared fixtures: the demo data, the heart spec, and the lab's command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from lab.settings import PRIVATE_ENV
from lab.spec import TaskSpec, load_spec

ROOT = Path(__file__).resolve().parent.parent
HEART = ROOT / "data" / "heart-disease"
SILOS = {
    "cleveland": HEART / "processed.cleveland.data",
    "hungary": HEART / "processed.hungarian.data",
    "switzerland": HEART / "processed.switzerland.data",
    "va": HEART / "processed.va.data",
}

os.environ.update(PRIVATE_ENV)


@pytest.fixture(scope="session")
def heart_spec() -> TaskSpec:
    return load_spec(HEART / "task.toml")


def lab_command() -> list[str]:
    """The `lab` console command of the environment running the tests."""
    return [str(Path(sys.executable).parent / "lab")]


def agreement_file(folder: Path, spec: TaskSpec, node: str, *replacements: tuple[str, str]) -> Path:
    """A node's agreement approving this checkout's app for ``spec``, with clauses rewritten by
    (old, new) text replacements (each must match)."""
    from lab.governance_cli import app_hash, demo_agreement

    text = demo_agreement(spec.name, spec.sha256, app_hash(ROOT), spec.organisation(node))
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    path = folder / f"{node}.toml"
    path.write_text(text)
    return path
