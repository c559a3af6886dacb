"""The options the lab's commands share, and how their values are read and shown."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from lab.core.environ import TRACKING_URI, WORKSPACE
from lab.core.sources import TableSource
from lab.errors import UsageError

__all__ = [
    "AgreementOption",
    "NoAgreementOption",
    "NodeOption",
    "PasswordFile",
    "TrackingCa",
    "FederationKey",
    "TrackingUser",
    "SpecOption",
    "TrackingUri",
    "Workspace",
    "fmt",
    "named_paths",
    "named_sources",
    "read_password",
]

Workspace = Annotated[
    Path, typer.Option(help="Folder for everything the lab starts (logs, MLflow store).", envvar=WORKSPACE.name)
]
TrackingUri = Annotated[
    str, typer.Option(help="MLflow tracking URI (default: the workspace's SQLite store).", envvar=TRACKING_URI.name)
]
SpecOption = Annotated[Path, typer.Option(help="The task spec (TOML).")]
NodeOption = Annotated[
    list[str] | None,
    typer.Option(
        help="NAME=TABLE: one node's table, a CSV or Parquet file or a database URL such as "
        "sqlite:///records.db?table=patients (see the README); repeat per node."
    ),
]
AgreementOption = Annotated[
    list[str] | None,
    typer.Option(
        help="NAME=PATH of a local node's data-use agreement, which it then enforces (a local node given none "
        "enforces the default one, written to its home)."
    ),
]
NoAgreementOption = Annotated[
    bool,
    typer.Option(
        "--no-agreement", help="Start the nodes without any agreement, on purpose: nothing is checked, all is audited."
    ),
]

_NODE_EXAMPLE = "cleveland=data/cleveland.csv"


def named_sources(items: list[str]) -> dict[str, str]:
    """--node NAME=TABLE: a table's path (made absolute), or a database URL as given."""
    return {name: TableSource.of(value).located() for name, value in _named(items, "--node", _NODE_EXAMPLE).items()}


def named_paths(items: list[str] | None, option: str, example: str) -> dict[str, Path]:
    """OPTION NAME=PATH, repeated."""
    return {name: Path(value) for name, value in _named(items or [], option, example).items()}


def _named(items: list[str], option: str, example: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise UsageError(f"{option} {item!r} should be NAME=PATH, e.g. {option} {example}")
        out[name] = value
    return out


def fmt(value: Any, digits: int = 3) -> str:
    """A number as tables show it (n/a for none or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


PasswordFile = Annotated[Path | None, typer.Option(help="A file holding the account's password.")]
TrackingUser = Annotated[str, typer.Option(help="Your account on a coordinator's tracking server.")]
TrackingCa = Annotated[Path | None, typer.Option(help="The federation's CA certificate, to check the server's.")]
FederationKey = Annotated[
    Path | None,
    typer.Option(
        help="The federation's public key (federation.pub, handed over with the CA certificate) that signed the "
        "model; default: $LAB_FEDERATION_KEY, else the workspace's own (certs/federation.pub)."
    ),
]


def read_password(password_file: Path | None) -> str:
    """The password in ``password_file`` (passwords never go on a command line), or none."""
    if password_file is None:
        return ""
    if not password_file.is_file():
        raise UsageError(f"--password-file {str(password_file)!r} does not exist; give the file holding your password")
    return password_file.read_text(encoding="utf-8").strip()
