"""Processes forked from a server that has already imported what they need (multiprocessing's
forkserver, from the standard library).

A node's warm worker imports PyTorch, scikit-learn and Flower before it answers anything (about
5 CPU-seconds), and its SuperNode imports Flower (over 1). A federation on one host (the demo, a
local run, the tests) starts both for every node, and every one of them paid it, on a machine of
two cores at the moment the coordinator was starting too. Here the imports are paid once per
process that starts nodes: its forkserver imports ``PRELOAD`` and forks each SuperNode and worker
from itself. A forked process is a process of its own, as a started one is: its own session (a
terminal's Ctrl-C reaches it only through the lab, which stops it), environment, working
directory and log file; nothing of one reaches another after the fork. What it shares with its
siblings is only memory pages of the libraries, copy-on-write.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Any

from lab.core.environ import PRIVATE_ENV
from lab.runtime.processes import LoggedProcess, start_logged, tagged
from lab.runtime.worker import WARM_UP

__all__ = ["PRELOAD", "Forked", "start_python", "start_server"]

logger = logging.getLogger(__name__)

#: What the forkserver imports once, before it forks anything: Flower's SuperNode, the worker and
#: what answering a first message needs. Never the app's own code (``federation``): a worker
#: imports that from the app (FAB) its node approved, afresh for every run.
PRELOAD = ["flwr.supernode.cli", "lab.runtime.worker", *WARM_UP]

_context: list[Any] = []  # the forkserver context, made on first use (one per process)
_server_env: dict[str, str] = {}  # what of the environment the server's interpreter started with


def _forkserver() -> Any:
    if not _context:
        # The server is spawned with this process's environment and imports Flower and MLflow,
        # which read their telemetry switches once, at import: they must be off before it starts.
        os.environ.update(PRIVATE_ENV)
        _server_env.update(_shaping(dict(os.environ)))
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        _context.append(context)
        atexit.register(_stop_server)
    return _context[0]


def _stop_server() -> None:
    """At this process's exit: stop the forkserver and its resource tracker, and wait for them.
    Alone they end a moment after this process does (when the pipe it holds open closes), which is
    after it, not with it. ``_stop`` is how the standard library's own tests stop them."""
    from multiprocessing import forkserver, resource_tracker

    forkserver._forkserver._stop()  # type: ignore[attr-defined]
    resource_tracker._resource_tracker._stop()  # type: ignore[attr-defined]


def _shaping(env: dict[str, str]) -> dict[str, str]:
    """The variables that shape an interpreter at its start, which a fork cannot change: where it
    imports from (PYTHONPATH, PYTHONHOME, ...) and what the loader links (LD_*)."""
    return {k: v for k, v in env.items() if (k.startswith(("PYTHON", "LD_")) and k != "PYTHONUNBUFFERED")}


def start_server() -> None:
    """Start the forkserver now, if it does not run yet, without waiting for its imports: a caller
    about to start other processes first (a federation's coordinator) lets them overlap. The first
    fork waits for them."""
    _forkserver()
    from multiprocessing import forkserver

    forkserver.ensure_running()


class Forked:
    """A forked process, answering what the lab asks of a started one (``subprocess.Popen``'s
    ``pid``, ``poll``, ``wait`` and ``returncode``)."""

    def __init__(self, process: Any) -> None:
        self.process = process

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    @property
    def returncode(self) -> int | None:
        code = self.process.exitcode
        return None if code is None else int(code)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        self.process.join(timeout)
        return self.returncode


def start_python(
    name: str, target: str, argv: list[str], *, env: dict[str, str], log_path: Path, cwd: Path
) -> LoggedProcess:
    """Start ``target`` in its own session, with ``env`` as its whole environment, ``cwd`` as its
    working directory and its output appended to ``log_path``: forked from the forkserver, or in
    an interpreter of its own when ``env`` shapes the interpreter otherwise than the server's was
    (a node given a PYTHONPATH of its own imports what it finds there).

    ``target`` is a console script's entry point (``module:function``, as a package declares it):
    the function is called with no arguments and ``argv`` as its command line (``sys.argv[1:]``),
    and what it returns is the process's exit status, as the script would run it."""
    _forkserver()
    if _shaping(env) != _server_env:
        module, function = target.split(":")
        script = f"import sys; from {module} import {function}; sys.exit({function}())"
        return start_logged(name, [sys.executable, "-c", script, *argv], env=env, log_path=log_path, cwd=cwd)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("ab")
    logger.info("forking %s: %s %s", name, target, " ".join(argv))
    env, tag = tagged(env)
    process = _forkserver().Process(
        target=_run, args=(target, argv, env, str(log_path), str(cwd)), name=name, daemon=True
    )
    process.start()
    return LoggedProcess(name, Forked(process), log_path, log_file, tag)


def _run(target: str, argv: list[str], env: dict[str, str], log_path: str, cwd: str) -> None:
    """In the forked process: become a process of its own, then call ``target``."""
    os.setsid()
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    with open(os.devnull, "rb") as devnull:
        os.dup2(devnull.fileno(), 0)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    module, function = target.split(":")
    sys.argv = [module, *argv]
    raise SystemExit(getattr(importlib.import_module(module), function)())
