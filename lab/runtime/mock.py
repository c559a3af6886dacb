"""Mock tables for a federation (`lab mock`): each node's catalog through the pre-flight query, then
one synthetic table per node drawn from it (lab.core.mock) and written beside the others."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab.contract.events import Event
from lab.contract.results import NodeCheck, PreflightAnswer
from lab.core.environ import WORKSPACE
from lab.core.mock import mock_table, write_mock
from lab.core.sources import TableSource
from lab.core.spec import TaskSpec, load_spec
from lab.errors import DataError, UsageError
from lab.runtime.federation import Federation

__all__ = ["check_request", "mock_federation", "mock_tables"]


def mock_federation(
    spec: str | Path,
    federation: Federation,
    rows: int,
    out: str | Path,
    seed: int = 0,
    *,
    workspace: str | Path = WORKSPACE.default,
    tracking_uri: str = "",
    on_event: Callable[[Event], None] = lambda _: None,
) -> dict[str, Path]:
    """Ask every node of ``federation`` for its catalog and write a mock of its table into ``out``.

    Parameters
    ----------
    spec : str or Path
        The task spec: the mocks have its columns, in the format it gives each node.
    federation : Federation
        Local nodes (``Federation.local``) or a coordinator's (``Federation.remote``), as `lab check`
        takes them; the catalog query runs on it exactly as there.
    rows : int
        Rows of each mock, before the spec's ``drop-row`` policy drops those with missing values.
    out : str or Path
        The folder for the mocks (created if needed): ``NODE.synthetic.csv`` or ``.parquet``.
    seed : int (default: 0)
        Seed of the draws (each node's are drawn from this seed and its name).
    workspace : str or Path (default: ``$LAB_WORKSPACE`` or ./workspace)
        Where the federation's processes, logs and run records go.

    Returns
    -------
    dict of str to Path
        Each node's mock file. Nothing is written unless every node's mock could be drawn.

    Raises
    ------
    UsageError
        If ``rows`` is under 1, ``out`` cannot be written, or a local node is not one the spec lists.
    DataError
        If a node refused the query, could not describe its table, or its catalog lacks what a
        column needs (lab.core.mock says which and the fix).
    """
    task = load_spec(spec)
    check_request(task, federation, rows, out)
    answers = federation.check(task, workspace=Path(workspace), tracking_uri=tracking_uri, on_event=on_event)
    return mock_tables(task, answers, rows, out, seed)


def mock_tables(task: TaskSpec, answers: PreflightAnswer, rows: int, out: str | Path, seed: int = 0) -> dict[str, Path]:
    """The mocks of ``mock_federation`` from the nodes' pre-flight answers already gathered
    (``Federation.check``): nothing is asked of the nodes again."""
    if rows <= 0:
        raise UsageError(f"--rows {rows}: give how many mock rows to draw per node, 1 or more")
    folder = _writable(Path(out))
    tables = {
        name: mock_table(_catalog(check), task, node=name, rows=rows, seed=seed)
        for name, check in sorted(answers.nodes.items())
    }
    return {name: write_mock(table, task, node=name, folder=folder) for name, table in tables.items()}


def check_request(spec: TaskSpec, federation: Federation, rows: int, out: str | Path) -> Path:
    """What can be checked before any process starts: the rows, the output folder (created if
    needed; returned) and the local nodes.

    Raises UsageError or DataError as ``mock_federation`` says.
    """
    if rows <= 0:
        raise UsageError(f"--rows {rows}: give how many mock rows to draw per node, 1 or more")
    folder = _writable(Path(out))
    _check_nodes(spec, federation)
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


def _check_nodes(spec: TaskSpec, federation: Federation) -> None:
    """Local nodes must be the spec's (when it lists any), each with a table that exists."""
    listed = sorted(spec.nodes)
    for name, source in federation.nodes.items():
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
