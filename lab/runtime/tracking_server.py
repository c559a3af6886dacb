"""The shared tracking server: MLflow's own server with its basic-auth app, on loopback, its store,
artifacts and accounts in the coordinator's home.

Accounts cannot take over: MLflow's ``default_permission`` is no access and its workspaces are on,
so an account may create an experiment or a registered model only with a grant on the workspace,
which only the coordinator's (the admin) has. Each member's account holds one role,
``federation-member``: read every experiment and registered model of this server (it serves one
federation), and nothing else: no run of its own, no metric on the coordinator's runs, no alias
moved, nothing created under a task's name before the coordinator. Passwords live in files
readable by their owner only and reach MLflow through its environment variables, never a command
line.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import RuntimeStartError
from lab.runtime.environ import private_environ
from lab.runtime.processes import LOOPBACK, LoggedProcess, Started, executable, free_port, start_logged, stop_trees

__all__ = ["ADMIN", "MEMBER_ROLE", "TrackingServer", "secret"]

#: The coordinator's account: the one that writes runs and registers models.
ADMIN = "coordinator"
#: Every member's role: read the federation's experiments and registered models.
MEMBER_ROLE = "federation-member"
#: MLflow's default workspace, where this server keeps everything.
WORKSPACE = "default"


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
            "default_permission = NO_PERMISSIONS\n"
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
                "--enable-workspaces",
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
        """A member's account, with the role that reads every experiment and registered model and
        writes nothing; its password (kept in the coordinator's home, to hand to the member)."""
        from mlflow.exceptions import MlflowException, RestException
        from mlflow.server import get_app_client

        from lab.registry.tracking import account

        password = secret(self.home / "accounts" / name)
        try:
            with account(ADMIN, self.admin_password):
                auth = get_app_client("basic-auth", tracking_uri=self.uri)
                try:
                    auth.create_user(name, password)
                except RestException as exc:
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                role = next((r for r in auth.list_roles(WORKSPACE) if r.name == MEMBER_ROLE), None)
                if role is None:
                    role = auth.create_role(WORKSPACE, MEMBER_ROLE, "reads the federation's runs and models only")
                    for resource in ("experiment", "registered_model"):
                        auth.add_role_permission(role.id, resource, "*", "READ")
                if MEMBER_ROLE not in {r.name for r in auth.list_user_roles(name)}:
                    auth.assign_role(name, role.id)
        except MlflowException as exc:
            raise RuntimeStartError(
                f"the tracking server refused the account {name!r}: {str(exc).splitlines()[0]}; see its log, "
                f"{self.home / 'server.log'}"
            ) from None
        return password

    def stop(self) -> None:
        if self.process is not None:
            stop_trees([self.process])
            self.process = None
