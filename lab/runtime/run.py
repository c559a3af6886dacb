"""Run one task on a local federation with a progress view: the engine behind `lab demo`, `lab run`,
`lab check` and `lab stats`, and behind the notebook functions."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lab.cli.inhouse import fmt, lock_path
from lab.errors import LabError
from lab.runtime.environ import project_root

__all__ = ["federate"]

console = Console()

_WHAT = {"check": "pre-flight check", "stats": "federated analytics"}


def federate(
    spec_path: Path,
    nodes: dict[str, str],
    *,
    workspace: Path,
    settings: dict[str, Any],
    tracking_uri: str,
    agreements: dict[str, Path] | None = None,
    secure: bool = False,
) -> dict[str, Any]:
    """Start the federation, run the task with a progress view, stop everything; the run's summary.

    Raises LabError (or RunFailedError) with the reason when the run fails; every process is
    stopped and the MLflow run closed in any case.
    """
    from lab.core.sources import source_exists
    from lab.core.spec import load_spec
    from lab.runtime.local import LocalFederation, NodeSpec
    from lab.runtime.submit import build_run_config, submit_run

    spec = load_spec(spec_path)
    mode = str(settings.get("mode", "train"))
    for name, source in nodes.items():
        if not source_exists(source) and mode != "check":  # a pre-flight lets the node report it
            raise LabError(f"node {name!r}: {source!r} does not exist; give the path of its table")
    run_config = build_run_config(
        spec, settings, tracking_uri=tracking_uri, expected_nodes=len(nodes), lock=lock_path(), root=project_root()
    )
    rounds = int(settings.get("num-rounds", 5)) if mode == "train" else 1
    what = _WHAT.get(mode, f"{rounds} rounds of {settings.get('strategy', 'fedavg')}")
    console.print(f"[bold]{spec.name}[/]: {len(nodes)} nodes, {what}; workspace {workspace}")
    mlflow_runs: list[str] = []
    started = time.monotonic()

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
            task = bar.add_task("preparing nodes" if mode == "train" else "asking the nodes", total=rounds)
            outcome = submit_run(federation, app_dir=project_root(), run_config=run_config, on_event=on_event)
            if mode != "train":
                bar.update(task, completed=rounds, description="every node answered or was left out")
    except BaseException as exc:
        # The coordinator was stopped before it could close its MLflow run: close it here.
        from lab.registry.tracking import close_unfinished

        # The progress follower may not have read the coordinator's last events yet.
        mlflow_runs += [r for r in _started_runs(workspace, started) if r not in mlflow_runs]
        for run_id in mlflow_runs:
            close_unfinished(tracking_uri, run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    final: dict[str, Any] = outcome.final
    final["seconds"] = time.monotonic() - started  # wall time, processes' start and stop included
    if mlflow_runs:
        final["mlflow_run_id"] = mlflow_runs[0]
    return final


def _started_runs(workspace: Path, since: float) -> list[str]:
    """MLflow runs the coordinators of this workspace opened since ``since`` (monotonic clock)."""
    wall_since = time.time() - (time.monotonic() - since)
    found: list[str] = []
    for events in sorted(workspace.glob("runs/*/events.jsonl")):
        if events.stat().st_mtime < wall_since:
            continue
        for line in events.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                if event.get("event") == "started" and event.get("mlflow_run_id"):
                    found.append(str(event["mlflow_run_id"]))
    return found


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
        bar.console.print(f"  [red]refused[/] {escape(event['reason'])}")
    elif kind == "warning":
        bar.console.print(f"  [yellow]warning[/] {escape(event['reason'])}")
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
        bar.console.print(f"  [red]{escape(node)}[/]: {escape(reason)}")
