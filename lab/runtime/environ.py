"""The environment of the processes the lab starts, and where its files are (the variables
themselves, with their defaults, are in lab.core.environ)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lab.core.environ import FEDERATION_KEY, PRIVATE_ENV

__all__ = ["federation_key_for", "lock_path", "private_environ", "process_environ", "project_root", "tracking_uri_for"]


def private_environ(**extra: str) -> dict[str, str]:
    """The current environment with telemetry off, plus ``extra``."""
    env = dict(os.environ)
    env.update(PRIVATE_ENV)
    env.update(extra)
    return env


#: Flower's SuperExec's task poll interval (seconds).
TASK_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"


def process_environ(flwr_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a Flower process the lab starts: telemetry off, its own Flower home,
    unbuffered output, and this environment's executables first on the PATH (Flower starts
    flower-superexec and flwr-*app by name)."""
    # SuperExec asks for a new task every second by default: a ServerApp (and, on the subprocess
    # runtime, every node's ClientApp) would wait up to that long to start. Every 0.25 s costs
    # a quarter of asking every 0.1 s in CPU while the federation waits, for 0.1 s more at a start.
    env = private_environ(FLWR_HOME=str(flwr_home), PYTHONUNBUFFERED="1", **{TASK_POLL_ENV: "0.25", **extra})
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def project_root() -> Path:
    """The folder holding pyproject.toml with the Flower app (this checkout)."""
    here = Path(__file__).resolve().parents[2]
    if (here / "pyproject.toml").is_file():
        return here
    return Path.cwd()


def lock_path(lock: Path | None = None) -> Path:
    """The given lock file, or the project's."""
    return lock or project_root() / "environments" / "requirements.lock"


def tracking_uri_for(workspace: Path, uri: str = "") -> str:
    """The given MLflow tracking URI, or the embedded SQLite store inside the workspace."""
    return uri or f"sqlite:///{(workspace / 'mlflow.db').resolve()}"


def federation_key_for(workspace: Path, given: Path | None = None) -> Path:
    """The federation's public key a model is checked with: ``given``, else $LAB_FEDERATION_KEY,
    else the workspace's own.

    Raises
    ------
    UsageError
        When none of them exists, saying where the key comes from.
    """
    from lab.errors import UsageError
    from lab.registry.signing import PUBLIC_KEY_FILE

    key = given or (Path(FEDERATION_KEY.get()) if FEDERATION_KEY.get() else workspace / "certs" / PUBLIC_KEY_FILE)
    if not key.is_file():
        raise UsageError(
            f"no federation key to check the model's signature with ({str(key)!r} does not exist): pass "
            f"--federation-key FILE, the {PUBLIC_KEY_FILE} the coordinator hands over with the CA certificate "
            f"(or set {FEDERATION_KEY.name})"
        )
    return key
