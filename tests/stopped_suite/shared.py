"""What both modules of the stopped suite share: where the outer test wants their markers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: The inner run's own folder (from the outer test): markers, logs and the federation's workspace.
FOLDER = Path(os.environ.get("STOPPED_SUITE_DIR", "/nonexistent"))
#: The tag of the inner run's network namespaces and bridge (deploy/netns.Network's ``tag``).
TAG = os.environ.get("STOPPED_SUITE_TAG", "")

#: Each module skips unless tests/test_suite_stops_cleanly_e2e.py runs it.
only_when_stopped_on_purpose = pytest.mark.skipif(
    "STOPPED_SUITE_DIR" not in os.environ, reason="run, and stopped, by tests/test_suite_stops_cleanly_e2e.py"
)

#: Longer than the outer test waits: each test only ends when its run is stopped.
SLEEP = 600.0


def ready(name: str) -> None:
    """Tell the outer test that this worker's processes are up (the file appears whole at once)."""
    part = FOLDER / f"{name}.part"
    part.write_text(str(os.getpid()))
    part.rename(FOLDER / f"{name}.ready")
