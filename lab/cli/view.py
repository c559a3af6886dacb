"""What the lab's commands show while a federation runs and when it ends: the progress bar, the
events as they come, and the result tables. Only the CLI prints."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from lab.cli.options import fmt
from lab.runtime.run import RunResult

__all__ = ["ProgressView", "preflight_table", "summary_table"]

console = Console()
err = Console(stderr=True)


class ProgressView:
    """A progress bar over a run's rounds, with the run's events printed above it as they arrive."""

    def __init__(self, *, rounds: int, metric: str, training: bool) -> None:
        self.rounds, self.metric = rounds, metric
        self.bar = _progress()
        self.task: TaskID = self.bar.add_task("preparing nodes" if training else "asking the nodes", total=rounds)
        self.training = training

    def __enter__(self) -> ProgressView:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None and not self.training:
            self.bar.update(self.task, completed=self.rounds, description="every node answered or was left out")
        self.bar.__exit__(*exc)

    def __call__(self, event: dict[str, Any]) -> None:
        _show(self.bar, self.task, event, self.rounds, self.metric)


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _show(bar: Progress, task: TaskID, event: dict[str, Any], rounds: int, metric: str) -> None:
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


def preflight_table(nodes: dict[str, Any]) -> None:
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


def summary_table(result: RunResult, metrics: tuple[str, ...]) -> None:
    """The federated model against each organisation's local-only model, and where it was registered."""
    final = result.summary
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
    console.print(f"wall time {result.seconds:.0f} s")
