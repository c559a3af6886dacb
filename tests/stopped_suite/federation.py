"""The other worker of the stopped suite: a local federation (a SuperLink and a node, with its
worker) held by a fixture; then a long wait for the SIGTERM."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from lab.core.spec import load_spec
from lab.runtime.local import LocalFederation
from lab.runtime.run import node_specs

from ..conftest import HEART, SILOS
from .shared import FOLDER, SLEEP, only_when_stopped_on_purpose, ready

pytestmark = only_when_stopped_on_purpose


@pytest.fixture
def federation() -> Iterator[LocalFederation]:
    """A federation in the inner run's folder, stopped only by this fixture's teardown."""
    workspace = FOLDER / "workspace"
    nodes = node_specs(
        {"cleveland": str(SILOS["cleveland"])}, None, workspace=workspace, spec=load_spec(HEART / "task.toml")
    )
    with LocalFederation(workspace, nodes) as running:
        yield running


def test_a_federation_runs_until_the_suite_is_stopped(federation: LocalFederation) -> None:
    assert len(federation.processes) == 4  # the SuperLink, its SuperExec, the SuperNode and its worker
    ready("federation")
    time.sleep(SLEEP)
