"""Settings read from the environment, each with its default, and the privacy defaults."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PRIVATE_ENV",
    "TRACKING_URI",
    "WORKSPACE",
    "Setting",
    "private_environ",
    "lock_path",
    "process_environ",
    "project_root",
    "tracking_uri_for",
]

#: Telemetry and update checks off in every process the lab starts: this is a privacy product.
PRIVATE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
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


def process_environ(flwr_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a Flower process the lab starts: telemetry off, its own Flower home,
    unbuffered output, and this environment's executables first on the PATH (Flower starts
    flower-superexec and flwr-*app by name)."""
    env = private_environ(FLWR_HOME=str(flwr_home), PYTHONUNBUFFERED="1", **extra)
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
