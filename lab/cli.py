"""`lab`: the front door for analysts, organisations and coordinators."""

from __future__ import annotations

import json
import math
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
from lab.settings import PRIVATE_ENV, TRACKING_URI, WORKSPACE, project_root

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

env_app = typer.Typer(help="The pinned environment: its fingerprint, and drift from the lock.", no_args_is_help=True)
app.add_typer(env_app, name="env")
spec_app = typer.Typer(help="Task specs.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")
app.add_typer(agreement_app, name="agreement")
app.add_typer(app_app, name="app")
app.add_typer(node_app, name="node")
app.add_typer(coordinator_app, name="coordinator")


@spec_app.command("hash")
def spec_hash(path: Annotated[Path, typer.Argument(help="The task spec (TOML).")]) -> None:
    """Print the spec's sha256, as agreements name it in [[tasks]]."""
    from lab.spec import load_spec

    print(load_spec(path).sha256)


Workspace = Annotated[
    Path, typer.Option(help="Folder for everything the lab starts (logs, MLflow store).", envvar=WORKSPACE.name)
]
TrackingUri = Annotated[
    str, typer.Option(help="MLflow tracking URI (default: the workspace's SQLite store).", envvar=TRACKING_URI.name)
]
Node = Annotated[str | None, typer.Option(help="Read the table in this node's format from the spec.")]
AllowDrift = Annotated[
    bool,
    typer.Option("--allow-env-drift", help="Run even if this environment differs from the model's (recorded)."),
]


def tracking_uri_for(workspace: Path, uri: str = "") -> str:
    """The given URI, or the embedded SQLite store inside the workspace."""
    return uri or f"sqlite:///{(workspace / 'mlflow.db').resolve()}"


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


@app.command()
def predict(
    model: Annotated[str, typer.Option(help="Model URI, e.g. models:/heart-disease@champion.")],
    data: Annotated[Path, typer.Option(help="Your raw table (CSV or Parquet).")],
    out: Annotated[Path, typer.Option(help="Where to write the table with predictions (.csv or .parquet).")],
    node: Node = None,
    allow_env_drift: AllowDrift = False,
    workspace: Workspace = Path(WORKSPACE.default),
    tracking_uri: TrackingUri = "",
) -> None:
    """Apply a registered model to a raw table, in-house.

    Next to --out, a .provenance.json file records the model, both environments and any drift.
    """
    from lab.rerun import check_environment, load_model, predict_table, provenance

    loaded = load_model(model, tracking_uri_for(workspace, tracking_uri))
    drift = check_environment(loaded, allow_drift=allow_env_drift)
    _warn_drift(drift.lines())
    scored, empty = predict_table(loaded, data, out, node=node)
    record = out.with_name(out.name + ".provenance.json")
    record.write_text(
        json.dumps({**provenance(loaded, model, drift), "rows_scored": scored, "rows_empty": empty}, indent=2),
        encoding="utf-8",
    )
    console.print(f"wrote {out} ({scored} rows scored" + (f", {empty} left empty: missing values)" if empty else ")"))


@app.command()
def evaluate(
    model: Annotated[str, typer.Option(help="Model URI, e.g. models:/heart-disease@champion.")],
    data: Annotated[Path, typer.Option(help="Your raw table, with the target column.")],
    split: Annotated[str, typer.Option(help="test (as the federation split it), train or all.")] = "test",
    node: Node = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    allow_env_drift: AllowDrift = False,
    workspace: Workspace = Path(WORKSPACE.default),
    tracking_uri: TrackingUri = "",
) -> None:
    """Evaluate a registered model on a raw table, in-house."""
    from lab.rerun import check_environment, evaluate_table, load_model, provenance

    if split not in ("test", "train", "all"):
        raise LabError(f"--split {split!r}: choose test, train or all")
    loaded = load_model(model, tracking_uri_for(workspace, tracking_uri))
    drift = check_environment(loaded, allow_drift=allow_env_drift)
    _warn_drift(drift.lines())
    result = evaluate_table(loaded, data, node=node, split=split)  # type: ignore[arg-type]
    if as_json:
        out = {"metrics": result.metrics, "rows": result.rows, "split": result.split}
        print(json.dumps({**out, "provenance": provenance(loaded, model, drift)}))
        return
    table = RichTable(title=f"{data.name}: {result.split} split, {result.rows} rows")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name, _fmt(value, 6))
    console.print(table)


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


Lock = Annotated[Path | None, typer.Option(help="The lock file (default: environments/requirements.lock).")]


def lock_path(lock: Path | None = None) -> Path:
    """The given lock file, or the project's."""
    return lock or project_root() / "environments" / "requirements.lock"


@env_app.command("show")
def env_show(
    packages: Annotated[bool, typer.Option("--packages", help="List every package and version.")] = False,
) -> None:
    """Print this environment's fingerprint and its parts."""
    from lab.environment import Environment

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
    from lab.environment import Environment

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
        shown = f", mean {metric} {_fmt(value)} after round {event['round'] - 1}" if event["round"] > 1 else ""
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
            description=f"final model: {event['answered']}/{event['asked']} nodes, mean {metric} {_fmt(value)}",
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
            cells += [_fmt(row["federated"].get(metric)), _fmt(row["local_only"].get(metric))]
        table.add_row(*cells)
    mean = final["mean"]
    table.add_row(
        "[bold]mean[/]", "", *[_fmt(mean.get(f"{k}.{m}")) for m in shown for k in ("federated", "local_only")]
    )
    console.print(table)
    if final.get("registered"):
        console.print(f"registered [bold]models:/{final['registered']}@champion[/] (version {final['version']})")
    console.print(f"wall time {seconds:.0f} s")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


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
