"""Shared fixtures: the demo data, the heart spec, and the lab's command line."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
import pytest

from lab.core.environ import PRIVATE_ENV
from lab.core.spec import TaskSpec, load_spec

ROOT = Path(__file__).resolve().parent.parent
HEART = ROOT / "data" / "heart-disease"
SILOS = {
    "cleveland": HEART / "processed.cleveland.data",
    "hungary": HEART / "processed.hungarian.data",
    "switzerland": HEART / "processed.switzerland.data",
    "va": HEART / "processed.va.data",
}

os.environ.update(PRIVATE_ENV)
# The width `lab` prints at when the tests run it (run_lab): the CLI's consoles read it once, when
# lab.cli is imported, so it is set here, before any test imports it (and a path in a message is
# never folded across lines).
os.environ["COLUMNS"] = "200"


@pytest.fixture
def identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower stamps new messages with the process's task identity, which the runtime sets."""
    from flwr.supercore.task_identity import TaskIdentity

    for attribute in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attribute, 1)


@pytest.fixture(autouse=True)
def _tracking_uri_as_found() -> Iterator[None]:
    """Each test leaves MLFLOW_TRACKING_URI as it found it: mlflow.set_tracking_uri (a test's own,
    or the lab's Tracker run in-process) also sets it in the process's environment, and every lab
    command a later test of the same worker starts would then record to that test's store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if os.environ.get("MLFLOW_TRACKING_URI") != before:
        import mlflow

        mlflow.set_tracking_uri(before)  # MLflow's own global too; None unsets the variable


@pytest.fixture(scope="session")
def heart_spec() -> TaskSpec:
    return load_spec(HEART / "task.toml")


def lab_command() -> list[str]:
    """The `lab` console command of the environment running the tests."""
    return [str(Path(sys.executable).parent / "lab")]


def agreement_file(
    folder: Path, spec: TaskSpec, node: str, *replacements: tuple[str, str], node_figures: bool = True
) -> Path:
    """A node's agreement approving this checkout's app for ``spec``, with clauses rewritten by
    (old, new) text replacements (each must match). It shows the node's own figures, as a local
    federation's default agreement does, unless ``node_figures`` is False: the tests that compare
    a node's rerun with the run's record read them."""
    from lab.node.agreement import template
    from lab.runtime.app import app_hash

    text = template(spec, app_hash(ROOT), spec.organisation(node), node_figures=node_figures)
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    path = folder / f"{node}.toml"
    path.write_text(text)
    return path


def run_lab(*args: str, workspace: Path) -> subprocess.CompletedProcess[str]:
    """`lab ARGS`, run in this process as the console script runs it (Typer's ``CliRunner`` over
    the same app, whose command group maps errors to exit statuses), recording to the workspace's
    own MLflow store; its exit status, stdout and stderr as a finished process's.

    In this process, a command costs what it does, not the 4 to 6 CPU-seconds of importing the lab,
    PyTorch and MLflow again (some fifty commands a suite), and the nodes a command starts are
    forked from this worker's forkserver, which has imported theirs once. What is about the
    process itself (signals, the console script, an environment of its own) runs
    ``lab_command()`` in a new one (test_ctrl_c_stops_every_process, test_environment_e2e)."""
    from typer.testing import CliRunner

    from lab.cli import app

    env = {"LAB_WORKSPACE": str(workspace), "COLUMNS": "200", "MLFLOW_TRACKING_URI": None}
    here = Path.cwd()
    os.chdir(ROOT)  # as the console script is run from the checkout
    try:
        result = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess([*lab_command(), *args], result.exit_code, result.stdout, result.stderr)


def leftover_processes(workspace: Path) -> list[str]:
    """Processes whose FLWR_HOME or working directory lies in the workspace: everything the lab
    started there (a node's worker, forked from a server that has imported what it needs, shows
    the server's environment, but works in its node's home)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(place.startswith(str(workspace)) for place in (proc.environ().get("FLWR_HOME", ""), proc.cwd())):
                found.append(f"{proc.pid}: {' '.join(proc.info['cmdline'] or [])}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


#: Fixture scopes that tie the tests using them to one worker: each worker would otherwise make its
#: own (a federation started twice). Session fixtures are cheap here (a spec read once a worker).
_SHARED_SCOPES = ("module", "class", "package")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist turns the groups into its units of work
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """How the suite is shared among pytest-xdist's workers (``--dist loadgroup``): the tests of a
    module that use one of its module fixtures (a federation started for the module) go to one
    worker together; every other test goes wherever a worker is free, so a module of long tests
    that each start their own federation (the notebooks, the faults) is spread over the workers.
    Tests marked ``long(seconds)`` (a minute or more each, or a module's group of tests together)
    go first, the longest first, so that the workers finish together instead of one waiting at the
    end for a long test handed out last."""
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        defs = fixtures.name2fixturedefs.values() if fixtures is not None else []
        if any(chain and chain[-1].scope in _SHARED_SCOPES for chain in defs):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    items.sort(key=_longest_first)  # stable: the rest keep their order


def _longest_first(item: pytest.Item) -> float:
    """``-seconds`` of a test marked ``long(seconds)``, 0 for the others."""
    long = item.get_closest_marker("long")
    return -float(long.args[0]) if long is not None else 0.0


@pytest.hookimpl(trylast=True)  # after pytest-xdist's own, which names each test's group in its id
def pytest_collection_finish(session: pytest.Session) -> None:
    """In a worker of ``--dist loadgroup``: stop at once if pytest-xdist did not group the tests
    (it passes a test's group on in the test's id, which pytest 9.2's ids ignore: pytest-xdist#1386).
    Silently ungrouped, every module's federation would start once per worker."""
    if not session.config.getoption("loadgroup", default=False):
        return
    lost = [item.nodeid for item in session.items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if lost:
        why = (
            f"pytest-xdist did not group {len(lost)} tests (the first: {lost[0]}), so each worker would start "
            "their module's federation again: keep pytest below 9.2 (environments/requirements.in)"
        )
        os.write(2, f"\n{why}\n".encode())  # the worker's own stderr, the controller's terminal: its report is lost
        pytest.exit(why, returncode=pytest.ExitCode.USAGE_ERROR)


# -- A suite stopped by a signal tears down ---------------------------------------------------------
#
# By default SIGTERM (a CI time limit, `kill`) and SIGHUP (a closed terminal) end pytest at once:
# no fixture's teardown runs, and the federations, namespaces, bridges and servers the tests started
# keep running (they live in their own sessions, out of the signal's reach). Here both are made a
# Ctrl-C: a KeyboardInterrupt in the main thread, after which pytest still runs its session's end
# (_pytest.main.wrap_session), where _pytest.runner's pytest_sessionfinish tears down every fixture
# (SetupState.teardown_exact). The xdist controller runs no test: it passes the signal on to its
# workers, which do, and waits for them. Alone, xdist would end them before their teardown is over:
# it asks them to exit (NodeManager.teardown_nodes) and kills them after 10 s, and execnet's
# worker interrupts itself after 5 s and calls os._exit 10 s later.

#: How long a stopped xdist controller waits for its workers' teardowns before xdist ends them.
TEARDOWN_PATIENCE = 120.0

_stopped_by: list[int] = []  # the signal that is stopping this process, once one has come
_previous: dict[int, Any] = {}  # the handlers replaced, put back at the end (and in forked children)
_config: list[pytest.Config] = []  # this process's pytest configuration, for the handler


def _stop(signum: int, frame: FrameType | None) -> None:
    """The first stop signal: passed on to the xdist workers, then raised as Ctrl-C. Any later one
    (a second Ctrl-C, the terminal's own copy of one passed on, execnet's self-interrupt) is
    ignored, so that no teardown is cut short half-way; Ctrl-\\ or SIGKILL end one that hangs."""
    if _stopped_by:
        return
    _stopped_by.append(signum)
    for worker in _workers():
        with contextlib.suppress(psutil.Error):
            worker.send_signal(signum)
    raise KeyboardInterrupt


def _workers() -> list[psutil.Process]:
    """The xdist workers, in the controller (its children: it runs no test, so it starts nothing
    else); none in a worker or a run without xdist, where the tests' own processes are children."""
    if not _config or not _config[0].pluginmanager.has_plugin("dsession"):
        return []
    return psutil.Process().children()


def _restore_signals() -> None:
    for sig, handler in _previous.items():
        if signal.getsignal(sig) is _stop:
            signal.signal(sig, handler)


# A process a test forks (multiprocessing) is not pytest: it keeps the usual meaning of each signal.
os.register_at_fork(after_in_child=_restore_signals)


def pytest_configure(config: pytest.Config) -> None:
    _config[:] = [config]
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        handler = signal.getsignal(sig)
        if handler is not signal.SIG_IGN and handler is not None:  # one ignored on purpose stays so (nohup)
            _previous[sig] = handler
            signal.signal(sig, _stop)


def pytest_unconfigure(config: pytest.Config) -> None:
    _restore_signals()


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which ends the workers
def pytest_sessionfinish(session: pytest.Session) -> None:
    """A controller stopped by a signal waits, up to TEARDOWN_PATIENCE, until each worker has ended
    its session, its teardown included (execnet closes the worker's channel then)."""
    manager = getattr(session.config.pluginmanager.get_plugin("dsession"), "nodemanager", None)
    if not _stopped_by or manager is None:
        return
    with contextlib.suppress(OSError):  # a closed terminal (SIGHUP) cannot show it
        name = signal.Signals(_stopped_by[0]).name
        sys.stderr.write(f"\n{name}: the workers are tearing down every fixture (up to {TEARDOWN_PATIENCE:.0f} s)\n")
    nodes = [getattr(gateway, "node", None) for gateway in manager.group]  # xdist's WorkerController
    channels = [node.channel for node in nodes if hasattr(node, "channel")]
    deadline = time.monotonic() + TEARDOWN_PATIENCE
    while not all(channel.isclosed() for channel in channels) and time.monotonic() < deadline:
        time.sleep(0.2)
