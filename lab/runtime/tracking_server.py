"""The shared tracking server: MLflow's own server with its basic-auth app, on loopback, its store,
artifacts and accounts in the coordinator's home.

Every member reads the registry with an account of its own; only the coordinator's account writes
(MLflow's ``default_permission = READ``). Passwords live in files readable by their owner only and
reach MLflow through its environment variables, never a command line.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import RuntimeStartError
from lab.runtime.environ import private_environ
from lab.runtime.processes import LOOPBACK, LoggedProcess, Started, executable, free_port, start_logged, stop_trees

__all__ = ["ADMIN", "TrackingServer", "secret"]

#: The coordinator's account: the one that writes runs and registers models.
ADMIN = "coordinator"


def secret(path: Path) -> str:
    """The password kept in ``path``, made (random, readable by its owner only) if missing."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24) + "\n", encoding="utf-8")
    os.chmod(path, 0o600)
    return path.read_text(encoding="utf-8").strip()


@dataclass
class TrackingServer(Started):
    """``mlflow server --app-name basic-auth`` on loopback at ``port`` (a free one when 0)."""

    home: Path
    port: int = 0
    process: LoggedProcess | None = field(default=None, init=False)

    @property
    def uri(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def admin_password(self) -> str:
        return secret(self.home / "secrets" / ADMIN)

    def start(self) -> None:
        self.home = self.home.resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        config = self.home / "auth.ini"
        config.write_text(
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = sqlite:///{self.home / 'auth.db'}\n"
            f"admin_username = {ADMIN}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "grant_default_workspace_access = true\n",
            encoding="utf-8",
        )
        env = private_environ(
            MLFLOW_AUTH_CONFIG_PATH=str(config),
            MLFLOW_AUTH_ADMIN_PASSWORD=self.admin_password,
            MLFLOW_FLASK_SERVER_SECRET_KEY=secret(self.home / "secrets" / "flask-secret-key"),  # CSRF tokens
        )
        self.process = start_logged(
            "tracking",
            [
                executable("mlflow"),
                "server",
                "--app-name",
                "basic-auth",
                "--backend-store-uri",
                f"sqlite:///{self.home / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.home / "artifacts"),
                "--host",
                LOOPBACK,
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            env=env,
            log_path=self.home / "server.log",
            cwd=self.home,
        )
        self.process.wait_listening(self.port, timeout=180.0)

    def add_account(self, name: str) -> str:
        """An account that can read every run and registered model; its password (kept in the
        coordinator's home, to hand to the member)."""
        import httpx

        password = secret(self.home / "accounts" / name)
        response = httpx.post(
            f"{self.uri}/api/2.0/mlflow/users/create",
            json={"username": name, "password": password},
            auth=(ADMIN, self.admin_password),
            timeout=30,
        )
        if response.status_code not in (200, 400) or (
            response.status_code == 400 and "already exists" not in response.text
        ):
            raise RuntimeStartError(f"the tracking server refused the account {name!r}: {response.text[:300]}")
        return password

    def stop(self) -> None:
        if self.process is not None:
            stop_trees([self.process])
            self.process = None
