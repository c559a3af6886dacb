"""`lab demo`, `lab run`, `lab check`, `lab mock`, `lab stats` and `lab ui`: a federation run from the command line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from lab.cli.options import (
    AgreementOption,
    NoAgreementOption,
    NodeOption,
    SpecOption,
    TrackingUri,
    Workspace,
    named_paths,
    named_sources,
)
from lab.cli.view import ProgressView, preflight_table, summary_table
from lab.contract.settings import RunSettings
from lab.contract.strategies import STRATEGIES
from lab.core.environ import WORKSPACE
from lab.core.spec import TaskSpec, load_spec, parse_spec
from lab.errors import UsageError
from lab.runtime.environ import tracking_uri_for
from lab.runtime.federation import Federation
from lab.runtime.run import run_settings

__all__ = ["check", "demo", "mock", "run", "runs", "stats", "ui"]

console = Console()

DEFAULTS = RunSettings()
_AGREEMENT_EXAMPLE = "cleveland=cleveland-agreement.toml"

Rounds = Annotated[int, typer.Option(help="Federated rounds.")]
Strategy = Annotated[
    str,
    typer.Option(help="; ".join(f"{k.name}: {k.summary}" for k in STRATEGIES.values()) + "."),
]
Secure = Annotated[bool, typer.Option("--secure", help="TLS and node authentication on loopback.")]
CoordinatorOption = Annotated[
    str | None, typer.Option(help="HOST:PORT of a coordinator's Control API (on its host, or through an SSH tunnel).")
]
CaOption = Annotated[Path | None, typer.Option(help="The federation's CA certificate (with --coordinator).")]
ChosenOption = Annotated[str | None, typer.Option(help="NAME,NAME: only these admitted nodes (with --coordinator).")]
NodeRuntime = Annotated[
    str,
    typer.Option(
        help="warm: each node answers every message in one long-lived worker; subprocess: Flower starts a "
        "process per message."
    ),
]


def _federation(
    node: list[str] | None,
    agreement: list[str] | None,
    coordinator: str | None,
    ca: Path | None,
    chosen: str | None,
    *,
    no_agreement: bool = False,
    secure: bool = False,
    node_runtime: str = "warm",
) -> Federation:
    """The federation the options name: local nodes (--node, --agreement or --no-agreement) or a coordinator's."""
    if coordinator is None:
        if chosen:
            raise UsageError("--nodes chooses among a coordinator's admitted nodes; with local nodes, give --node")
        agreements = named_paths(agreement, "--agreement", _AGREEMENT_EXAMPLE)
        return Federation.local(
            named_sources(node or []), agreements, no_agreement=no_agreement, secure=secure, node_runtime=node_runtime
        )
    if node or agreement or no_agreement:
        raise UsageError(
            "--node, --agreement and --no-agreement start local nodes; a coordinator's nodes run at their organisations"
        )
    return Federation.remote(coordinator, ca, chosen or "")


@contextmanager
def _progress(
    spec: TaskSpec, federation: Federation, workspace: Path, *, what: str, rounds: int = 0
) -> Iterator[ProgressView]:
    """A progress view of a run: the ``rounds`` of a training run, or the nodes' answers to a query."""
    console.print(f"[bold]{escape(spec.name)}[/]: {escape(federation.describe())}, {what}; workspace {workspace}")
    logs = workspace.resolve() / "logs" if federation.coordinator is None else None
    local = frozenset(federation.nodes)
    training = rounds > 0
    with ProgressView(rounds=rounds or 1, metric=spec.metrics[0], training=training, logs=logs, local=local) as view:
        yield view


def _train(spec: TaskSpec, settings: RunSettings, federation: Federation, *, workspace: Path) -> None:
    """Train with a progress view, then show the result."""
    what = f"{settings.num_rounds} rounds of {settings.strategy}"
    with _progress(spec, federation, workspace, what=what, rounds=settings.num_rounds) as view:
        result = federation.train(settings, workspace=workspace, on_event=view)
    summary_table(result.summary, spec.metrics, result.seconds)


def demo(
    rounds: Rounds = DEFAULTS.num_rounds,
    strategy: Strategy = DEFAULTS.strategy,
    secure: Secure = False,
    node_runtime: NodeRuntime = "warm",
    workspace: Workspace = Path(WORKSPACE.default),
) -> None:
    """Run the demo federation: four hospitals, the real Flower runtime, MLflow tracking.

    Each hospital gets a data-use agreement approving this task and this app (its FAB hash).
    """
    from lab.runtime.demo import demo_federation

    federation = demo_federation(workspace)
    spec = load_spec(federation.spec)
    settings = run_settings(
        spec,
        tracking_uri=tracking_uri_for(workspace),
        nodes=len(federation.nodes),
        # The demo values each hospital's contribution (--secure is TLS and node authentication: the
        # coordinator still holds each update, which only secure aggregation would hide).
        values={"num_rounds": rounds, "strategy": strategy, "contributions": True},
    )
    local = Federation.local(federation.nodes, federation.agreements, secure=secure, node_runtime=node_runtime)
    _train(spec, settings, local, workspace=workspace)


def run(
    spec: Annotated[Path | None, typer.Option(help="The task spec (TOML).")] = None,
    node: NodeOption = None,
    agreement: AgreementOption = None,
    no_agreement: NoAgreementOption = False,
    coordinator: CoordinatorOption = None,
    ca: CaOption = None,
    nodes: ChosenOption = None,
    rounds: Rounds = DEFAULTS.num_rounds,
    strategy: Strategy = DEFAULTS.strategy,
    min_nodes: Annotated[int, typer.Option(help="Fail unless this many nodes take part.")] = DEFAULTS.min_nodes,
    secure: Secure = False,
    secure_aggregation: Annotated[
        bool, typer.Option("--secure-aggregation", help="SecAgg+: the coordinator sees only the sum of the updates.")
    ] = DEFAULTS.secure_aggregation,
    environment_policy: Annotated[
        str, typer.Option(help="strict: leave out nodes whose environment differs from the lock; warn: flag them.")
    ] = DEFAULTS.environment_policy,
    setting: Annotated[
        list[str] | None,
        typer.Option("--set", help=f"KEY=VALUE run setting; keys: {', '.join(RunSettings.user_keys())}."),
    ] = None,
    node_runtime: NodeRuntime = "warm",
    resume: Annotated[
        str | None,
        typer.Option(
            help="MLflow RUN_ID of a run whose coordinator died: continue it from its last checkpoint, with its own "
            "spec and settings (`lab runs` lists what can be resumed)."
        ),
    ] = None,
    workspace: Workspace = Path(WORKSPACE.default),
    tracking_uri: TrackingUri = "",
) -> None:
    """Train on the task in --spec: on local nodes, one per --node, or on a coordinator's nodes."""
    federation = _federation(
        node, agreement, coordinator, ca, nodes, no_agreement=no_agreement, secure=secure, node_runtime=node_runtime
    )
    if resume:
        if spec is not None or setting:
            raise UsageError(
                f"--resume {resume} goes on with the run's own spec and settings; leave out --spec and --set"
            )
        settings = federation.resumed(resume, workspace, tracking_uri)
        resumed = parse_spec(settings.task_spec, source=f"the task spec of run {resume}")
        _train(resumed, settings, federation, workspace=workspace)
        return
    if spec is None:
        raise UsageError("give the task, --spec TASK.toml (or --resume RUN_ID to continue a run)")
    task = load_spec(spec)
    values: dict[str, Any] = {
        "num_rounds": rounds,
        "strategy": strategy,
        "min_nodes": min_nodes,
        "environment_policy": environment_policy,
        "secure_aggregation": secure_aggregation,
        **_settings(setting or []),
    }
    settings = federation.settings(task, workspace, tracking_uri, values, source="--set")
    _train(task, settings, federation, workspace=workspace)


def check(
    spec: SpecOption,
    node: NodeOption = None,
    agreement: AgreementOption = None,
    no_agreement: NoAgreementOption = False,
    coordinator: CoordinatorOption = None,
    ca: CaOption = None,
    nodes: ChosenOption = None,
    workspace: Workspace = Path(WORKSPACE.default),
    tracking_uri: TrackingUri = "",
) -> None:
    """Pre-flight: ask every node, through the federation, to check its table against the spec."""
    federation = _federation(node, agreement, coordinator, ca, nodes, no_agreement=no_agreement)
    task = load_spec(spec)
    with _progress(task, federation, workspace, what="pre-flight check") as view:
        answer = federation.check(task, workspace=workspace, tracking_uri=tracking_uri, on_event=view)
    preflight_table(answer)


def mock(
    spec: SpecOption,
    rows: Annotated[int, typer.Option(help="Rows to draw per node (before the spec drops rows with missing values).")],
    out: Annotated[Path, typer.Option(help="Folder for the mocks, NODE.synthetic.csv or .parquet (created).")],
    node: NodeOption = None,
    agreement: AgreementOption = None,
    no_agreement: NoAgreementOption = False,
    coordinator: CoordinatorOption = None,
    ca: CaOption = None,
    nodes: ChosenOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the draws: the same catalogs and seed give the same mocks.")] = 0,
    workspace: Workspace = Path(WORKSPACE.default),
    tracking_uri: TrackingUri = "",
) -> None:
    """Mock tables to write code against: per node, the spec's columns drawn from the catalog the node
    releases (level counts, histograms, missing counts; each column on its own), no real row in them."""
    federation = _federation(node, agreement, coordinator, ca, nodes, no_agreement=no_agreement)
    task = load_spec(spec)
    federation.mock_folder(task, rows, out)  # before any process starts
    with _progress(task, federation, workspace, what="pre-flight check") as view:
        written = federation.mock(
            task, rows, out, seed=seed, workspace=workspace, tracking_uri=tracking_uri, on_event=view
        )
    for name, path in written.items():
        console.print(f"wrote {escape(str(path))}: node {escape(name)}, {rows} synthetic rows", highlight=False)


def stats(
    columns: Annotated[list[str], typer.Argument(help="Columns to summarise, e.g. age chol.")],
    spec: SpecOption,
    node: NodeOption = None,
    agreement: AgreementOption = None,
    no_agreement: NoAgreementOption = False,
    coordinator: CoordinatorOption = None,
    ca: CaOption = None,
    nodes: ChosenOption = None,
    by: Annotated[str | None, typer.Option(help="Group every figure by this column.")] = None,
    crosstab: Annotated[str | None, typer.Option(help="A,B: counts of two categorical columns.")] = None,
    correlation: Annotated[bool, typer.Option("--correlation", help="Correlation matrix of the columns.")] = False,
    bins: Annotated[
        list[str] | None,
        typer.Option(
            help="COLUMN=LOW:HIGH:WIDTH histogram bins (default: from pooled mean and sd); for a numeric --by or "
            "--crosstab column the spec lists no levels of, its groups."
        ),
    ] = None,
    min_count: Annotated[int, typer.Option(help="Smallest count a node releases (5 at least).")] = 5,
    workspace: Workspace = Path(WORKSPACE.default),
    tracking_uri: TrackingUri = "",
) -> None:
    """Federated analytics: counts, means, sds, quantiles, histograms, crosstabs and correlations
    pooled over every node's table, small counts suppressed at each node."""
    from lab.cli.stats import parse_bins, stats_tables

    federation = _federation(node, agreement, coordinator, ca, nodes, no_agreement=no_agreement)
    pair = None
    if crosstab:
        a, sep, b = crosstab.partition(",")
        if not sep or not a or not b:
            raise UsageError(f"--crosstab {crosstab!r} should be two columns, e.g. --crosstab cp,sex")
        pair = (a.strip(), b.strip())
    task = load_spec(spec)
    edges = parse_bins(bins or [])
    request = federation.stats_request(
        task, columns, by=by, crosstab=pair, correlation=correlation, bins=edges, min_count=min_count
    )  # a wrong column fails here, before any process starts
    with _progress(task, federation, workspace, what="federated analytics") as view:
        result = federation.stats(task, request, workspace=workspace, tracking_uri=tracking_uri, on_event=view)
    answer = result.stats
    for table in stats_tables(answer):
        console.print(table)
    for name, notes in sorted(answer.notes.items()):
        console.print(f"  [yellow]{escape(name)} suppressed[/]: " + escape("; ".join(notes)))
    if answer.node_figures:
        shown = ", ".join(answer.node_figures)
        console.print(f"per-node figures allowed by agreement: {shown} (MLflow artifact analytics/nodes.json)")
    console.print(f"recorded in MLflow run {result.mlflow_run_id or '?'}; wall time {result.seconds:.0f} s")


def runs(
    clean: Annotated[
        bool, typer.Option("--clean", help="Mark KILLED, with the reason, the runs a dead coordinator left RUNNING.")
    ] = False,
    limit: Annotated[int, typer.Option(help="How many of the newest runs to list.")] = 30,
    workspace: Workspace = Path(WORKSPACE.default),
    tracking_uri: TrackingUri = "",
) -> None:
    """The runs in the tracking store: their state, rounds checkpointed, and which can be resumed."""
    from rich.table import Table as RichTable

    from lab.registry.runs import close_orphans, list_runs

    uri = tracking_uri_for(workspace, tracking_uri)
    if clean:
        closed = close_orphans(uri)
        for run_id, reason in closed.items():
            console.print(f"marked run {run_id} KILLED: {escape(reason)}")
        if not closed:
            console.print("no run was left RUNNING by a coordinator that is gone")
    table = RichTable(title=f"Runs in {uri}")
    for column in ("run id", "name", "state", "started", "rounds", "resumable", "note"):
        table.add_column(column)
    for row in list_runs(uri, limit=limit):
        rounds = f"{row.rounds_done or 0}/{row.rounds}" if row.rounds is not None else ""
        resumable = f"lab run --resume {row.run_id}" if row.resumable else ""
        table.add_row(row.run_id, row.name, row.status, row.started, rounds, resumable, escape(row.note))
    console.print(table)


def ui(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
    workspace: Workspace = Path(WORKSPACE.default),
    tracking_uri: TrackingUri = "",
) -> None:
    """Open the MLflow UI on the lab's tracking store."""
    import subprocess

    from lab.runtime.environ import private_environ
    from lab.runtime.processes import LOOPBACK, executable

    uri = tracking_uri_for(workspace, tracking_uri)
    console.print(f"MLflow UI on http://{LOOPBACK}:{port} for {uri} (Ctrl-C to stop)")
    proc = subprocess.Popen(
        [executable("mlflow"), "ui", "--backend-store-uri", uri, "--host", LOOPBACK, "--port", str(port)],
        env=private_environ(),
    )
    try:
        proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=15)


def _settings(items: list[str]) -> dict[str, str]:
    """--set KEY=VALUE, as text by field name: each value is read as its setting's type (lab.contract.settings)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set {item!r} should be KEY=VALUE, e.g. --set learning-rate=0.05")
        out[RunSettings.field_of(key.strip())] = value.strip()
    return out
