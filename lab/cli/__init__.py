"""`lab`: the front door for analysts, organisations and coordinators."""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from lab.cli.governance import agreement_app, app_app, coordinator_app, node_app
from lab.cli.inhouse import (
    TrackingUri,
    Workspace,
    env_app,
    evaluate,
    fmt,
    predict,
    spec_app,
    tracking_uri_for,
)
from lab.core.sources import node_source
from lab.core.spec import load_spec
from lab.errors import LabError
from lab.runtime.environ import PRIVATE_ENV, WORKSPACE, project_root
from lab.runtime.run import federate

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

_NODE_EXAMPLE = "cleveland=data/cleveland.csv"
NodeOption = Annotated[
    list[str],
    typer.Option(
        help="NAME=TABLE: one node's table, a CSV or Parquet file or a database URL such as "
        "sqlite:///records.db?table=patients (see the README); repeat per node."
    ),
]

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
    from lab.cli.governance import app_hash, demo_agreement

    data = project_root() / "data" / "heart-disease"
    spec = load_spec(data / "task.toml")
    fab_hash = app_hash()
    agreements = {}
    for name in DEMO_NODES:
        path = workspace / "nodes" / name / "agreement.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(demo_agreement(spec.name, spec.sha256, fab_hash, spec.organisation(name)), encoding="utf-8")
        agreements[name] = path
    nodes = {name: str(data / file) for name, file in DEMO_NODES.items()}
    final = federate(
        data / "task.toml",
        nodes,
        workspace=workspace,
        settings={"num-rounds": rounds, "strategy": strategy},
        tracking_uri=tracking_uri_for(workspace),
        agreements=agreements,
        secure=secure,
    )
    _summary_table(final, spec.metrics)


@app.command()
def run(
    spec: Annotated[Path, typer.Option(help="The task spec (TOML).")],
    node: NodeOption,
    agreement: Annotated[
        list[str] | None, typer.Option(help="NAME=PATH of a node's data-use agreement, which it then enforces.")
    ] = None,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 5,
    strategy: Annotated[str, typer.Option(help="fedavg, fedprox, fedadam or fedyogi.")] = "fedavg",
    min_nodes: Annotated[int, typer.Option(help="Fail unless this many nodes take part.")] = 2,
    secure: Annotated[bool, typer.Option("--secure", help="TLS and node authentication on loopback.")] = False,
    secure_aggregation: Annotated[
        bool, typer.Option("--secure-aggregation", help="SecAgg+: the coordinator sees only the sum of the updates.")
    ] = False,
    environment_policy: Annotated[
        str, typer.Option(help="strict: leave out nodes whose environment differs from the lock; warn: flag them.")
    ] = "strict",
    setting: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE run setting (TOML value).")] = None,
    workspace: Workspace = Path(WORKSPACE.default),
    tracking_uri: TrackingUri = "",
) -> None:
    """Run a federation of local nodes, one per --node, on the task in --spec."""
    nodes = _named_sources(node)
    agreements = _named_paths(agreement or [], "--agreement", "cleveland=cleveland-agreement.toml")
    if set(agreements) - set(nodes):
        raise LabError(f"--agreement names {sorted(set(agreements) - set(nodes))!r}, which no --node names")
    settings: dict[str, Any] = {
        "num-rounds": rounds,
        "strategy": strategy,
        "min-nodes": min_nodes,
        "environment-policy": environment_policy,
        "secure-aggregation": secure_aggregation,
    }
    settings.update(_parse_settings(setting or []))
    final = federate(
        spec,
        nodes,
        workspace=workspace,
        settings=settings,
        tracking_uri=tracking_uri_for(workspace, tracking_uri),
        agreements=agreements,
        secure=secure,
    )
    _summary_table(final, load_spec(spec).metrics)


@app.command()
def check(
    spec: Annotated[Path, typer.Option(help="The task spec (TOML).")],
    node: NodeOption,
    agreement: Annotated[list[str] | None, typer.Option(help="NAME=PATH of a node's data-use agreement.")] = None,
    workspace: Workspace = Path(WORKSPACE.default),
    tracking_uri: TrackingUri = "",
) -> None:
    """Pre-flight: ask every node, through the federation, to check its table against the spec."""
    nodes = _named_sources(node)
    agreements = _named_paths(agreement or [], "--agreement", "cleveland=cleveland-agreement.toml")
    final = federate(
        spec,
        nodes,
        workspace=workspace,
        settings={"mode": "check", "min-nodes": 1},
        tracking_uri=tracking_uri_for(workspace, tracking_uri),
        agreements=agreements,
    )
    _preflight_table(final["preflight"])


@app.command()
def stats(
    columns: Annotated[list[str], typer.Argument(help="Columns to summarise, e.g. age chol.")],
    spec: Annotated[Path, typer.Option(help="The task spec (TOML).")],
    node: NodeOption,
    by: Annotated[str | None, typer.Option(help="Group every figure by this column.")] = None,
    crosstab: Annotated[str | None, typer.Option(help="A,B: counts of two categorical columns.")] = None,
    correlation: Annotated[bool, typer.Option("--correlation", help="Correlation matrix of the columns.")] = False,
    bins: Annotated[
        list[str] | None, typer.Option(help="COLUMN=LOW:HIGH:WIDTH histogram bins (default: from pooled mean and sd).")
    ] = None,
    levels: Annotated[
        list[str] | None, typer.Option(help="COLUMN=A,B: groups of a numeric --by or --crosstab column, e.g. sex=0,1.")
    ] = None,
    min_count: Annotated[int, typer.Option(help="Smallest count a node releases (5 at least).")] = 5,
    agreement: Annotated[list[str] | None, typer.Option(help="NAME=PATH of a node's data-use agreement.")] = None,
    workspace: Workspace = Path(WORKSPACE.default),
    tracking_uri: TrackingUri = "",
) -> None:
    """Federated analytics: counts, means, sds, quantiles, histograms, crosstabs and correlations
    pooled over every node's table, small counts suppressed at each node."""
    from lab.cli.stats import federated_stats, parse_bins, parse_levels, stats_tables

    pair = None
    if crosstab:
        a, sep, b = crosstab.partition(",")
        if not sep or not a or not b:
            raise LabError(f"--crosstab {crosstab!r} should be two columns, e.g. --crosstab cp,sex")
        pair = (a.strip(), b.strip())
    result = federated_stats(
        spec,
        _named_sources(node),
        columns,
        by=by,
        crosstab=pair,
        correlation=correlation,
        bins=parse_bins(bins or []),
        levels=parse_levels(levels or []),
        min_count=min_count,
        agreements=dict(_named_paths(agreement or [], "--agreement", "cleveland=cleveland-agreement.toml")),
        workspace=workspace,
        tracking_uri=tracking_uri,
    )
    for table in stats_tables(result):
        console.print(table)
    for name, notes in sorted(result["notes"].items()):
        console.print(f"  [yellow]{escape(name)} suppressed[/]: " + escape("; ".join(notes)))
    if result.get("node_figures"):
        shown = ", ".join(result["node_figures"])
        console.print(f"per-node figures allowed by agreement: {shown} (MLflow artifact analytics/nodes.json)")
    console.print(f"recorded in MLflow run {result.get('mlflow_run_id', '?')}; wall time {result['seconds']:.0f} s")


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

    from lab.runtime.environ import private_environ
    from lab.runtime.local import executable

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


def _named_sources(items: list[str]) -> dict[str, str]:
    """--node NAME=SOURCE: a table's path (made absolute), or a database URL as given."""
    return {name: node_source(value) for name, value in _named(items, "--node", _NODE_EXAMPLE).items()}


def _named_paths(items: list[str], option: str, example: str) -> dict[str, Path]:
    return {name: Path(value) for name, value in _named(items, option, example).items()}


def _named(items: list[str], option: str, example: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise LabError(f"{option} {item!r} should be NAME=PATH, e.g. {option} {example}")
        out[name] = value
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


def _preflight_table(nodes: dict[str, Any]) -> None:
    """One table: which node fails which column, and why."""
    table = RichTable(title="Pre-flight: every node's table against the task spec")
    for column in ("node", "rows", "column", "problem"):
        table.add_column(column)
    failing = 0
    for name, result in sorted(nodes.items()):
        if "refused" in result:
            table.add_row(name, "", "", f"[red]refused[/]: {escape(result['refused'])}")
            failing += 1
            continue
        rows = str(result["catalog"].get("rows", "?"))
        if not result["problems"]:
            table.add_row(name, rows, "", "[green]fits the spec[/]")
        for problem in result["problems"]:
            table.add_row(name, rows, escape(problem["column"]), escape(problem["problem"]))
        failing += bool(result["problems"])
    console.print(table)
    if failing:
        err.print(f"{failing} of {len(nodes)} nodes do not fit the spec")
        raise typer.Exit(1)


def _summary_table(final: dict[str, Any], metrics: tuple[str, ...]) -> None:
    shown: list[str] = [m for m in ("accuracy", "auc", "rmse", "r2") if m in metrics] or list(metrics[:2])
    table = RichTable(title="Federated model vs. each organisation's local-only model (own test split)")
    table.add_column("node")
    table.add_column("test rows", justify="right")
    for metric in shown:
        table.add_column(f"{metric}\nfederated", justify="right")
        table.add_column(f"{metric}\nlocal-only", justify="right")
    private = any(row.get("epsilon") is not None for row in final["nodes"])
    if private:
        table.add_column("epsilon\nspent", justify="right")
    for row in final["nodes"]:
        cells = [row["node"], str(row["test_rows"])]
        for metric in shown:
            cells += [fmt(row["federated"].get(metric)), fmt(row["local_only"].get(metric))]
        if private:
            cells.append(fmt(row.get("epsilon"), 2))
        table.add_row(*cells)
    mean = final["mean"]
    means = [fmt(mean.get(f"{k}.{m}")) for m in shown for k in ("federated", "local_only")]
    table.add_row("[bold]mean[/]", "", *means, *([""] if private else []))
    console.print(table)
    if final.get("registered"):
        console.print(f"registered [bold]models:/{final['registered']}@champion[/] (version {final['version']})")
    console.print(f"wall time {final['seconds']:.0f} s")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the lab the way Ctrl-C does: processes first


def main() -> NoReturn:
    """Entry point: a user's mistake is one clear line on stderr, never a traceback."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app(standalone_mode=True)
    except LabError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted; every process the lab started has been stopped")
        sys.exit(130)
    except Exception as exc:  # a bug in the lab: one line here, the traceback in the workspace's logs
        where = _keep_traceback()
        line = f"internal error (a bug in the lab): {type(exc).__name__}: {exc}; the traceback is in {where}"
        err.print(f"[red]error:[/] {escape(line)}", highlight=False)
        sys.exit(1)
    sys.exit(0)


def _keep_traceback() -> str:
    """Write the exception being handled to the workspace's logs; the file's path."""
    folder = Path(WORKSPACE.get()) / "logs"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"lab-error-{time.strftime('%Y%m%d-%H%M%S')}.txt"
        path.write_text(traceback.format_exc(), encoding="utf-8")
    except OSError:
        traceback.print_exc()
        return "the output above"
    return repr(str(path.resolve()))
