"""The coordinator unit: a SuperLink with its certificates and its state database, in its home."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lab.core.environ import SIGNING_KEY
from lab.registry.signing import PRIVATE_KEY_FILE
from lab.runtime.connection import Connection
from lab.runtime.environ import process_environ
from lab.runtime.forked import start_python
from lab.runtime.processes import LOOPBACK, LoggedProcess, Started, executable, free_port, start_logged, stop_trees
from lab.runtime.security import CoordinatorCerts, init_coordinator, make_federation_key

__all__ = ["Coordinator"]


@dataclass
class Coordinator(Started):
    """A SuperLink serving on ``host:port`` (a free port when 0), its state in ``home``.

    With ``secure`` it serves TLS with the federation's own CA (``home/certs``) and admits only
    nodes whose public key was registered. Use as a context manager, or ``start`` and ``stop``.
    """

    home: Path
    secure: bool = False
    host: str = LOOPBACK
    port: int = 0
    certs: CoordinatorCerts | None = None  # secure, and None: a new CA and certificate in home/certs
    env: dict[str, str] = field(default_factory=dict)  # extra environment (the ServerApp inherits it)
    #: True: Flower's own SuperExec, started by the SuperLink, which starts each run's ServerApp as
    #: ``flwr-serverapp`` from the PATH (what a coordinator's own host may do: tests/attacks).
    #: False: the lab's warm SuperExec (lab.runtime.superexec), started beside the SuperLink.
    flower_superexec: bool = False
    process: LoggedProcess | None = field(default=None, init=False)
    superexec: LoggedProcess | None = field(default=None, init=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connection(self) -> Connection:
        """How the ``flwr`` command and the nodes reach this SuperLink."""
        return Connection(self.address, self.certs.ca_cert if self.certs else None)

    @property
    def signing_key(self) -> Path:
        """The federation's private signing key (its public half beside it, for members)."""
        return self.home / "certs" / PRIVATE_KEY_FILE

    @property
    def processes(self) -> list[LoggedProcess]:
        """The processes started and running: the SuperLink and the lab's SuperExec beside it."""
        return [p for p in (self.process, self.superexec) if p is not None]

    @property
    def flwr_home(self) -> Path:
        return self.home / "flwr-home"

    def start(self) -> None:
        """Start the SuperLink and wait until it listens."""
        self.home = self.home.resolve()
        self.port = self.port or free_port(self.host)
        make_federation_key(self.home / "certs")
        transport = ["--insecure"]
        if self.secure:
            self.certs = self.certs or init_coordinator(self.home / "certs")
            transport = [
                "--ssl-certfile",
                str(self.certs.server_cert),
                "--ssl-keyfile",
                str(self.certs.server_key),
                "--ssl-ca-certfile",
                str(self.certs.ca_cert),
                "--enable-supernode-auth",
            ]
        self.connection.write(self.flwr_home)
        self.process = start_logged(
            "superlink",
            [
                executable("flower-superlink"),
                *transport,
                "--port",
                str(self.port),
                "--database",
                str(self.home / "superlink.db"),
                "--disable-runtime-dependency-installation",
                *([] if self.flower_superexec else ["--isolation", "process"]),
            ],
            env=self._environ(),
            log_path=self.home / "logs" / "superlink.log",
            cwd=self.home,
        )
        self.process.wait_listening(self.port, host=self.host)
        if not self.flower_superexec:
            self.superexec = self._start_superexec(self.process.popen.pid)

    def _environ(self) -> dict[str, str]:
        # The ServerApp inherits the federation's signing key: every model it registers is signed.
        return {**process_environ(self.flwr_home), SIGNING_KEY.name: str(self.signing_key), **self.env}

    def _start_superexec(self, superlink: int) -> LoggedProcess:
        """The lab's SuperExec (lab.runtime.superexec), in the SuperLink's environment, exiting with it."""
        transport = ["--root-certificates", str(self.certs.ca_cert)] if self.certs else ["--insecure"]
        return start_python(
            "superexec",
            "lab.runtime.superexec:main",
            ["--runtime-api-address", self.address, *transport, "--parent-pid", str(superlink)],
            env=self._environ(),
            log_path=self.home / "logs" / "superexec.log",
            cwd=self.home,
        )

    def register(self, public_key: Path, name: str | None = None) -> int:
        """Admit a node's public key (`flwr supernode register`); the node id it will have."""
        return self.connection.register(public_key, self.flwr_home, name=name)

    def stop(self) -> None:
        """Stop the SuperLink and everything it started."""
        if self.processes:
            stop_trees(self.processes)
        self.process = self.superexec = None
