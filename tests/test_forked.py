"""Workers forked from a server that has imported what they need (lab.runtime.forked): each is a
process of its own, as a started one is."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil

from lab.runtime.forked import start_forked
from lab.runtime.processes import TAGS_ENV, stop_trees


def _record(log: Path) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []
        if lines:
            return json.loads(lines[0])
        time.sleep(0.1)
    raise AssertionError(f"the forked process wrote nothing to {log}")


def test_a_forked_process_has_its_own_session_environment_folder_and_log(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    log = tmp_path / "logs" / "probe.log"
    started = start_forked("probe", "tests.forked_probe:main", ["3"], env={"ONLY": "this"}, log_path=log, cwd=home)
    assert started.popen.wait(timeout=120) == 3  # its exit status, as a started process's
    record = _record(log)
    assert record["argv"] == ["3"]
    assert record["cwd"] == str(home)
    assert record["sid"] == started.popen.pid != os.getsid(0)  # a session of its own: no terminal's Ctrl-C
    assert set(record["env"]) == {"ONLY", TAGS_ENV} and record["env"]["ONLY"] == "this"  # nothing of the parent's
    assert record["env"][TAGS_ENV] == started.tag
    assert "to stderr" in log.read_text()  # both streams in its log
    started.log_file.close()


def test_a_forked_process_is_stopped_by_pid_like_a_started_one(tmp_path: Path) -> None:
    log = tmp_path / "probe.log"
    started = start_forked("probe", "tests.forked_probe:main", ["wait"], env={}, log_path=log, cwd=tmp_path)
    _record(log)
    assert started.popen.poll() is None
    pid = started.popen.pid
    stop_trees([started], grace=10)
    assert started.popen.poll() is not None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
