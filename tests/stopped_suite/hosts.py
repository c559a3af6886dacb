"""One worker of the stopped suite: two hosts (network namespaces) on a bridge, a process running
on one, held by a fixture; then a long wait for the SIGTERM."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest

from ..conftest import ROOT
from .shared import FOLDER, SLEEP, TAG, only_when_stopped_on_purpose, ready

sys.path.insert(0, str(ROOT / "deploy"))

from netns import Network, available  # noqa: E402

pytestmark = only_when_stopped_on_purpose


@pytest.fixture
def hosts() -> Iterator[Network]:
    """Two hosts, removed (with what runs on them) only by this fixture's teardown."""
    if reason := available():
        pytest.skip(reason)
    with Network(["north", "south"], tag=TAG) as net:
        yield net


def test_hosts_run_until_the_suite_is_stopped(hosts: Network) -> None:
    # The folder is in its command line: the outer test finds it there if it outlives the suite.
    sleeper = [sys.executable, "-c", f"import time; time.sleep({SLEEP})", str(FOLDER)]
    hosts.launch("north", sleeper, log=FOLDER / "north.log")
    ready("hosts")
    time.sleep(SLEEP)
