"""Starting and stopping the processes the lab runs: each in its own session, its output in a log
file, and everything it starts stopped with it, by PID."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Protocol, Self

import psutil

from lab.core.environ import PROCESS_TAGS
from lab.errors import RuntimeStartError

__all__ = [
    "LOOPBACK",
    "STOP_SIGNALS",
    "Child",
    "LoggedProcess",
    "Started",
    "executable",
    "free_port",
    "interrupt_on_stop_signals",
    "start_logged",
    "tagged",
    "stop_process",
    "stop_trees",
]

logger = logging.getLogger(__name__)

#: The only address the lab's local processes listen on and talk to.
LOOPBACK = "127.0.0.1"

#: The signals that stop the lab: Ctrl-C, a `kill` or a time limit, a closed terminal or SSH session.
#: The processes the lab starts run in their own sessions, so a terminal's signals never reach them:
#: the lab must stop them itself, whichever of these it gets.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # stopped the way Ctrl-C stops it: every started unit's exit runs


def interrupt_on_stop_signals() -> None:
    """Make SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread, as Ctrl-C does, so that
    every unit of processes stops on its way out. By default either would end the process at once
    and leave its processes running. A signal the process was started ignoring (``nohup``) stays
    ignored."""
    for sig in STOP_SIGNALS[1:]:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _interrupt)


class Started:
    """A unit of processes used as a context manager: started on entry, stopped on exit (and when
    starting fails half-way)."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException as exc:  # Ctrl-C or SIGTERM while starting, too: stop what did start
            with _uninterrupted(repeat=isinstance(exc, KeyboardInterrupt)):
                self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with _uninterrupted(repeat=isinstance(exc, KeyboardInterrupt)):
            self.stop()


@contextlib.contextmanager
def _uninterrupted(*, repeat: bool) -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP meanwhile, so that no signal cuts a stop short (in the main
    thread; elsewhere signals go to it anyway).

    A signal held is dropped when ``repeat`` (the stop is already the answer to a Ctrl-C or
    SIGTERM: a second one asks for nothing more), and delivered once the stop is over otherwise:
    a unit stopping at its normal end must not swallow the signal that stops the whole program
    (a test suite's worker would go on to its next test)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        held.append(signum)

    # A handler installed outside Python (getsignal gives None) cannot be put back: left alone.
    saved = {sig: signal.signal(sig, hold) for sig in STOP_SIGNALS if signal.getsignal(sig) is not None}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        if held and not repeat:
            signal.raise_signal(held[0])  # to the handler the program had: it stops as it would have


class Child(Protocol):
    """What the lab asks of a process it started: ``subprocess.Popen``, or a forked one
    (lab.runtime.forked)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int | None: ...


@dataclass
class LoggedProcess:
    """A process started by the lab, and the log file its output goes to."""

    name: str
    popen: Child
    log_path: Path
    log_file: IO[bytes]
    tag: str = ""  # in LAB_PROCESS_TAGS of its environment and of everything it starts
    started: float = field(default_factory=time.monotonic)  # monotonic clock, when it was started

    def tail(self, lines: int = 15) -> str:
        """The last lines of its log."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_running(self) -> None:
        """Raise RuntimeStartError, with the end of its log, if the process has exited."""
        if self.popen.poll() is not None:
            raise RuntimeStartError(
                f"{self.name} exited at start (status {self.popen.returncode}); its log "
                f"{str(self.log_path)!r} ends with:\n{self.tail()}"
            )

    def wait_listening(self, port: int, *, host: str = LOOPBACK, timeout: float = 90.0) -> None:
        """Wait until something accepts connections at ``host:port``, or the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_running()
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                if sock.connect_ex((host, port)) == 0:
                    return
            time.sleep(0.2)
        raise RuntimeStartError(
            f"{self.name} did not listen on port {port} within {timeout:.0f} s; see {str(self.log_path)!r}"
        )


def tagged(env: dict[str, str]) -> tuple[dict[str, str], str]:
    """``env`` with a new tag added to its PROCESS_TAGS, and the tag: a process orphaned when its
    parent died (Flower detaches flower-superexec, and a ServerApp outlives a killed SuperLink) is
    still found by it, and stopped, with the process that started it."""
    tag = uuid.uuid4().hex
    inherited = env.get(PROCESS_TAGS.name, "")
    return {**env, PROCESS_TAGS.name: f"{inherited},{tag}" if inherited else tag}, tag


def start_logged(name: str, argv: list[str], *, env: dict[str, str], log_path: Path, cwd: Path) -> LoggedProcess:
    """Start ``argv`` in its own session, its output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("ab")
    logger.info("starting %s: %s", name, " ".join(argv))
    env, tag = tagged(env)
    popen = subprocess.Popen(
        argv,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    return LoggedProcess(name, popen, log_path, log_file, tag)


def _trees(processes: list[LoggedProcess]) -> list[psutil.Process]:
    """The processes and everything they started, their orphans included (found by their tags, or
    by their session, which each process the lab starts leads: a process forked from a forked one
    shows the forkserver's environment, not its own), in one pass over the host's processes."""
    found: dict[int, psutil.Process] = {}
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            parent = psutil.Process(proc.popen.pid)
            found.update({p.pid: p for p in (parent, *parent.children(recursive=True))})
    tags = {proc.tag for proc in processes if proc.tag}
    sessions = {proc.popen.pid for proc in processes}
    for other in psutil.process_iter():
        if other.pid not in found:
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(other.pid) in sessions or tags.intersection(
                    other.environ().get(PROCESS_TAGS.name, "").split(",")
                ):
                    found[other.pid] = other
    return list(found.values())


def stop_trees(processes: Iterable[LoggedProcess], *, grace: float = 15.0) -> None:
    """Stop every process and everything it started.

    Flower detaches flower-superexec into its own session, so process groups are not enough: the
    whole tree, and any orphan of it (by its tag), is collected first, by PID, then terminated,
    then killed after ``grace`` seconds.
    """
    processes = list(processes)
    tree = _trees(processes)
    for member in reversed(tree):
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for member in alive:
        logger.warning("%s (pid %d) did not stop in time; killing it", member.name(), member.pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(alive, timeout=5)
    for proc in processes:
        proc.popen.wait()
        proc.log_file.close()


def stop_process(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Stop one process if it still runs: SIGTERM, then SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


#: The lowest port ``free_port`` picks: above the ports services are configured on.
LOWEST_PORT = 20000


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that nothing listens on right now, picked at random below the
    kernel's ephemeral range. A port the kernel hands out for port 0 comes from that range, where
    every outgoing connection also takes its local port: on a busy host (a federation's nodes poll
    over HTTP) one took such a port between the lab picking it and its SuperNode binding it, and
    the node could not start ("address already in use")."""
    ephemeral = _ephemeral_start()
    if ephemeral - LOWEST_PORT > 1000:
        for _ in range(200):
            port = random.randrange(LOWEST_PORT, ephemeral)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # an unusual range: the kernel's pick
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range (Linux's default where it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def executable(name: str) -> str:
    """An executable of this environment (the venv's bin folder first)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name
