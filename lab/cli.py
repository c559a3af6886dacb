"""`lab`: the front door for analysts, organisations and coordinators."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from lab.errors import LabError
from lab.governance_cli import agreement_app, app_app, coordinator_app, node_app
from lab.inhouse_cli import (
    TrackingUri,
    Workspace,
    env_app,
    evaluate,
    fmt,
    lock_path,
    predict,
    spec_app,
    tracking_uri_for,
)
from lab.settings import PRIVATE_ENV, WORKSPACE, project_root

os.environ.update(PRIVATE_ENV)  # before MLflow or Flower is imported by any command

app = typer.Typer(
    help="A federated data science lab on Flower and MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)

#: The demo federation: node name -> its silo under data/heart-disease/.
DEMO_NODES = {
    "cleveland": "processed.cleveland.data",
    "hungary": "processed.hungarian.data",
    "switzerland": "processed.switzerland.data",
    "va": "processed.va.data",
}

app.add_typer(env_app, name="env")
app.add_typer(spec_app, name="spec")
app.add_typer(agreement_app, name="agreement")
app.add_typer(app_app, name="app")
app.add_typer(node_app, name="node")
app.add_typer(coordinator_app, name="coordinator")


@app.command()
def demo(
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 5,
    strategy: Annotated[str, typer.Option(help="fedavg, fedprox, fedadam or fedyogi.")] = "fedavg",
    secure: Annotated[bool, typer.Option("--secure", help="TLS and node authentication on loopback.")] = False,
    workspace: Workspace = Path(WORKSPACE.default),
) -> None:
    """Run the demo federation: four hospitals, the real Flower runtime, MLflow tracking.

    Each hospital gets a data-use agreement approving this task and this app (its FAB hash).
    """
    from lab.governance_cli import app_hash, demo_agreement
    from lab.spec import load_spec

    data = project_root() / "data" / "heart-disease"
    spec = load_spec(data / "task.toml")
    fab_hash = app_hash()
    agreements = {}
    for name in DEMO_NODES:
        path = workspace / "nodes" / name / "agreement.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(demo_agreement(spec.name, spec.sha256, fab_hash, spec.organisation(name)), encoding="utf-8")
        agreements[name] = path
    nodes = {name: data / file for name, file in DEMO_NODES.items()}
    _federate(
        data / "task.toml",
        nodes,
        workspace=workspace,
        settings={"num-rounds": rounds, "strategy": strategy},
        tracking_uri=tracking_uri_for(workspace),
        agreements=agreements,
        secure=secure,
    )


@app.command()
def run(
    spec: Annotated[Path, typer.Option(help="The task spec (TOML).")],
    node: Annotated[list[str], typer.Option(help="NAME=PATH of one node's table; repeat per node.")],
    agreement: Annotated[
        list[str] | None, typer.Option(help="NAME=PATH of a node's data-use agreement, which it then enforces.")
    ] = None,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 5,
    strategy: Annotated[str, typer.Option(help="fedavg, fedprox, fedadam or fedyogi.")] = "fedavg",
    min_nodes: Annotated[int, typer.Option(help="Fail unless this many nodes take part.")] = 2,
    secure: Annotated[bool, typer.Option("--secure", help="TLS and node authentication on loopback.")] = False,
    environment_policy: Annotated[
        str, typer.Option(help="strict: leave out nodes whose environment differs from the lock; warn: flag them.")
    ] = "strict",
    setting: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE run setting (TOML value).")] = None,
    workspace: Workspace = Path(WORKSPACE.default),
    tracking_uri: TrackingUri = "",
) -> None:
    """Run a federation of local nodes, one per --node, on the task in --spec."""
    nodes = _named_paths(node, "--node", "cleveland=data/cleveland.csv")
    agreements = _named_paths(agreement or [], "--agreement", "cleveland=cleveland-agreement.toml")
    if set(agreements) - set(nodes):
        raise LabError(f"--agreement names {sorted(set(agreements) - set(nodes))!r}, which no --node names")
    settings: dict[str, Any] = {
        "num-rounds": rounds,
        "strategy": strategy,
        "min-nodes": min_nodes,
        "environment-policy": environment_policy,
    }
    settings.update(_parse_settings(setting or []))
    _federate(
        spec,
        nodes,
        workspace=workspace,
        settings=settings,
        tracking_uri=tracking_uri_for(workspace, tracking_uri),
        agreements=agreements,
        secure=secure,
    )


@app.command()
def check(
    spec: Annotated[Path, typer.Option(help="The task spec (TOML).")],
    node: Annotated[list[str], typer.Option(help="NAME=PATH of one node's table; repeat per node.")],
    agreement: Annotated[list[str] | None, typer.Option(help="NAME=PATH of a node's data-use agreement.")] = None,
    workspace: Workspace = Path(WORKSPACE.default),
    tracking_uri: TrackingUri = "",
) -> None:
    """Pre-flight: ask every node, through the federation, to check its table against the spec."""
    nodes = _named_paths(node, "--node", "cleveland=data/cleveland.csv")
    agreements = _named_paths(agreement or [], "--agreement", "cleveland=cleveland-agreement.toml")
    _federate(
        spec,
        nodes,
        workspace=workspace,
        settings={"mode": "check", "min-nodes": 1},
        tracking_uri=tracking_uri_for(workspace, tracking_uri),
        agreements=agreements,
    )


app.command()(predict)
app.command()(evaluate)


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
    workspace: Workspace = Path(WORKSPACE.default),
    tracking_uri: TrackingUri = "",
) -> None:
    """Open the MLflow UI on the lab's tracking store."""
    import subprocess

    from lab.runtime import executable
    from lab.settings import private_environ

    uri = tracking_uri_for(workspace, tracking_uri)
    console.print(f"MLflow UI on http://127.0.0.1:{port} for {uri} (Ctrl-C to stop)")
    proc = subprocess.Popen(
        [executable("mlflow"), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)],
        env=private_environ(),
    )
    try:
        proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=15)


def _named_paths(items: list[str], option: str, example: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise LabError(f"{option} {item!r} should be NAME=PATH, e.g. {option} {example}")
        out[name] = Path(path)
    return out


def _parse_settings(items: list[str]) -> dict[str, Any]:
    import tomllib

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise LabError(f"--set {item!r} should be KEY=VALUE, e.g. --set learning-rate=0.05")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value
    return out


def _federate(
    spec_path: Path,
    nodes: dict[str, Path],
    *,
    workspace: Path,
    settings: dict[str, Any],
    tracking_uri: str,
    agreements: dict[str, Path] | None = None,
    secure: bool = False,
) -> None:
    """Start the federation, run the task, print progress and the per-organisation table."""
    from lab.launch import build_run_config, submit_run
    from lab.runtime import LocalFederation, NodeSpec
    from lab.spec import load_spec

    spec = load_spec(spec_path)
    for name, path in nodes.items():
        if not path.is_file() and settings.get("mode") != "check":  # a pre-flight lets the node report it
            raise LabError(f"node {name!r}: {str(path)!r} does not exist; give the path of its table")
    run_config = build_run_config(
        spec, settings, tracking_uri=tracking_uri, expected_nodes=len(nodes), lock=lock_path(), root=project_root()
    )
    rounds = int(settings.get("num-rounds", 5))
    started = time.monotonic()
    what = "pre-flight check" if settings.get("mode") == "check" else f"{rounds} rounds of {settings.get('strategy')}"
    console.print(f"[bold]{spec.name}[/]: {len(nodes)} nodes, {what}; workspace {workspace}")
    mlflow_runs: list[str] = []

    def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "started" and event.get("mlflow_run_id"):
            mlflow_runs.append(event["mlflow_run_id"])
        _show(bar, task, event, rounds, spec.metrics[0])

    try:
        with (
            LocalFederation(
                workspace,
                [NodeSpec(n, p, agreement=(agreements or {}).get(n)) for n, p in nodes.items()],
                secure=secure,
            ) as federation,
            _progress() as bar,
        ):
            task = bar.add_task("preparing nodes", total=rounds)
            outcome = submit_run(federation, app_dir=project_root(), run_config=run_config, on_event=on_event)
    except BaseException as exc:
        # The coordinator was stopped before it could close its MLflow run: close it here.
        from lab.tracking import close_unfinished

        for run_id in mlflow_runs:
            close_unfinished(tracking_uri, run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    if settings.get("mode") == "check":
        _preflight_table(outcome.final["preflight"])
    else:
        _summary_table(outcome.final, spec.metrics, time.monotonic() - started)


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _show(bar: Progress, task: Any, event: dict[str, Any], rounds: int, metric: str) -> None:
    kind = event["event"]
    if kind == "joined":
        bar.console.print(
            f"  [green]joined[/] {event['node']} ({event['organisation']}): "
            f"{event['train_rows']} train / {event['test_rows']} test rows"
        )
    elif kind == "refused":
        bar.console.print(f"  [red]refused[/] {event['reason']}")
    elif kind == "warning":
        bar.console.print(f"  [yellow]warning[/] {event['reason']}")
    elif kind == "train":
        # Nodes score the model they received, i.e. the previous round's global model.
        value = (event.get("mean") or {}).get(metric)
        shown = f", mean {metric} {fmt(value)} after round {event['round'] - 1}" if event["round"] > 1 else ""
        bar.update(
            task,
            completed=event["round"],
            description=f"round {event['round']}/{rounds}: {event['answered']}/{event['asked']} nodes answered{shown}",
        )
    elif kind == "evaluate":
        value = (event.get("mean") or {}).get(metric)
        bar.update(
            task,
            completed=event["round"],
            description=f"final model: {event['answered']}/{event['asked']} nodes, mean {metric} {fmt(value)}",
        )
    for node, reason in (event.get("errors") or {}).items():
        bar.console.print(f"  [red]{node}[/]: {reason}")


def _preflight_table(nodes: dict[str, Any]) -> None:
    """One table: which node fails which column, and why."""
    table = RichTable(title="Pre-flight: every node's table against the task spec")
    for column in ("node", "rows", "column", "problem"):
        table.add_column(column)
    failing = 0
    for name, result in sorted(nodes.items()):
        if "refused" in result:
            table.add_row(name, "", "", f"[red]refused[/]: {result['refused']}")
            failing += 1
            continue
        rows = str(result["catalog"].get("rows", "?"))
        if not result["problems"]:
            table.add_row(name, rows, "", "[green]fits the spec[/]")
        for problem in result["problems"]:
            table.add_row(name, rows, problem["column"], problem["problem"])
        failing += bool(result["problems"])
    console.print(table)
    if failing:
        err.print(f"{failing} of {len(nodes)} nodes do not fit the spec")
        raise typer.Exit(1)


def _summary_table(final: dict[str, Any], metrics: tuple[str, ...], seconds: float) -> None:
    shown: list[str] = [m for m in ("accuracy", "auc", "rmse", "r2") if m in metrics] or list(metrics[:2])
    table = RichTable(title="Federated model vs. each organisation's local-only model (own test split)")
    table.add_column("node")
    table.add_column("test rows", justify="right")
    for metric in shown:
        table.add_column(f"{metric}\nfederated", justify="right")
        table.add_column(f"{metric}\nlocal-only", justify="right")
    for row in final["nodes"]:
        cells = [row["node"], str(row["test_rows"])]
        for metric in shown:
            cells += [fmt(row["federated"].get(metric)), fmt(row["local_only"].get(metric))]
        table.add_row(*cells)
    mean = final["mean"]
    table.add_row("[bold]mean[/]", "", *[fmt(mean.get(f"{k}.{m}")) for m in shown for k in ("federated", "local_only")])
    console.print(table)
    if final.get("registered"):
        console.print(f"registered [bold]models:/{final['registered']}@champion[/] (version {final['version']})")
    console.print(f"wall time {seconds:.0f} s")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the lab the way Ctrl-C does: processes first


def main() -> NoReturn:
    """Entry point: a user's mistake is one clear line on stderr, never a traceback."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app(standalone_mode=True)
    except LabError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted; every process the lab started has been stopped")
        sys.exit(130)
    sys.exit(0)
