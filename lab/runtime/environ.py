"""Settings read from the environment, each with its default, and the privacy defaults."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PRIVATE_ENV",
    "FEDERATION_KEY",
    "ROSTER",
    "SIGNING_KEY",
    "TRACKING_URI",
    "WORKSPACE",
    "Setting",
    "private_environ",
    "lock_path",
    "process_environ",
    "project_root",
    "federation_key_for",
    "tracking_uri_for",
]

#: Telemetry and update checks off in every process the lab starts: this is a privacy product. And
#: MLflow unpickles nothing in them (a pickled model runs its own code when loaded; the lab's are
#: models from code, and the lab loads them itself: lab.registry.verified).
PRIVATE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
}


@dataclass(frozen=True)
class Setting:
    """One environment variable and its documented default."""

    name: str
    default: str
    doc: str

    def get(self) -> str:
        return os.environ.get(self.name, self.default)


WORKSPACE = Setting(
    "LAB_WORKSPACE",
    "workspace",
    "Folder holding everything the lab starts: Flower's home, logs, the MLflow store.",
)
ROSTER = Setting(
    "LAB_ROSTER",
    "",
    "The coordinator's home with its roster (set by `lab coordinator start` for its ServerApps): "
    "each node's admitted name, and what it last reported.",
)
SIGNING_KEY = Setting(
    "LAB_SIGNING_KEY",
    "",
    "The federation's private signing key (set by the lab for its coordinator's ServerApps): every "
    "model a run registers is signed with it (lab.registry.signing).",
)
FEDERATION_KEY = Setting(
    "LAB_FEDERATION_KEY",
    "",
    "The federation's public key in-house commands check a model's signature with; empty means the "
    "workspace's own (certs/federation.pub, made by the workspace's local federation).",
)
TRACKING_URI = Setting(
    "MLFLOW_TRACKING_URI",
    "",
    "MLflow tracking URI; empty means the SQLite store inside the workspace.",
)


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
