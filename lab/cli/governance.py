"""`lab agreement`, `lab app` and `lab node`: an organisation's controls over what runs on its data."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from lab.cli.options import PasswordFile, TrackingCa, TrackingUri, TrackingUser, Workspace, read_password
from lab.core.environ import WORKSPACE
from lab.core.sources import TableSource
from lab.errors import AgreementError, UsageError
from lab.node.agreement import load_agreement, template
from lab.node.audit import AuditHead, AuditLog
from lab.node.site import SECRET_FILE
from lab.runtime.app import app_hash
from lab.runtime.environ import tracking_uri_for

__all__ = ["agreement_app", "app_app", "node_app"]

console = Console()
err = Console(stderr=True)

agreement_app = typer.Typer(help="Data-use agreements: what a node allows.", no_args_is_help=True)
app_app = typer.Typer(help="The Flower app a coordinator sends, as organisations approve it.", no_args_is_help=True)
node_app = typer.Typer(help="A node: its keys, its start, and its records.", no_args_is_help=True)


@app_app.command("hash")
def app_hash_command(
    app_dir: Annotated[Path | None, typer.Argument(help="The app's folder (default: this project).")] = None,
) -> None:
    """Print the FAB hash of the app a coordinator will send; put it in allow.apps to approve it."""
    print(app_hash(app_dir))


@app_app.command("review")
def app_review(
    app: Annotated[
        Path | None, typer.Argument(help="The app: its .fab file or its folder (default: this project).")
    ] = None,
    agreement: Annotated[
        Path | None,
        typer.Option(help="Your agreement: whether it approves the app, and the last app it approved to compare with."),
    ] = None,
    code: Annotated[bool, typer.Option("--code", help="Print every text file in full.")] = False,
) -> None:
    """Show what an app would run on your data: its files, sizes and sha256, and its code, new or
    changed since the last app your agreement approved with `lab agreement allow --app`."""
    from lab.node.approval import review, visible
    from lab.runtime.app import read_app

    fab, source = read_app(app)
    seen = review(fab, source=source, agreement=agreement)
    files = seen.app.files
    console.print(
        f"app {seen.app.hash} ({escape(source)}): {len(files)} files, {sum(f.size for f in files.values())} bytes"
    )
    if agreement is not None:
        if seen.approved:
            console.print(f"approved by {escape(str(agreement))} (allow.apps)")
        else:
            command = escape(f"lab agreement allow {agreement} --app {source}")
            console.print(
                f"[red]not approved[/] by {escape(str(agreement))}: once you have read it, `{command}` approves it"
            )
        if seen.against is None:
            console.print(f"no approved app is kept beside {escape(str(agreement))} to compare with (an app approved "
                          "with `lab agreement allow --app` is): every file shows as new")  # fmt: skip
        else:
            console.print(f"compared with the last approved app, {seen.against.hash}")
    table = RichTable()
    for column in ("file", "bytes", "sha256", *(("since approved",) if agreement is not None else ())):
        table.add_column(column, overflow="fold")  # a path or hash shown whole, over lines if it must
    for name, file in files.items():
        status = (seen.status(name),) if agreement is not None else ()
        table.add_row(escape(visible(name)), str(file.size), file.sha256, *status)
    console.print(table)
    for name in seen.removed:
        console.print(f"removed since approved: {escape(visible(name))}")
    shown = [n for n in files if code or (seen.against is not None and seen.status(n) != "same")]
    for name in shown:
        file = files[name]
        console.rule(escape(f"{visible(name)} ({seen.status(name) if agreement is not None else 'in full'})"))
        text = seen.diff(name) if not code and seen.status(name) == "changed" else file.text
        printed = visible(text) if text is not None else "(not text: compare its sha256)"
        console.print(printed, markup=False, highlight=False)
    if not shown and not code:
        console.print("nothing changed since the approved app" if seen.against is not None else
                      "pass --code to read every file in full")  # fmt: skip


@agreement_app.command("allow")
def agreement_allow(
    path: Annotated[Path, typer.Argument(help="The agreement file (TOML), edited in place.")],
    app: Annotated[
        Path | None,
        typer.Option(help="An app to approve (.fab or folder; `.` for this project), after `lab app review`."),
    ] = None,
    task: Annotated[Path | None, typer.Option(help="A task spec to cover (or to update, when it changed).")] = None,
    strategy: Annotated[list[str] | None, typer.Option(help="A strategy to allow; repeat for more.")] = None,
) -> None:
    """Add an app, a task or a strategy to an agreement, and say what was added (its comments and
    layout stay; it is checked before it is written)."""
    from lab.core.spec import load_spec
    from lab.node.approval import allow_app, allow_strategy, allow_task, check_strategy
    from lab.runtime.app import read_app

    if app is None and task is None and not strategy:
        raise UsageError("give what to allow: --app APP, --task SPEC or --strategy NAME")
    if not path.is_file():
        raise AgreementError(f"agreement {str(path)!r} does not exist; `lab agreement template` prints one to start")
    # Every input read and checked before the first edit: a mistake in one changes nothing.
    spec = load_spec(task) if task is not None else None
    for name in strategy or []:
        check_strategy(name)
    approved = read_app(app) if app is not None else None
    done: list[str] = []
    if spec is not None:
        done += allow_task(path, spec)
    for name in strategy or []:
        done += allow_strategy(path, name)
    if approved is not None:
        fab, source = approved
        done += allow_app(path, fab, source=source)
    for line in done:
        console.print(escape(line), highlight=False)


@agreement_app.command("template")
def agreement_template(
    spec: Annotated[Path, typer.Option(help="The task spec the agreement covers.")],
    organisation: Annotated[str, typer.Option(help="Your organisation's name.")],
) -> None:
    """Print a starting agreement covering this task and the app in this checkout (edit, then check)."""
    from lab.core.spec import load_spec

    task = load_spec(spec)
    sys.stdout.write(template(task, app_hash(), organisation))


@agreement_app.command("check")
def agreement_check(
    path: Annotated[Path, typer.Argument(help="The agreement file (TOML).")],
    spec: Annotated[Path | None, typer.Option(help="Also check that this task spec is covered.")] = None,
) -> None:
    """Validate an agreement and explain each field."""
    from lab.core.spec import load_spec

    agreement = load_agreement(path)
    table = RichTable(title=f"{path.name}: valid")
    for column in ("field", "value", "meaning"):
        table.add_column(column)
    for name, value, meaning in agreement.explain():
        table.add_row(name, value, meaning)
    console.print(table)
    days = (agreement.expires - dt.date.today()).days
    if days < 0:
        err.print(f"[red]expired {-days} days ago[/]: the node refuses every message until it is renewed")
        raise typer.Exit(1)
    console.print(f"in force for {days} more days")
    if spec is not None:
        task = load_spec(spec)
        if agreement.tasks.get(task.name) != task.sha256:
            raise AgreementError(
                f"task {task.name!r} (sha256 {task.sha256}) is not covered by {str(path)!r}; add it to "
                f"[[tasks]] with that sha256"
            )
        console.print(f"covers task {task.name!r} (sha256 {task.sha256})")


@node_app.command("audit")
def node_audit(
    log: Annotated[Path, typer.Argument(help="The node's audit log (JSON lines).")],
    verify: Annotated[bool, typer.Option("--verify", help="Check the hash chain; exit 1 where it breaks.")] = False,
    against: Annotated[
        str | None,
        typer.Option(help="With --verify: also check the log still reaches every head this MLflow run recorded."),
    ] = None,
    node: Annotated[str | None, typer.Option(help="The node's name in that run (default: the log's folder).")] = None,
    secret: Annotated[
        Path | None, typer.Option(help="The node's secret, the key of its chain (default: node.secret beside the log).")
    ] = None,
    workspace: Workspace = Path(WORKSPACE.default),
    tracking_uri: TrackingUri = "",
    user: TrackingUser = "",
    password_file: PasswordFile = None,
    ca: TrackingCa = None,
) -> None:
    """Print a node's audit log, or verify that no entry was edited, removed or reordered, and
    (--against RUN_ID) that none was cut off its end or rolled back since that run."""
    if not log.is_file():
        raise UsageError(f"audit log {str(log)!r} does not exist; a node writes it at nodes/NAME/audit.jsonl")
    audit = AuditLog(log, _secret(secret or log.parent / SECRET_FILE) if verify else b"")
    if against and not verify:
        raise UsageError("--against checks the log against a run: give --verify with it")
    if verify:
        problems = audit.verify()
        checked = ""
        if against:
            from lab.registry.tracking import account, recorded_audit_heads

            name = node or log.resolve().parent.name
            with account(user, read_password(password_file), ca):
                recorded = recorded_audit_heads(tracking_uri_for(workspace, tracking_uri), against, name)
            if not recorded:
                raise UsageError(
                    f"run {against!r} recorded no audit head of node {name!r}; give the node's name in that run "
                    "with --node"
                )
            problems += audit.against([AuditHead(count, head) for count, head in recorded])
            checked = f", and it reaches all {len(recorded)} heads run {against} recorded"
        if problems:
            for problem in problems:
                err.print(f"[red]line {problem.line}[/]: {escape(problem.reason)}", highlight=False)
            raise typer.Exit(1)
        console.print(f"{len(audit.entries())} entries, chain intact{checked}")
        return
    table = RichTable(title=str(log))
    for column in ("time", "run", "message", "decision", "clause", "left the node"):
        table.add_column(column)
    for entry in audit.entries():
        left = "; ".join(
            f"{r['record']}: " + (f"{r['bytes']} bytes" if "bytes" in r else ", ".join(r["names"]))
            for r in entry.get("left_node", [])
        )
        table.add_row(
            str(entry.get("time")),
            str(entry.get("run_id")),
            str(entry.get("message_type")),
            str(entry.get("decision")),
            str(entry.get("clause") or ""),
            left or "nothing",
        )
    console.print(table)


@node_app.command("privacy")
def node_privacy(
    ledger: Annotated[Path, typer.Argument(help="The node's privacy ledger (nodes/NAME/privacy.jsonl).")],
    agreement: Annotated[Path | None, typer.Option(help="The node's agreement, for its epsilon budget.")] = None,
) -> None:
    """Print a node's privacy ledger: the epsilon every run spent on its rows, and what remains."""
    from lab.node.ledger import Ledger

    if not ledger.is_file():
        raise UsageError(f"privacy ledger {str(ledger)!r} does not exist; a node writes it at nodes/NAME/privacy.jsonl")
    runs = Ledger(ledger).runs()
    table = RichTable(title=f"Differential privacy spent on this node's rows ({ledger})")
    columns = ("booking", "run", "task", "rounds", "noise", "sample\nrate", "steps\n/round", "delta",
               "epsilon\ntraining rows", "epsilon\ntest rows")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("booking", "run", "task") else "right")
    for key, run in runs.items():
        trained = "noise_multiplier" in run
        table.add_row(
            key[:8],
            str(run.get("run_id", "")),
            str(run.get("task", "")),
            str(run["rounds"]),
            f"{run['noise_multiplier']:.4g}" if trained else "",
            f"{run['sample_rate']:.4g}" if trained else "",
            str(run["steps"]) if trained else "",
            f"{run['delta']:g}" if trained else "",
            f"{run['epsilon']:.3f}",
            f"{run['scores_epsilon']:.3f}",
        )
    console.print(table)
    spent = sum(r["epsilon"] for r in runs.values())
    scores = sum(r["scores_epsilon"] for r in runs.values())
    line = (
        f"epsilon spent: {spent:.3f} on the training rows and {scores:.3f} on the test rows over {len(runs)} "
        "booking(s) (runs add up: basic composition)"
    )
    if agreement is not None:
        budget = load_agreement(agreement).epsilon_budget
        line += (
            "; no budget in the agreement"
            if budget is None
            else f"; budget {budget:g} each, {budget - spent:.3f} and {budget - scores:.3f} left"
        )
    console.print(line)


@node_app.command("catalog")
def node_catalog(
    data: Annotated[str, typer.Option(help="The node's table: a CSV or Parquet file, or a database URL.")],
    spec: Annotated[Path, typer.Option(help="The task spec (TOML).")],
    node: Annotated[str | None, typer.Option(help="Read the table in this node's format from the spec.")] = None,
    agreement: Annotated[Path | None, typer.Option(help="Hide counts under this agreement's min-rows.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the catalog as JSON.")] = False,
) -> None:
    """What the node holds, without rows: columns, types, missing counts, ranges, category counts, histograms."""
    from lab.core.catalog import build_catalog
    from lab.core.spec import load_spec

    min_rows = load_agreement(agreement).min_rows if agreement else 10
    described = build_catalog(data, load_spec(spec), node=node, min_rows=min_rows)
    if as_json:
        print(json.dumps(described))
        return
    title = f"{escape(TableSource.of(data).label)}: {described['rows']} rows (counts under {min_rows} hidden)"
    table = RichTable(title=title)
    for column in ("column", "role", "type", "missing", "not in the spec", "levels or histogram"):
        table.add_column(column)
    for c in described["columns"]:
        levels = ", ".join(f"{k}: {v}" for k, v in c.get("levels", {}).items())
        if "histogram" in c:
            edges = c["histogram"]["edges"]
            levels = f"{edges[0]:g} to {edges[-1]:g} in {len(edges) - 1} bins: " + " ".join(
                str(n) for n in c["histogram"]["counts"]
            )
        odd = c.get("unknown", c.get("not_numbers", ""))
        table.add_row(c["column"], c["role"], c["type"], str(c["missing"]), str(odd), levels)
    console.print(table)


def _secret(path: Path) -> bytes:
    """The node's secret (the key of its audit chain), read from ``path``."""
    if not path.is_file():
        raise UsageError(
            f"the node's secret {str(path)!r} does not exist: the chain is keyed with it; give it with --secret "
            "(it stays in the node's home, readable by its owner only)"
        )
    return bytes.fromhex(path.read_text(encoding="utf-8").strip())


def _left(record: dict[str, Any]) -> str:
    if record.get("kind") == "arrays":
        return f"{record['record']}: {record['bytes']} bytes of parameters"
    if record.get("kind") == "metrics":
        return f"{record['record']}: " + ", ".join(record["names"])
    return f"{record['record']}: identity and fingerprints"
