"""A test suite stopped with SIGTERM, as a CI time limit or a user stops `make test`, cleans up
after itself: a second pytest, run as `make test` runs it (this interpreter, xdist workers, one
module each), holds in fixtures a network of namespaces with a process on it in one worker and a
local federation in the other; a SIGTERM to that pytest alone leaves no process, namespace, bridge
or worker behind (tests/conftest.py makes the signal a Ctrl-C and passes it on to the workers)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import psutil
import pytest

from lab.runtime.environ import private_environ

from .conftest import ROOT, TEARDOWN_PATIENCE, leftover_processes

sys.path.insert(0, str(ROOT / "deploy"))

from netns import available  # noqa: E402

pytestmark = pytest.mark.e2e

#: The stopped suite's modules (not named test_*.py: `make test` does not collect them).
INNER = [ROOT / "tests" / "stopped_suite" / "federation.py", ROOT / "tests" / "stopped_suite" / "hosts.py"]
#: Bounds, on a loaded machine: the inner suite's start (three interpreters, a federation), and its
#: stop (the workers' teardowns, then xdist ends them).
READY_WITHIN = 240.0
STOPPED_WITHIN = TEARDOWN_PATIENCE + 30.0


def _alive(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
    return alive


def _mentioning(folder: Path) -> list[psutil.Process]:
    """Processes whose command line mentions ``folder``, or whose FLWR_HOME lies in it (Flower's
    SuperExec names no path): everything the inner suite started there."""
    found = {int(line.split(":")[0]) for line in leftover_processes(folder)}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if str(folder) in " ".join(proc.info["cmdline"] or []):
            found.add(proc.pid)
    found.discard(os.getpid())
    processes = []
    for pid in found:
        with contextlib.suppress(psutil.Error):
            processes.append(psutil.Process(pid))
    return _alive(processes)


def _commands(processes: Iterable[psutil.Process]) -> list[str]:
    commands = []
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            commands.append(f"{proc.pid}: {' '.join(proc.cmdline())}")
    return commands


def _namespaces(tag: str) -> list[str]:
    """The network namespaces named with ``tag`` (deploy/netns.Network names them lab<tag>-<host>)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False, timeout=30)
    return [line.split()[0] for line in listed.stdout.splitlines() if line.startswith(f"lab{tag}-")]


def _links(tag: str, *kind: str) -> list[str]:
    """The links named with ``tag``, of ``kind`` ("type", "bridge"; all by default): Network's
    bridge labbr<tag> and its cables lv<tag><n>."""
    argv = ["ip", "-o", "link", "show", *kind]
    listed = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    names = [line.split(":")[1].strip().split("@")[0] for line in listed.stdout.splitlines() if ":" in line]
    return [name for name in names if name == f"labbr{tag}"[:15] or name.startswith(f"lv{tag}")]


def _clean_up(inner: subprocess.Popen[bytes], workers: list[psutil.Process], folder: Path, tag: str) -> None:
    """Whatever a failure left: the inner suite is asked to stop first (its teardown removes the
    rest), then anything still running from it is killed, by PID, and the namespaces and links of
    its own tag are removed."""
    if inner.poll() is None:
        inner.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            inner.wait(timeout=STOPPED_WITHIN)
    leftovers = _alive([*workers, *_mentioning(folder)])
    for proc in leftovers:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    if inner.poll() is None:
        inner.kill()
    inner.wait()
    psutil.wait_procs(leftovers, timeout=10)
    if available():
        return
    for namespace in _namespaces(tag):
        subprocess.run(["ip", "netns", "delete", namespace], check=False, timeout=30)
    for link in _links(tag):
        subprocess.run(["ip", "link", "delete", link], check=False, capture_output=True, timeout=30)


def test_a_suite_stopped_with_sigterm_leaves_no_process_namespace_or_bridge(tmp_path: Path) -> None:
    folder = tmp_path / "inner"
    folder.mkdir()
    tag = f"s{os.getpid() % 100000}"  # a letter first: never the digits-only tag of another Network
    hosts = not available()  # where namespaces cannot be made, the hosts' module skips, saying why
    markers = [folder / "federation.ready", *([folder / "hosts.ready"] if hosts else [])]
    log = folder / "pytest.log"
    with log.open("wb") as out:
        inner = subprocess.Popen(
            # As `make test` runs it, with two workers; no cache of this run.
            [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadfile", "-p", "no:cacheprovider"]
            + [f"--basetemp={folder / 'basetemp'}", *map(str, INNER)],
            cwd=ROOT,
            env=private_environ(STOPPED_SUITE_DIR=str(folder), STOPPED_SUITE_TAG=tag),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    workers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + READY_WITHIN
        while not all(m.exists() for m in markers) and inner.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        shown = log.read_text(errors="replace")[-3000:]
        assert all(m.exists() for m in markers), f"the inner suite did not get going:\n{shown}"
        workers = psutil.Process(inner.pid).children()
        assert len(workers) == 2, _commands(workers)
        assert len(leftover_processes(folder)) >= 3  # the SuperLink (and its SuperExec), SuperNode, worker
        assert not hosts or (len(_namespaces(tag)) == 2 and _links(tag, "type", "bridge"))

        inner.send_signal(signal.SIGTERM)  # to the pytest that was started only, as `timeout` or CI does
        started = time.monotonic()
        inner.wait(timeout=STOPPED_WITHIN)
        stopped_in = time.monotonic() - started

        left = {
            "exit status": inner.returncode,  # pytest's status for an interrupted session: 2
            "workers": _commands(_alive(workers)),
            "processes": _commands(_mentioning(folder)),
            "namespaces": _namespaces(tag) if hosts else [],
            "bridges": _links(tag, "type", "bridge") if hosts else [],
            "cables": _links(tag) if hosts else [],
        }
        nothing = {"exit status": pytest.ExitCode.INTERRUPTED, "workers": [], "processes": []}
        nothing |= {"namespaces": [], "bridges": [], "cables": []}
        assert left == nothing, f"stopped in {stopped_in:.1f} s:\n" + log.read_text(errors="replace")[-3000:]
    finally:
        _clean_up(inner, workers, folder, tag)
