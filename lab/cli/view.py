"""What the lab's commands show while a federation runs and when it ends: the progress bar, the
events as they come, and the result tables. Only the CLI prints."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from lab.cli.options import fmt
from lab.contract.events import Evaluated, Event, Joined, Refused, Trained, Warned, describe
from lab.contract.results import SIDES, Contributions, PreflightAnswer, RunSummary

__all__ = ["ProgressView", "contributions_table", "preflight_table", "summary_table"]

#: Output that goes to a file or a pipe (a log, a CI job) is not cut to 80 columns: the result
#: tables stay whole. A terminal keeps its own width, and COLUMNS, where set, wins.
console = Console(width=None if Console().is_terminal or "COLUMNS" in os.environ else 132)
err = Console(stderr=True)


class ProgressView:
    """A progress bar over a run's rounds, with the run's events printed above it as they arrive."""

    def __init__(
        self, *, rounds: int, metric: str, training: bool, logs: Path | None = None, local: frozenset[str] = frozenset()
    ) -> None:
        self.rounds, self.metric = rounds, metric
        self.bar = _progress()
        self.task: TaskID = self.bar.add_task("preparing nodes" if training else "asking the nodes", total=rounds)
        self.training = training
        self.logs = logs  # a local federation's logs: where its nodes (``local``) say in full what they refused
        self.local = local
        self.told: set[str] = set()

    def __enter__(self) -> ProgressView:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None and not self.training:
            self.bar.update(self.task, completed=self.rounds, description="every node answered or was left out")
        self.bar.__exit__(*exc)

    def __call__(self, event: Event) -> None:
        _show(self.bar, self.task, event, self.rounds, self.metric)
        if not isinstance(event, Refused) or self.logs is None:
            return
        node = event.node
        if node not in self.local:  # a node of an unauthenticated federation is known by its id: its reply names it
            named = re.match(r"node '([^']+)'", event.reason)
            node = named.group(1) if named else node
        if node in self.local and node not in self.told:
            # A node says off itself only what names no file, line or value; here its operator is you.
            self.told.add(str(node))
            log = self.logs / f"node-{node}-worker.log"
            self.bar.console.print(f"    its own log says why in full: {escape(str(log))}", highlight=False)


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


#: How the command line colours the first word of an event's line (lab.contract.events.describe).
_COLOURS = {Joined: "green", Refused: "red", Warned: "yellow"}


def _show(bar: Progress, task: TaskID, event: Event, rounds: int, metric: str) -> None:
    if line := describe(event):
        word, _, rest = line.partition(" ")
        colour = _COLOURS.get(type(event))
        bar.console.print(f"  [{colour}]{word}[/] {escape(rest)}" if colour else f"  {escape(line)}", highlight=False)
    elif isinstance(event, Trained):
        # Nodes score the model they received, i.e. the previous round's global model.
        value = event.mean.get(metric)
        shown = f", mean {metric} {fmt(value)} after round {event.round - 1}" if event.round > 1 else ""
        bar.update(
            task,
            completed=event.round,
            description=f"round {event.round}/{rounds}: {event.answered}/{event.asked} nodes answered{shown}",
        )
    elif isinstance(event, Evaluated):
        scored = fmt(event.mean.get(metric))
        bar.update(
            task,
            completed=event.round,
            description=f"final model: {event.answered}/{event.asked} nodes, mean {metric} {scored}",
        )
    for node, reason in (event.errors if isinstance(event, Trained | Evaluated) else {}).items():
        bar.console.print(f"  [red]{escape(node)}[/]: {escape(reason)}")


def preflight_table(answer: PreflightAnswer) -> None:
    """One table: which node fails which column, and why."""
    table = RichTable(title="Pre-flight: every node's table against the task spec")
    for column in ("node", "rows", "column", "problem"):
        table.add_column(column)
    failing = 0
    for name, check in sorted(answer.nodes.items()):
        if check.refused:
            table.add_row(name, "", "", f"[red]refused[/]: {escape(check.refused)}")
            failing += 1
            continue
        rows = str(check.catalog.get("rows", "?"))
        if not check.problems:
            table.add_row(name, rows, "", "[green]fits the spec[/]")
        for column, problem in check.problems:
            table.add_row(name, rows, escape(column), escape(problem))
        failing += bool(check.problems)
    console.print(table)
    if failing:
        err.print(f"{failing} of {len(answer.nodes)} nodes do not fit the spec")
        raise typer.Exit(1)


def summary_table(summary: RunSummary, metrics: tuple[str, ...], seconds: float) -> None:
    """The federated model against each organisation's local-only model, with 95% intervals of the
    accuracies and what they let one say, each organisation's contribution, and where the model
    was registered."""
    shown: list[str] = [m for m in ("accuracy", "auc", "rmse", "r2") if m in metrics] or list(metrics[:2])
    table = RichTable(title="Federated model vs. each organisation's local-only model (own test split)")
    table.add_column("node")
    table.add_column("test rows", justify="right")
    for metric in shown:
        table.add_column(f"{metric}\nfederated", justify="right")
        table.add_column(f"{metric}\nlocal-only", justify="right")
        if metric == "accuracy":
            table.add_column("95% intervals", justify="left")
    private = any(row.epsilon is not None for row in summary.nodes)
    if private:
        table.add_column("epsilon\nspent", justify="right")
    unreliable = False
    columns = 1 + sum(3 if metric == "accuracy" else 2 for metric in shown) + (1 if private else 0)
    for row in summary.nodes:
        if row.held_back:  # the node's agreement keeps its own figures
            table.add_row(row.node, "[dim]held back[/]", *["[dim]held back[/]"] * (columns - 1))
            continue
        cells = [row.node, str(row.test_rows)]
        for metric in shown:
            for side in SIDES:
                value = fmt(row.score(side, metric))
                interval = row.interval(side, metric)
                if interval:
                    value += f" ({interval[0]:.2f}–{interval[1]:.2f})"
                if metric == "auc" and row.auc_unreliable and row.score(side, metric) is not None:
                    value += "*"
                    unreliable = True
                cells.append(value)
            if metric == "accuracy":
                cells.append(row.comparison or "")
        if private:
            cells.append(fmt(row.epsilon, 2))
        table.add_row(*cells)
    means = []
    for metric in shown:
        means += [
            "[dim]held back[/]" if summary.mean_held_back(side, metric) else fmt(summary.mean_of(side, metric))
            for side in SIDES
        ]
        if metric == "accuracy":
            means.append("")
    table.add_row("[bold]mean[/]", "", *means, *([""] if private else []))
    if "federated" in summary.pooled and "accuracy" in shown:
        cells = ["[bold]all nodes' rows[/]", str(summary.pooled["federated"].test_rows)]
        for side in SIDES:
            found = summary.pooled.get(side)
            cells.append(f"{found.accuracy:.3f} ({found.interval[0]:.2f}–{found.interval[1]:.2f})" if found else "")
        cells.append(summary.pooled_comparison)
        cells += [""] * (2 * (len(shown) - 1) + (1 if private else 0))
        table.add_row(*cells)
    console.print(table)
    if unreliable:
        console.print("* AUC on fewer than 5 test rows of a class: unreliable")
    if summary.hidden:
        console.print(
            f"held back: the figures of {escape(', '.join(summary.hidden))}, whose agreement keeps them "
            "(allow.node-figures = false), and any mean or pooled figure that would give them by subtraction"
        )
    noise = {row.node: row.noise.get("federated", {}).get(shown[0]) for row in summary.nodes}
    if any(noise.values()):
        each = ", ".join(f"{escape(node)} {sd:.3f}" for node, sd in noise.items() if sd)
        console.print(
            f"each node released its scores with noise (its agreement's limits.scores-epsilon); standard deviation "
            f"of the federated {shown[0]}: {each}; the intervals include it"
        )
    if summary.contributions is not None:
        contributions_table(summary.contributions)
    if summary.registered:
        console.print(f"registered [bold]models:/{summary.registered}@champion[/] (version {summary.version})")
    console.print(f"wall time {seconds:.0f} s")


def contributions_table(contributions: Contributions) -> None:
    """What each organisation's data contributed: Shapley and leave-one-out values."""
    if contributions.unavailable:
        console.print(f"contributions not valued: {escape(contributions.unavailable)}")
        return
    table = RichTable(title="What each organisation's data contributed")
    table.add_column("node")
    monte_carlo = contributions.monte_carlo
    table.add_column("Shapley value" + (" ± s.e." if monte_carlo else ""), justify="right")
    table.add_column("leave-one-out", justify="right")
    for name, values in contributions.nodes.items():
        shapley = f"{values.shapley:+.3f}"
        if monte_carlo and values.standard_error is not None:
            shapley += f" ± {values.standard_error:.3f}"
        table.add_row(name, shapley, f"{values.leave_one_out:+.3f}")
    for name in contributions.held_back:
        table.add_row(name, "[dim]held back[/]", "[dim]held back[/]")
    console.print(table)
    how = "exact, every coalition" if not monte_carlo else f"Monte Carlo, {contributions.permutations} orderings"
    console.print(
        f"{how}; utility: {escape(contributions.utility)}; no node's updates "
        f"{fmt(contributions.empty_model)}, every node's {fmt(contributions.full_model)}"
    )
