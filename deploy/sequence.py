"""The README's "Deploy across organisations", typed by each party on its own host.

Every party is a network namespace (deploy/netns.py) with its own address and home folder; each
command is the one the README shows, run on that party's host. ``make deploy-demo`` prints every
party's terminal in order; the deployment test asserts on the same steps.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netns import Network

ROOT = Path(__file__).resolve().parent.parent
HEART = ROOT / "data" / "heart-disease"
SILOS = {
    "cleveland": "processed.cleveland.data",
    "hungary": "processed.hungarian.data",
    "switzerland": "processed.switzerland.data",
    "va": "processed.va.data",
}
FLEET_PORT, TRACKING_PORT, CONTROL = 9092, 5000, "127.0.0.1:9093"
#: The organisations whose agreement lets the federation read their own figures (node-figures =
#: true); the others keep theirs, as the template does by default.
SHOWS_FIGURES = frozenset({"cleveland"})


def lab() -> str:
    return str(Path(sys.executable).parent / "lab")


@dataclass
class Deployment:
    """A coordinator and organisations on a private network, each party with its home in ``folder``."""

    folder: Path
    organisations: list[str] = field(default_factory=lambda: list(SILOS))
    extra_hosts: list[str] = field(default_factory=list)
    say: Callable[[str, str], None] = lambda party, text: None  # (party, its terminal's text)
    net: Network = field(init=False)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.net = Network(["coordinator", *self.organisations, *self.extra_hosts])

    def __enter__(self) -> Deployment:
        self.net.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.net.__exit__(*exc)  # Network's own exit: a second Ctrl-C or SIGTERM does not cut it short

    # -- where things are ------------------------------------------------------------------

    @property
    def coordinator_address(self) -> str:
        return self.net.address("coordinator")

    def home(self, party: str) -> Path:
        return self.folder / party

    @property
    def ca(self) -> Path:
        return self.home("coordinator") / "certs" / "ca.crt"

    def env(self) -> dict[str, str]:
        from lab.runtime.environ import private_environ

        return private_environ(COLUMNS="120")

    # -- typing commands ---------------------------------------------------------------------

    def type(self, party: str, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run one command on ``party``'s host, as that party would type it; show it and its output."""
        shown = " ".join(["lab", *argv[1:]] if argv[0] == lab() else argv)
        result = self.net.run(party, argv, capture_output=True, env=self.env(), timeout=900, cwd=self.folder)
        self.say(party, f"$ {shown}\n{result.stdout}{result.stderr}".rstrip())
        if check and result.returncode != 0:
            raise RuntimeError(f"{party}: `{shown}` failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        return result

    def start(self, party: str, argv: list[str], *, key: str | None = None) -> subprocess.Popen[bytes]:
        """Start a long-running command (a coordinator, a node) on ``party``'s host."""
        log = self.folder / "terminals" / f"{key or party}.log"
        log.unlink(missing_ok=True)
        self.say(party, f"$ lab {' '.join(argv[1:])}   (runs in this terminal; its output: {log.name})")
        proc = self.net.launch(party, argv, log=log, env=self.env())
        self.processes[key or party] = proc
        return proc

    def terminal(self, key: str) -> str:
        path = self.folder / "terminals" / f"{key}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def wait_for(self, key: str, text: str, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.terminal(key):
            proc = self.processes[key]
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{key} did not say {text!r}; its terminal:\n{self.terminal(key)[-3000:]}")
            time.sleep(0.5)

    # -- the sequence ------------------------------------------------------------------------

    def coordinator_up(self) -> None:
        """The coordinator makes its certificates and starts its host."""
        home = self.home("coordinator")
        if not self.ca.is_file():
            self.type(
                "coordinator", [lab(), "coordinator", "init", "--name", self.coordinator_address, "--home", str(home)]
            )
        self.start_coordinator()

    def start_coordinator(self) -> None:
        home = self.home("coordinator")
        argv = [lab(), "coordinator", "start", "--home", str(home), "--host", self.coordinator_address]
        self.start("coordinator", argv)
        self.wait_for("coordinator", "coordinator running")

    def stop(self, key: str) -> None:
        self.net.end(self.processes.pop(key))

    def enroll_and_admit(self, organisation: str) -> None:
        """The organisation makes its key and hands the public half over; the coordinator admits it."""
        keys = self.home(organisation) / "keys"
        self.type(organisation, [lab(), "node", "enroll", organisation, "--dir", str(keys)])
        handed = self.home("coordinator") / "handed-over" / f"{organisation}.pub"
        handed.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(keys / f"{organisation}.pub", handed)
        self.type(
            "coordinator",
            [lab(), "coordinator", "admit", organisation, str(handed), "--home", str(self.home("coordinator"))],
        )
        # The coordinator hands back the CA certificate, the federation's public key and the
        # tracking account's password.
        shutil.copy(self.ca, self.home(organisation) / "ca.crt")
        shutil.copy(self.ca.with_name("federation.pub"), self.home(organisation) / "federation.pub")
        account = self.home("coordinator") / "tracking" / "accounts" / organisation
        shutil.copy(account, self.home(organisation) / "tracking-password")

    def agreement(self, organisation: str) -> Path:
        """The organisation's agreement, approving the heart task and this checkout's app (and, for
        the organisations in SHOWS_FIGURES, letting the federation read its own figures)."""
        from lab.core.spec import load_spec
        from lab.node.agreement import template
        from lab.runtime.app import app_hash

        spec = load_spec(HEART / "task.toml")
        path = self.home(organisation) / "agreement.toml"
        shown = organisation in SHOWS_FIGURES
        path.write_text(template(spec, app_hash(ROOT), spec.organisation(organisation), node_figures=shown))
        return path

    def nodes_up(self, organisations: list[str]) -> None:
        """Each organisation starts its node (all at once, as they would), and each connects."""
        for organisation in organisations:
            self.node_up(organisation, wait=False)
        for organisation in organisations:
            self.wait_for(organisation, "connected to")

    def node_up(self, organisation: str, *, wait: bool = True) -> None:
        home = self.home(organisation)
        argv = [
            lab(), "node", "start", "--name", organisation,
            "--coordinator", f"{self.coordinator_address}:{FLEET_PORT}",
            "--ca", str(home / "ca.crt"),
            "--key", str(home / "keys" / f"{organisation}.key"),
            "--data", str(HEART / SILOS[organisation]),
            "--agreement", str(self.agreement(organisation)),
            "--home", str(home / "node"),
        ]  # fmt: skip
        self.start(organisation, argv)
        if wait:
            self.wait_for(organisation, "connected to")

    def run(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """The coordinator launches a run on the connected nodes."""
        argv = [
            lab(), "run", "--coordinator", CONTROL, "--ca", str(self.ca),
            "--spec", str(HEART / "task.toml"), "--workspace", str(self.home("coordinator") / "runs-launched"), *extra,
        ]  # fmt: skip
        return self.type("coordinator", argv)

    def pull_and_evaluate(self, organisation: str) -> dict[str, Any]:
        """The organisation pulls the champion and evaluates it offline on its own table."""
        home = self.home(organisation)
        model = home / "champion"
        shutil.rmtree(model, ignore_errors=True)
        self.type(
            organisation,
            [
                lab(), "model", "pull", "models:/heart-disease@champion",
                "--tracking-uri", f"https://{self.coordinator_address}:{TRACKING_PORT}",
                "--out", str(model), "--user", organisation,
                "--password-file", str(home / "tracking-password"), "--ca", str(home / "ca.crt"),
                "--federation-key", str(home / "federation.pub"),
            ],
        )  # fmt: skip
        result = self.type(
            organisation,
            [
                lab(), "evaluate", "--model", str(model), "--data", str(HEART / SILOS[organisation]), "--json",
                "--federation-key", str(home / "federation.pub"),
            ],
        )  # fmt: skip
        return dict(json.loads(result.stdout))

    def recorded(self, script: str) -> Any:
        """What the shared tracking server holds, read on the coordinator's host with its account."""
        from lab.runtime.tracking_server import ADMIN

        password = (self.home("coordinator") / "tracking" / "secrets" / ADMIN).read_text().strip()
        code = "import json, mlflow\nclient = mlflow.MlflowClient('http://127.0.0.1:5001')\n" + script
        env = {**self.env(), "MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": password}
        result = self.net.run("coordinator", [sys.executable, "-c", code], capture_output=True, env=env, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"reading the tracking server failed:\n{result.stderr[-2000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])
