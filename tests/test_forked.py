"""Workers forked from a server that has imported what they need (lab.runtime.forked): each is a
process of its own, as a started one is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from lab.core.environ import PROCESS_TAGS
from lab.runtime.forked import start_python
from lab.runtime.processes import stop_trees

from .conftest import ROOT


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
    env = {**os.environ, "ONLY": "this"}
    started = start_python("probe", "tests.forked_probe:main", ["3"], env=env, log_path=log, cwd=home)
    assert started.popen.wait(timeout=120) == 3  # its exit status, as a started process's
    record = _record(log)
    assert record["argv"] == ["3"]
    assert record["cwd"] == str(home)
    assert record["sid"] == started.popen.pid != os.getsid(0)  # a session of its own: no terminal's Ctrl-C
    assert record["env"] == {**env, PROCESS_TAGS.name: started.tag}  # what it was given, and its tag
    assert "to stderr" in log.read_text()  # both streams in its log
    started.log_file.close()


def test_a_forked_process_is_stopped_by_pid_like_a_started_one(tmp_path: Path) -> None:
    log = tmp_path / "probe.log"
    env = dict(os.environ)
    started = start_python("probe", "tests.forked_probe:main", ["wait"], env=env, log_path=log, cwd=tmp_path)
    _record(log)
    assert started.popen.poll() is None
    pid = started.popen.pid
    stop_trees([started], grace=10)
    assert started.popen.poll() is not None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_what_a_forked_process_left_behind_is_stopped_with_it(tmp_path: Path) -> None:
    """An orphan of a forked process (a ServerApp whose SuperExec died) shows the forkserver's
    environment, not its tag: it is found by its session, which the forked process leads."""
    log = tmp_path / "probe.log"
    started = start_python(
        "probe", "tests.forked_probe:main", ["orphan"], env=dict(os.environ), log_path=log, cwd=tmp_path
    )
    assert started.popen.wait(timeout=120) == 0
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    orphan = psutil.Process(next(record["orphan"] for record in records if "orphan" in record))
    assert orphan.is_running() and orphan.ppid() != started.popen.pid  # its parent is gone
    stop_trees([started], grace=10)
    assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE


def test_a_process_given_its_own_python_path_starts_an_interpreter_that_imports_from_it(tmp_path: Path) -> None:
    """A fork imports nothing anew from PYTHONPATH: a node given one of its own (the environment
    tests' drifted node) gets an interpreter of its own."""
    own = tmp_path / "own"
    own.mkdir()
    (own / "only_here.py").write_text((Path(__file__).parent / "forked_probe.py").read_text())
    env = {**os.environ, "PYTHONPATH": str(own)}
    log = tmp_path / "probe.log"
    started = start_python("probe", "only_here:main", ["5"], env=env, log_path=log, cwd=tmp_path)
    assert started.popen.wait(timeout=120) == 5, log.read_text()
    assert _record(log)["env"]["PYTHONPATH"] == str(own)
    started.log_file.close()


def test_the_forkserver_is_stopped_with_the_process_that_started_it(tmp_path: Path) -> None:
    """A process that forked nodes leaves nothing running once it has exited: not its forked
    processes (the lab stops those), not the forkserver, not its resource tracker."""
    script = (
        "import os, sys, psutil\n"
        "from pathlib import Path\n"
        "from lab.runtime.forked import start_python\n"
        "here = Path(sys.argv[1])\n"
        "started = start_python('probe', 'tests.forked_probe:main', ['0'], env=dict(os.environ),"
        " log_path=here / 'probe.log', cwd=here)\n"
        "assert started.popen.wait(timeout=120) == 0\n"
        "print(' '.join(str(p.pid) for p in psutil.Process().children(recursive=True)))\n"
    )
    command = [sys.executable, "-c", script, str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    helpers = [int(pid) for pid in done.stdout.split()]
    assert len(helpers) >= 2  # the forkserver and its resource tracker ran
    assert [pid for pid in helpers if psutil.pid_exists(pid)] == []
