"""`make lab`: JupyterLab on notebooks/, started as a user starts it (on a terminal), its kernel
this environment's python seeing the workspace's tracking store, and stopped by one Ctrl-C."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from lab.core.environ import PRIVATE_ENV
from lab.runtime.environ import private_environ

from .conftest import ROOT

pytestmark = pytest.mark.e2e

URL = re.compile(r"http://127\.0\.0\.1:\d+/lab\?token=[0-9a-f]+")


class Terminal:
    """A process on a terminal of its own, in its own process group (as a shell's foreground job)."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.master, follower = pty.openpty()
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdin=follower, stdout=follower, stderr=follower, start_new_session=True
        )
        os.close(follower)
        self.output = ""

    def read_until(self, pattern: re.Pattern[str], seconds: float) -> re.Match[str] | None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if found := pattern.search(self.output):
                return found
            if select.select([self.master], [], [], 0.2)[0]:
                try:
                    self.output += os.read(self.master, 65536).decode(errors="replace")
                except OSError:  # the terminal closed: everything on it exited
                    break
        return pattern.search(self.output)

    def ctrl_c(self) -> None:
        """What a terminal does on Ctrl-C: SIGINT to the whole foreground group."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self.master)


def _api(url: str, path: str, token: str, method: str = "GET") -> dict[str, object]:
    request = urllib.request.Request(url + path, method=method, headers={"Authorization": f"token {token}"})
    for attempt in range(20):  # the URL is printed as the server starts listening
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return dict(json.load(response))
        except ConnectionRefusedError:
            time.sleep(0.25 * (attempt + 1))
        except urllib.error.URLError as exc:
            if not isinstance(exc.reason, ConnectionRefusedError):
                raise
            time.sleep(0.25 * (attempt + 1))
    raise AssertionError(f"{url}{path} refused every connection")


def _wait_ready(kernel: psutil.Process) -> None:
    """Wait until the kernel answers a kernel_info request on its own connection file."""
    from jupyter_client import BlockingKernelClient

    connection = next(arg for arg in kernel.cmdline() if arg.endswith(".json"))
    client = BlockingKernelClient(connection_file=connection)
    client.load_connection_file()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=120)
    finally:
        client.stop_channels()


def _command(process: psutil.Process) -> str:
    """The process's command line, or "" if it ended (or is a zombie) since it was listed."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_make_lab_serves_the_notebooks_with_this_environment_and_stops_on_one_ctrl_c(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    env = private_environ(LAB_WORKSPACE=str(workspace))
    env.pop("MLFLOW_TRACKING_URI", None)
    # -o: the environment under test is taken as installed (no reinstall in the middle of a test run).
    venv = Path(sys.prefix)
    terminal = Terminal(["make", f"VENV={venv}", "-o", f"{venv}/bin/.installed", "lab"], env)
    try:
        found = terminal.read_until(URL, 180)
        assert found, terminal.output[-3000:]
        url, token = found.group(0).split("/lab?token=")
        assert _api(url, "/api/status", token)["started"]
        specs = _api(url, "/api/kernelspecs", token)
        assert specs["default"] == "fedlab"
        spec = specs["kernelspecs"]["fedlab"]["spec"]  # type: ignore[index]
        assert spec["display_name"] == "fedlab (.venv)"
        assert Path(spec["argv"][0]) == venv / "bin" / "python"
        assert (venv / "share" / "jupyter" / "kernels" / "fedlab" / "kernel.json").is_file()  # not in the home
        kernel_id = _api(url, "/api/kernels", token, method="POST")["id"]
        server = psutil.Process(terminal.proc.pid)
        deadline = time.monotonic() + 60
        kernels: list[psutil.Process] = []
        while time.monotonic() < deadline and not kernels:
            kernels = [p for p in server.children(recursive=True) if str(kernel_id) in _command(p)]
            time.sleep(0.2)
        assert kernels, f"kernel {kernel_id} did not start"
        _wait_ready(kernels[0])  # a kernel stopped while it still imports prints KeyboardInterrupt's traceback
        seen = kernels[0].environ()
        assert seen["LAB_WORKSPACE"] == str(workspace.resolve())
        assert seen["MLFLOW_TRACKING_URI"] == f"sqlite:///{workspace.resolve()}/mlflow.db"
        assert {k: seen.get(k) for k in PRIVATE_ENV} == PRIVATE_ENV  # telemetry off, as in the lab's processes
        assert Path(kernels[0].cmdline()[0]) == venv / "bin" / "python"
        started = [terminal.proc.pid, *(p.pid for p in server.children(recursive=True))]

        terminal.ctrl_c()
        terminal.proc.wait(timeout=30)
        assert terminal.read_until(re.compile(r"Shutting down"), 5), terminal.output[-3000:]
        assert "Traceback" not in terminal.output
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_running(pid) for pid in started):
            time.sleep(0.2)
        alive = [pid for pid in started if _running(pid)]
        assert alive == [], "still running after Ctrl-C: " + ", ".join(map(str, alive))
    finally:
        terminal.close()
