"""Separate hosts on one machine: a Linux network namespace per party, joined by a bridge.

Each host gets its own namespace (its own loopback and network stack), a veth pair to a private
bridge, and an address on a /24 made up for the occasion. Commands run in a host with
``ip netns exec``. Everything is removed on exit: the processes the harness started (by PID), the
namespaces, the bridge. Needs root and iproute2; ``available()`` says why not otherwise.

    with Network(["coordinator", "north", "south"]) as net:
        net.run("coordinator", ["ip", "addr"])
        proc = net.launch("north", ["lab", "node", "start", ...], log=path)
        net.link("north", up=False)   # the organisation's cable pulled
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.runtime.processes import Started, stop_process

__all__ = ["Network", "available"]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def available() -> str:
    """Empty when namespaces can be made here; otherwise why not (for a test's skip reason)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "network namespaces need iproute2's `ip` (apt-get install iproute2)"
    probe = f"labprobe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"this machine cannot make network namespaces: {made.stderr.strip()}"
    _ip("netns", "delete", probe, check=False)
    return ""


@dataclass
class Network(Started):
    """The hosts, in order; the first gets .1 on the subnet, the next .2, and so on."""

    names: list[str]
    subnet: str = ""  # "10.N.M" (made from the process id when empty)
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}")
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        pid = os.getpid()
        self.subnet = self.subnet or f"10.{200 + pid % 50}.{pid % 250}"
        self.bridge = f"labbr{self.tag}"[:15]

    def namespace(self, host: str) -> str:
        return f"lab{self.tag}-{host}"[:30]

    def address(self, host: str) -> str:
        return f"{self.subnet}.{self.names.index(host) + 1}"

    def _veth(self, host: str) -> str:
        return f"lv{self.tag}{self.names.index(host)}"[:15]

    def start(self) -> None:
        """Make the bridge and each host's namespace, cable and address."""
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("link", "set", self.bridge, "up")
        for host in self.names:
            ns, veth = self.namespace(host), self._veth(host)
            _ip("netns", "add", ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
            _ip("link", "set", f"{veth}p", "netns", ns)
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")
            _ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", f"{veth}p")
            _ip("-n", ns, "link", "set", f"{veth}p", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def run(self, host: str, argv: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on ``host`` to its end."""
        return subprocess.run(["ip", "netns", "exec", self.namespace(host), *argv], text=True, **options)

    def launch(
        self, host: str, argv: list[str], *, log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` on ``host`` in its own session, its output in ``log``; stopped on exit."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace(host), *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.started.append(proc)
        return proc

    def end(self, proc: subprocess.Popen[bytes], *, grace: float = 60.0) -> int:
        """SIGTERM (the lab's commands stop everything they started), SIGKILL after ``grace``."""
        stop_process(proc, grace)
        return proc.returncode

    def link(self, host: str, *, up: bool) -> None:
        """Plug or pull ``host``'s cable (its side of the bridge)."""
        _ip("link", "set", self._veth(host), "up" if up else "down")

    def stop(self) -> None:
        """Stop what the harness started (by PID), then remove the namespaces and the bridge."""
        for proc in reversed(self.started):
            self.end(proc)
        self.started.clear()
        for host in self.names:
            _ip("netns", "delete", self.namespace(host), check=False)
            _ip("link", "delete", self._veth(host), check=False)
        _ip("link", "delete", self.bridge, check=False)
