"""A real PostgreSQL server for a test: Debian's package, its own data folder, stopped after.

The server listens on loopback on a free port and on a socket in its folder. The test's tables are
loaded by the superuser over the socket; nodes connect over TCP as ``lab``, a role that may only
read, with a password kept in a file.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from lab.runtime.processes import free_port

SKIP_REASON = "PostgreSQL's server is not installed (`apt-get install postgresql`; .ci/run installs it)"


def _bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@dataclass(frozen=True)
class Postgres:
    """A running server: where it listens, and the reader's password file."""

    folder: Path
    port: int
    password_file: Path
    password: str
    socket: Path

    def url(self, database: str, *, table: str) -> str:
        """The URL a node uses: no password in it, the password file named as a lab parameter."""
        return f"postgresql://lab@127.0.0.1:{self.port}/{database}?table={table}&password-file={self.password_file}"

    def load(self, database: str, table: str, frame: pd.DataFrame) -> None:
        """Create ``database`` (if new) with ``table`` holding ``frame``, readable by ``lab`` only."""
        import sqlalchemy as sa

        admin = f"postgresql+psycopg2://postgres@/{{}}?host={self.socket}&port={self.port}"
        engine = sa.create_engine(admin.format("postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            exists = connection.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database})
            if exists.first() is None:
                connection.execute(sa.text(f'CREATE DATABASE "{database}"'))
        engine.dispose()
        engine = sa.create_engine(admin.format(database))
        with engine.begin() as connection:
            frame.to_sql(table, connection, index=False, if_exists="replace")
            connection.execute(sa.text(f'GRANT SELECT ON "{table}" TO lab'))
        engine.dispose()


def _run(argv: list[str], *, user: str | None) -> None:
    command = ["runuser", "-u", user, "--", *argv] if user else argv
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} failed: {result.stdout}{result.stderr}")


@contextmanager
def postgres_server() -> Iterator[Postgres]:
    """Start a PostgreSQL server in a new folder; stop it and remove the folder afterwards."""
    bindir = _bindir()
    if bindir is None:
        pytest.skip(SKIP_REASON)
    # PostgreSQL refuses to run as root: as root, the server runs as the package's own user.
    user = "postgres" if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="lab-postgres-"))
    folder.chmod(0o755)
    password = secrets.token_urlsafe(16)
    if user:
        shutil.chown(folder, user)
    port = free_port()
    data, log = folder / "data", folder / "server.log"
    started = False
    secret = Path(tempfile.mkdtemp(prefix="lab-node-secret-"))
    try:
        _run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ],
            user=user,
        )
        options = f"-p {port} -k {folder} -h 127.0.0.1"
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start"], user=user)
        started = True
        role = f"CREATE ROLE lab LOGIN PASSWORD '{password}'"
        _run([str(bindir / "psql"), "-h", str(folder), "-p", str(port), "-U", "postgres", "-c", role], user=user)
        reader_file = secret / "db-password"  # the node's own copy, readable by the node only
        reader_file.write_text(password + "\n")
        reader_file.chmod(0o600)
        yield Postgres(folder, port, reader_file, password, folder)
    finally:
        shutil.rmtree(secret, ignore_errors=True)
        if started:
            _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], user=user)
        shutil.rmtree(folder, ignore_errors=True)
