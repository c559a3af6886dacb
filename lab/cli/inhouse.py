"""In-house commands: reruns of a registered model, the environment, spec hashes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from lab.cli.options import FederationKey, PasswordFile, TrackingCa, TrackingUri, Workspace, fmt, read_password
from lab.core.environ import WORKSPACE
from lab.core.sources import TableSource
from lab.errors import UsageError
from lab.runtime.environ import federation_key_for, lock_path, tracking_uri_for

__all__ = ["env_app", "evaluate", "model_app", "predict", "spec_app"]

console = Console()
err = Console(stderr=True)

env_app = typer.Typer(help="The pinned environment: its fingerprint, and drift from the lock.", no_args_is_help=True)


spec_app = typer.Typer(help="Task specs.", no_args_is_help=True)
model_app = typer.Typer(help="Registered models, taken in-house.", no_args_is_help=True)


@model_app.command("pull")
def model_pull(
    model: Annotated[str, typer.Argument(help="Model URI, e.g. models:/heart-disease@champion.")],
    tracking_uri: Annotated[str, typer.Option(help="The coordinator's tracking server, https://HOST:PORT.")],
    out: Annotated[Path, typer.Option(help="Folder to write the model to (lab predict --model FOLDER).")],
    user: Annotated[str, typer.Option(help="Your tracking account (the coordinator made it when admitting you).")] = "",
    password_file: PasswordFile = None,
    ca: TrackingCa = None,
    federation_key: FederationKey = None,
    workspace: Workspace = Path(WORKSPACE.default),
) -> None:
    """Fetch a registered model with its lock and fingerprints, check the federation's signature
    and every file's hash, and only then write it, to predict and evaluate offline."""
    from lab.registry.rerun import pull_model

    key = federation_key_for(workspace, federation_key)
    folder = pull_model(
        model, tracking_uri, out, federation_key=key, username=user, password=read_password(password_file), ca=ca
    )
    console.print(f"pulled {escape(model)} into {folder}; rerun it offline: lab evaluate --model {folder} --data TABLE")


@spec_app.command("hash")
def spec_hash(path: Annotated[Path, typer.Argument(help="The task spec (TOML).")]) -> None:
    """Print the spec's sha256, as agreements name it in [[tasks]]."""
    from lab.core.spec import load_spec

    print(load_spec(path).sha256)


Lock = Annotated[Path | None, typer.Option(help="The lock file (default: environments/requirements.lock).")]
Node = Annotated[str | None, typer.Option(help="Read the table in this node's format from the spec.")]
AllowDrift = Annotated[
    bool,
    typer.Option("--allow-env-drift", help="Run even if this environment differs from the model's (recorded)."),
]


def predict(
    model: Annotated[str, typer.Option(help="Model URI, e.g. models:/heart-disease@champion.")],
    data: Annotated[str, typer.Option(help="Your raw table: a CSV or Parquet file, or a database URL.")],
    out: Annotated[Path, typer.Option(help="Where to write the table with predictions (.csv or .parquet).")],
    node: Node = None,
    allow_env_drift: AllowDrift = False,
    workspace: Workspace = Path(WORKSPACE.default),
    tracking_uri: TrackingUri = "",
    federation_key: FederationKey = None,
) -> None:
    """Apply a registered model to a raw table, in-house (its federation's signature checked first).

    Next to --out, a .provenance.json file records the model, both environments and any drift.
    """
    from lab.registry.rerun import check_environment, load_model, predict_table, provenance

    loaded = load_model(model, tracking_uri_for(workspace, tracking_uri), federation_key_for(workspace, federation_key))
    drift = check_environment(loaded, allow_drift=allow_env_drift)
    _warn_drift(drift.lines())
    scored, empty = predict_table(loaded, data, out, node=node)
    record = out.with_name(out.name + ".provenance.json")
    record.write_text(
        json.dumps({**provenance(loaded, model, drift), "rows_scored": scored, "rows_empty": empty}, indent=2),
        encoding="utf-8",
    )
    console.print(f"wrote {out} ({scored} rows scored" + (f", {empty} left empty: missing values)" if empty else ")"))


def evaluate(
    model: Annotated[str, typer.Option(help="Model URI, e.g. models:/heart-disease@champion.")],
    data: Annotated[str, typer.Option(help="Your raw table, with the target column: a file, or a database URL.")],
    split: Annotated[str, typer.Option(help="test (as the federation split it), train or all.")] = "test",
    node: Node = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    allow_env_drift: AllowDrift = False,
    workspace: Workspace = Path(WORKSPACE.default),
    tracking_uri: TrackingUri = "",
    federation_key: FederationKey = None,
) -> None:
    """Evaluate a registered model on a raw table, in-house (its federation's signature checked first)."""
    from lab.registry.rerun import check_environment, evaluate_table, load_model, provenance

    if split not in ("test", "train", "all"):
        raise UsageError(f"--split {split!r}: choose test, train or all")
    loaded = load_model(model, tracking_uri_for(workspace, tracking_uri), federation_key_for(workspace, federation_key))
    drift = check_environment(loaded, allow_drift=allow_env_drift)
    _warn_drift(drift.lines())
    result = evaluate_table(loaded, data, node=node, split=split)  # type: ignore[arg-type]
    if as_json:
        out = {
            "metrics": result.metrics,
            "rows": result.rows,
            "split": result.split,
            "intervals": {k: list(v) for k, v in result.intervals.items()},
            "auc_unreliable": result.auc_unreliable,
        }
        print(json.dumps({**out, "provenance": provenance(loaded, model, drift)}))
        return
    table = RichTable(title=f"{escape(TableSource.of(data).label)}: {result.split} split, {result.rows} rows")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% interval", justify="right")
    for name, value in result.metrics.items():
        interval = result.intervals.get(name)
        shown = f"{interval[0]:.3f}–{interval[1]:.3f}" if interval else ""
        if name == "auc" and result.auc_unreliable:
            shown = f"unreliable: {result.smallest_class} row(s) of a class"
        table.add_row(name, fmt(value, 6), shown)
    console.print(table)


@env_app.command("show")
def env_show(
    packages: Annotated[bool, typer.Option("--packages", help="List every package and version.")] = False,
) -> None:
    """Print this environment's fingerprint and its parts."""
    from lab.core.environment import Environment

    current = Environment.current()
    console.print(f"fingerprint  {current.fingerprint}")
    console.print(f"python       {current.python} ({sys.version.split()[0]})")
    console.print(f"platform     {current.platform}")
    console.print(f"packages     {len(current.packages)}")
    if packages:
        for pin in current.pins:
            console.print(f"  {pin}", highlight=False)


@env_app.command("verify")
def env_verify(lock: Lock = None) -> None:
    """Compare this environment with the lock; exit 1 with the differences if they differ."""
    from lab.core.environment import Environment

    path = lock_path(lock)
    current, expected = Environment.current(), Environment.from_lock_file(path)
    drift = current.diff(expected)
    if not drift:
        console.print(f"environment matches {path.name}: fingerprint {current.fingerprint[:16]}")
        return
    err.print(f"[red]environment differs from {path}[/] ({len(drift.lines())} differences):", highlight=False)
    for line in drift.lines():
        err.print(f"  {line}", highlight=False)
    err.print("reinstall from the lock: `make clean setup`")
    raise typer.Exit(1)


def _warn_drift(lines: list[str]) -> None:
    if lines:
        err.print(f"[yellow]warning:[/] running in an environment that differs from the model's ({len(lines)}):")
        for line in lines:
            err.print(f"  {line}", highlight=False)
