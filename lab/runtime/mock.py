"""Mock tables for a federation (`lab mock`, ``Federation.mock``): from each node's catalog, which
the pre-flight query brings, one synthetic table per node drawn (lab.core.mock) and written beside
the others; and what can be checked of such a request before any process starts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lab.contract.results import NodeCheck, PreflightAnswer
from lab.core.mock import mock_table, write_mock
from lab.core.sources import TableSource
from lab.core.spec import TaskSpec
from lab.errors import DataError, UsageError

__all__ = ["check_request", "mock_tables"]


def mock_tables(task: TaskSpec, answers: PreflightAnswer, rows: int, out: str | Path, seed: int = 0) -> dict[str, Path]:
    """Each node's mock, drawn from its pre-flight answer (``Federation.check``) and written into
    ``out``: nothing is asked of the nodes here (``Federation.mock`` asks them first)."""
    if rows <= 0:
        raise UsageError(f"--rows {rows}: give how many mock rows to draw per node, 1 or more")
    folder = _writable(Path(out))
    tables = {
        name: mock_table(_catalog(check), task, node=name, rows=rows, seed=seed)
        for name, check in sorted(answers.nodes.items())
    }
    return {name: write_mock(table, task, node=name, folder=folder) for name, table in tables.items()}


def check_request(spec: TaskSpec, nodes: Mapping[str, str], rows: int, out: str | Path) -> Path:
    """What can be checked before any process starts: the rows, the output folder (created if
    needed; returned) and the local ``nodes`` (name: table; none for a coordinator's).

    Raises UsageError or DataError as ``Federation.mock`` says.
    """
    if rows <= 0:
        raise UsageError(f"--rows {rows}: give how many mock rows to draw per node, 1 or more")
    folder = _writable(Path(out))
    _check_nodes(spec, nodes)
    return folder


def _writable(folder: Path) -> Path:
    """The output folder, created if needed, once it is known to take files."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"--out {str(folder)!r} cannot be created: {exc.strerror}; give a folder you can write to"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--out {str(folder)!r} is not writable; give a folder you can write to")
    return folder


def _check_nodes(spec: TaskSpec, nodes: Mapping[str, str]) -> None:
    """Local nodes must be the spec's (when it lists any), each with a table that exists."""
    listed = sorted(spec.nodes)
    for name, source in nodes.items():
        if listed and name not in spec.nodes:
            raise UsageError(
                f"--node {name}: not a node of the spec, which lists {listed!r}; name one of them, or add it to "
                "the spec's [nodes] (a mock is written in its node's format)"
            )
        if not TableSource.of(source).exists():
            raise DataError(f"node {name!r}: {source!r} does not exist; give the path of its table")


def _catalog(check: NodeCheck) -> dict[str, Any]:
    """A node's catalog from its pre-flight answer, or why there is none."""
    if check.refused:
        raise DataError(
            f"node {check.node!r} did not describe its table: {check.refused}; a mock needs the node's catalog "
            '(its agreement\'s allow.outputs must include "catalog")'
        )
    if not check.catalog:
        problems = "; ".join(f"{column}: {problem}" for column, problem in check.problems)
        raise DataError(
            f"node {check.node!r} could not describe its table ({problems or 'no reason given'}); fix it first"
        )
    return check.catalog
