"""`lab mock` on the demo hospitals as an analyst runs it, then `lab check` on the mocks it wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import HEART, SILOS, leftover_processes, run_lab

pytestmark = pytest.mark.e2e


def test_mocks_of_the_demo_hospitals_pass_the_preflight_of_their_spec(tmp_path: Path) -> None:
    # Prepare
    spec = str(HEART / "task.toml")
    out = tmp_path / "mocks"
    nodes = [arg for name, path in SILOS.items() for arg in ("--node", f"{name}={path}")]
    # Execute: the mocks through the federation, then the pre-flight on them
    mocked = run_lab("mock", "--spec", spec, *nodes, "--rows", "200", "--out", str(out), workspace=tmp_path / "ws")
    assert mocked.returncode == 0, mocked.stdout + mocked.stderr
    mocks = {name: out / f"{name}.synthetic.csv" for name in SILOS}
    checked = run_lab(
        "check",
        "--spec",
        spec,
        *[arg for name, path in mocks.items() for arg in ("--node", f"{name}={path}")],
        workspace=tmp_path / "ws",
    )
    # Assert
    assert sorted(out.iterdir()) == sorted(mocks.values())
    assert [line for line in mocked.stdout.splitlines() if line.startswith("wrote")] == [
        f"wrote {mocks[name]}: node {name}, 200 synthetic rows" for name in sorted(SILOS)
    ]
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rows = [line.split("│") for line in checked.stdout.splitlines() if line.startswith("│")]
    assert sorted(row[1].strip() for row in rows if "fits the spec" in row[4]) == sorted(SILOS)
    assert leftover_processes(tmp_path / "ws") == []
