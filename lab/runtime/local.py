"""Flower's deployment runtime on loopback: one SuperLink, one SuperNode per organisation.

Everything starts inside a workspace folder (its own ``FLWR_HOME``, logs) in its own
process group, and everything is stopped on exit, on failure and on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

import psutil

from lab.core.sources import node_source
from lab.errors import RuntimeStartError
from lab.node.guard import AGREEMENT_ENV, AUDIT_ENV, write_shim
from lab.runtime.environ import private_environ
from lab.runtime.security import CoordinatorCerts, enroll_node, init_coordinator

__all__ = ["LocalFederation", "NodeSpec", "executable", "free_port", "node_config"]

logger = logging.getLogger(__name__)

START_TIMEOUT = 90.0


@dataclass(frozen=True)
class NodeSpec:
    """One organisation's SuperNode: its name and its own table (a file's absolute path, or a
    database URL without a password)."""

    name: str
    data_path: str | Path
    env: dict[str, str] = field(default_factory=dict)  # extra environment for this node's processes
    agreement: Path | None = None  # the node's data-use agreement; None: no agreement is enforced

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_path", node_source(str(self.data_path)))


def node_config(values: Mapping[str, object]) -> str:
    """A SuperNode's ``--node-config`` text: ``key="value"`` pairs, which Flower reads as TOML
    strings inside double quotes (so a value may hold spaces but no double quote)."""
    for key, value in values.items():
        if '"' in str(value) or "\\" in str(value):
            raise RuntimeStartError(
                f"node config {key} = {str(value)!r} holds a double quote or a backslash, which Flower's "
                "--node-config cannot carry; use single quotes in a query, and a path without them"
            )
    return " ".join(f'{key}="{value}"' for key, value in values.items())


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def executable(name: str) -> str:
    """An executable of this environment (the venv's bin folder first)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class LocalFederation:
    """A SuperLink and SuperNodes started as local processes; use as a context manager."""

    workspace: Path
    nodes: list[NodeSpec]
    secure: bool = False  # TLS with the federation's own CA, and only registered node keys may join
    processes: list[_Process] = field(default_factory=list)
    port: int = 0

    certs: CoordinatorCerts = field(init=False)

    def __post_init__(self) -> None:
        self.workspace = self.workspace.resolve()
        self.flwr_home = self.workspace / "flwr-home"
        self.logs = self.workspace / "logs"

    def env(self, flwr_home: Path | None = None) -> dict[str, str]:
        """Environment for a lab process: telemetry off, its own FLWR_HOME, unbuffered output."""
        env = private_environ(FLWR_HOME=str(flwr_home or self.flwr_home), PYTHONUNBUFFERED="1")
        # Flower starts flower-superexec and flwr-*app by name: this environment's come first.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def __enter__(self) -> LocalFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the SuperLink, wait for it, then start and connect every SuperNode."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        # The SuperNodes of an earlier local federation in this workspace were stopped with it, but
        # its SuperLink's state would list them as connected until their heartbeats lapse (about a
        # minute), and a run would send them its first message: start from a fresh state.
        for stale in self.workspace.glob("superlink.db*"):
            stale.unlink()
        self.port = free_port()
        transport = ["--insecure"]
        if self.secure:
            self.certs = init_coordinator(self.workspace / "certs")
            transport = [
                "--ssl-certfile",
                str(self.certs.server_cert),
                "--ssl-keyfile",
                str(self.certs.server_key),
                "--ssl-ca-certfile",
                str(self.certs.ca_cert),
                "--enable-supernode-auth",
            ]
        self._write_connection()
        link = self._spawn(
            "superlink",
            [
                executable("flower-superlink"),
                *transport,
                "--port",
                str(self.port),
                "--database",
                str(self.workspace / "superlink.db"),
                "--disable-runtime-dependency-installation",
            ],
            self.env(),
        )
        self._wait_listening(link, self.port)
        for node in self.nodes:
            self._start_node(node)
        time.sleep(0.5)
        for proc in self.processes:
            if proc.popen.poll() is not None:
                raise RuntimeStartError(
                    f"{proc.name} exited at start (status {proc.popen.returncode}); its log "
                    f"{str(proc.log_path)!r} ends with:\n{proc.tail()}"
                )

    def stop(self) -> None:
        """Stop every process the federation started, and everything they started.

        Flower detaches flower-superexec into its own session, so process groups are not
        enough: the whole tree is collected first, by PID, then terminated.
        """
        tree: list[psutil.Process] = []
        for proc in self.processes:
            try:
                parent = psutil.Process(proc.popen.pid)
                tree += [parent, *parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        for member in reversed(tree):
            with contextlib.suppress(psutil.NoSuchProcess):
                member.terminate()
        _, alive = psutil.wait_procs(tree, timeout=15)
        for member in alive:
            logger.warning("%s (pid %d) did not stop in time; killing it", member.name(), member.pid)
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()
        psutil.wait_procs(alive, timeout=5)
        for proc in self.processes:
            proc.popen.wait()
            proc.log_file.close()
        self.processes.clear()

    def _start_node(self, node: NodeSpec) -> None:
        """A SuperNode with its own Flower home, audit log, privacy ledger and, in front of every
        app it runs, the lab's gate that admits only apps its agreement allows (lab.node.guard)."""
        home = self.workspace / "nodes" / node.name
        home.mkdir(parents=True, exist_ok=True)
        audit, ledger = home / "audit.jsonl", home / "privacy.jsonl"
        values = {"node-name": node.name, "data-path": node.data_path, "audit-log": audit, "privacy-ledger": ledger}
        env = {**self.env(home), **node.env, AUDIT_ENV: str(audit)}
        if node.agreement is not None:
            values["agreement"] = node.agreement.resolve()
            env[AGREEMENT_ENV] = str(node.agreement.resolve())
        config = node_config(values)
        gate = write_shim(home / "bin")
        env["PATH"] = os.pathsep.join([str(gate.parent), env["PATH"]])
        transport = ["--insecure"]
        if self.secure:
            keys = enroll_node(self.workspace / "keys", node.name)
            self.register(keys.public_key)
            transport = [
                "--root-certificates",
                str(self.certs.ca_cert),
                "--auth-supernode-private-key",
                str(keys.private_key),
            ]
        self._spawn(
            f"node-{node.name}",
            [
                executable("flower-supernode"),
                *transport,
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--port",
                str(free_port()),
                "--node-config",
                config,
            ],
            env,
        )

    def register(self, public_key: Path) -> None:
        """Register a node's public key with the SuperLink (`flwr supernode register`)."""
        result = subprocess.run(
            [executable("flwr"), "supernode", "register", str(public_key), "lab"],
            env=self.env(),
            cwd=self.workspace,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeStartError(
                f"registering {public_key.name} with the SuperLink failed: "
                f"{(result.stdout + result.stderr).strip()[-500:]}"
            )

    def _write_connection(self) -> None:
        """The `flwr` CLI's connection to this SuperLink, never the detached default one."""
        transport = f'root-certificates = "{self.certs.ca_cert}"' if self.secure else "insecure = true"
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "lab"\n\n[superlink.lab]\naddress = "127.0.0.1:{self.port}"\n{transport}\n',
            encoding="utf-8",
        )

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> _Process:
        log_path = self.logs / f"{name}.log"
        log_file = log_path.open("ab")
        logger.info("starting %s: %s", name, " ".join(argv))
        popen = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.workspace,
            start_new_session=True,
        )
        proc = _Process(name, popen, log_path, log_file)
        self.processes.append(proc)
        return proc

    def _wait_listening(self, proc: _Process, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeStartError(
                    f"{proc.name} exited at start (status {proc.popen.returncode}); its log "
                    f"{str(proc.log_path)!r} ends with:\n{proc.tail()}"
                )
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise RuntimeStartError(
            f"{proc.name} did not listen on port {port} within {START_TIMEOUT:.0f} s; see {str(proc.log_path)!r}"
        )
