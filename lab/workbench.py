"""The analyst's workbench: what the command line does, from Python, returning typed results and
pandas DataFrames, with a live progress display in JupyterLab (and lines on stderr elsewhere).

    from lab.workbench import Workbench

    bench = Workbench.demo()                     # the demo's four hospitals, started on this machine
    bench.check()                                # each node's table against the spec: a DataFrame
    stats = bench.stats(["age", "chol"], by="sex")
    run = bench.run(strategy="fedprox", contributions=True)
    run.nodes                                    # each organisation's scores with 95% intervals
    run.contributions                            # Shapley and leave-one-out values
    bench.runs()                                 # the tracking store's runs
    bench.curves([run.mlflow_run_id], "mean.accuracy")

``Workbench.local`` takes any nodes' tables, ``Workbench.connect`` a coordinator's federation
(``lab run --coordinator``). Every call starts what it needs and stops it again, as the command
line does, unless the nodes are kept up for several calls (``with bench.started() as live:``); a
mistake raises a ``lab.errors.LabError`` that says what to fix.
"""

from __future__ import annotations

import contextlib
import html
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from lab.contract.events import Evaluated, Event, Started, Trained, describe
from lab.contract.results import PooledAccuracy, PreflightAnswer, RunSummary, StatsAnswer
from lab.core.analytics import DEFAULT_MIN_COUNT, bin_labels
from lab.core.environ import WORKSPACE
from lab.core.spec import TaskSpec, load_spec
from lab.errors import UsageError
from lab.registry.rerun import Evaluation, evaluate_table, load_model
from lab.registry.runs import compared, list_runs, metric_curves
from lab.runtime.demo import demo_federation
from lab.runtime.environ import federation_key_for
from lab.runtime.federation import Federation
from lab.runtime.run import RunResult

__all__ = ["Preflight", "Progress", "StatsResult", "TrainingRun", "Workbench", "evaluate"]


@dataclass(frozen=True)
class TrainingRun:
    """A finished training run: each organisation's scores, the contributions, where the model is.

    ``nodes`` has a row per organisation: its rows, the federated and local-only model's scores
    (``accuracy``, ``local_accuracy``, ...), the accuracies' 95% intervals (``accuracy_low``,
    ``accuracy_high``, ``local_accuracy_low``, ...), what the intervals let one say
    (``comparison``), whether its AUC rests on too few rows (``auc_unreliable``) and the epsilon
    it spent. ``contributions`` has a row per organisation (``shapley``, ``standard_error``,
    ``leave_one_out``), or is None when the run did not value them.
    """

    nodes: pd.DataFrame
    mean: dict[str, float | None]
    pooled: dict[str, PooledAccuracy]
    pooled_comparison: str
    contributions: pd.DataFrame | None
    contributions_note: str
    model_uri: str | None
    registered: str | None
    mlflow_run_id: str | None
    seconds: float
    summary: RunSummary = field(repr=False)

    @classmethod
    def of(cls, result: RunResult) -> TrainingRun:
        summary = result.summary
        rows = []
        for node in summary.nodes:
            row: dict[str, Any] = {
                "node": node.node,
                "organisation": node.organisation,
                "train_rows": node.train_rows,  # None where the node's agreement keeps its figures
                "test_rows": node.test_rows,
            }
            for side, prefix in (("federated", ""), ("local_only", "local_")):
                row.update({f"{prefix}{k}": v for k, v in getattr(node, side).items()})
                for metric, (low, high) in (node.intervals or {}).get(side, {}).items():
                    row[f"{prefix}{metric}_low"], row[f"{prefix}{metric}_high"] = low, high
            row.update(
                comparison=node.comparison or "",
                auc_unreliable=node.auc_unreliable,
                epsilon=node.epsilon,
            )
            rows.append(row)
        valued = summary.contributions
        contributions, note = None, ""
        if valued is not None and valued.unavailable:
            note = f"not valued: {valued.unavailable}"
        elif valued is not None:
            contributions = pd.DataFrame([{"node": name, **vars(values)} for name, values in valued.nodes.items()])
            contributions = contributions.set_index("node")
            note = f"{valued.method}; utility: {valued.utility}. {valued.note}"
        return cls(
            nodes=pd.DataFrame(rows).set_index("node"),
            mean=dict(summary.mean),
            pooled=dict(summary.pooled),
            pooled_comparison=summary.pooled_comparison,
            contributions=contributions,
            contributions_note=note,
            model_uri=summary.model_uri,
            registered=summary.registered,
            mlflow_run_id=result.mlflow_run_id,
            seconds=result.seconds,
            summary=summary,
        )


@dataclass(frozen=True)
class StatsResult:
    """Federated statistics: ``moments`` has a row per column and group (n, mean, sd, how many
    nodes); ``answer`` is the whole result (``answer.pooled``: histograms, crosstab, correlation),
    ``notes`` what each node held back."""

    moments: pd.DataFrame
    answer: StatsAnswer
    mlflow_run_id: str | None

    @property
    def notes(self) -> dict[str, list[str]]:
        return self.answer.notes

    def histogram(self, column: str) -> pd.DataFrame:
        """A column's pooled histogram (bins or levels and their row counts; ``incomplete``: a
        node held back a small count from it, so the count is a lower bound)."""
        figures = self.answer.pooled["columns"].get(column)
        if figures is None or "histogram" not in figures:
            raise UsageError(f"no histogram of column {column!r} in this result; ask stats() for it")
        return pd.DataFrame(
            {"bin": bin_labels(figures), "rows": figures["histogram"], "incomplete": figures["histogram_incomplete"]}
        ).set_index("bin")


@dataclass(frozen=True)
class Preflight:
    """Each node's table against the spec: ``problems`` has a row per node and problem column
    (``problem`` empty where the table fits, or why the node refused); ``catalogs`` each node's
    catalog (columns, types, missing and level counts, ranges and histograms, small counts
    hidden); ``answers`` what each node answered, as `lab check` gets it."""

    problems: pd.DataFrame
    catalogs: dict[str, dict[str, Any]]
    answers: PreflightAnswer = field(repr=False)

    @property
    def fits(self) -> bool:
        """Whether every node's table fits the spec."""
        return bool((self.problems["problem"] == "").all())

    @classmethod
    def of(cls, answer: PreflightAnswer) -> Preflight:
        rows = []
        for name, check in sorted(answer.nodes.items()):
            if check.refused:
                rows.append({"node": name, "rows": None, "column": "", "problem": f"refused: {check.refused}"})
                continue
            count = check.catalog.get("rows")
            for column, problem in check.problems:
                rows.append({"node": name, "rows": count, "column": column, "problem": problem})
            if not check.problems:
                rows.append({"node": name, "rows": count, "column": "", "problem": ""})
        catalogs = {name: check.catalog for name, check in answer.nodes.items() if check.catalog}
        return cls(pd.DataFrame(rows, columns=["node", "rows", "column", "problem"]), catalogs, answer)


class Progress:
    """A run's progress: one live block in JupyterLab (updated in place), lines on stderr elsewhere."""

    def __init__(self, title: str, rounds: int) -> None:
        self.title, self.rounds = title, rounds
        self.lines: list[str] = []
        self.status = "starting the federation"
        self.handle: Any = None
        try:
            from IPython import get_ipython

            shell = get_ipython()
        except ImportError:
            shell = None
        if shell is not None and shell.__class__.__name__ != "TerminalInteractiveShell":
            from IPython.display import HTML, display

            self.handle = display(HTML(self._html()), display_id=True)  # type: ignore[no-untyped-call]

    def __call__(self, event: Event) -> None:
        line = describe(event)
        if isinstance(event, Trained):
            shown = next(
                (f", mean score {v:.3f} after round {event.round - 1}" for v in event.mean.values() if v is not None),
                "",
            )
            self.status = f"round {event.round}/{self.rounds}: {event.answered}/{event.asked} nodes answered{shown}"
        elif isinstance(event, Evaluated):
            self.status = f"final model scored by {event.answered}/{event.asked} nodes"
        elif isinstance(event, Started):
            self.status = "nodes preparing"
        if isinstance(event, Trained | Evaluated):
            self.lines += [f"{node}: {reason}" for node, reason in event.errors.items()]
        if line:
            self.lines.append(line)
        self._show(line)

    def _html(self) -> str:
        body = "\n".join(html.escape(line) for line in self.lines[-12:])
        return (
            f"<div><b>{html.escape(self.title)}</b> — {html.escape(self.status)}"
            f"<pre style='margin:4px 0;font-size:85%'>{body}</pre></div>"
        )

    def _show(self, line: str) -> None:
        if self.handle is not None:
            from IPython.display import HTML

            self.handle.update(HTML(self._html()))  # type: ignore[no-untyped-call]
        elif line:
            sys.stderr.write(f"  {line}\n")


@dataclass(frozen=True)
class Workbench:
    """A federation to work on (local nodes or a coordinator's), its task spec and its workspace.

    Build one with ``Workbench.demo()``, ``Workbench.local(nodes, spec=...)`` or
    ``Workbench.connect(address, ca=..., spec=...)``; ``progress=False`` keeps it quiet.
    """

    federation: Federation
    spec: Path
    workspace: Path = Path(WORKSPACE.default)
    tracking_uri: str = ""
    progress: bool = True

    @classmethod
    def demo(cls, *, workspace: str | Path = WORKSPACE.default, progress: bool = True) -> Workbench:
        """The demo federation: the four hospitals of the UCI Heart Disease data, each with its
        agreement approving the demo task and this checkout's app."""
        found = demo_federation(Path(workspace))
        return cls(Federation.local(found.nodes, found.agreements), found.spec, Path(workspace), progress=progress)

    @classmethod
    def local(
        cls,
        nodes: Mapping[str, str | Path],
        *,
        spec: str | Path,
        agreements: Mapping[str, str | Path] | None = None,
        no_agreement: bool = False,
        workspace: str | Path = WORKSPACE.default,
        progress: bool = True,
    ) -> Workbench:
        """Nodes started on this machine for each call: ``nodes`` maps a name to its table; a node not
        in ``agreements`` enforces the default agreement (``no_agreement``: none holds one, on purpose)."""
        federation = Federation.local(nodes, agreements, no_agreement=no_agreement)
        return cls(federation, Path(spec), Path(workspace), progress=progress)

    @classmethod
    def connect(
        cls,
        address: str,
        *,
        ca: str | Path,
        spec: str | Path,
        nodes: str = "",
        workspace: str | Path = WORKSPACE.default,
        tracking_uri: str = "",
        progress: bool = True,
    ) -> Workbench:
        """A coordinator's federation at ``address`` (HOST:PORT of its Control API, through an SSH
        tunnel from an analyst's machine); ``nodes`` (NAME,NAME) limits it to some of its nodes."""
        federation = Federation.remote(address, Path(ca), nodes)
        return cls(federation, Path(spec), Path(workspace), tracking_uri, progress)

    @contextlib.contextmanager
    def started(self) -> Iterator[Workbench]:
        """This workbench with its local nodes kept running for every call in the ``with`` block
        (each call otherwise starts and stops them, some seconds each); everything is stopped when
        the block ends, fails or is interrupted."""
        with self.federation.kept_up(self.workspace, self.task) as federation:
            yield replace(self, federation=federation)

    def with_spec(self, spec: str | Path) -> Workbench:
        """The same federation, another task spec."""
        return replace(self, spec=Path(spec))

    @property
    def task(self) -> TaskSpec:
        return load_spec(self.spec)

    @property
    def tracking(self) -> str:
        """The tracking store the runs are recorded in."""
        return self.federation.tracking_uri(self.workspace, self.tracking_uri)

    def check(self) -> Preflight:
        """Each node's table against the spec, and what it holds (``lab check``)."""
        found = self.federation.check(
            self.task,
            workspace=self.workspace,
            tracking_uri=self.tracking_uri,
            on_event=self._progress("pre-flight check", 1),
        )
        return Preflight.of(found)

    def stats(
        self,
        columns: Sequence[str],
        *,
        by: str | None = None,
        crosstab: tuple[str, str] | None = None,
        correlation: bool = False,
        bins: dict[str, list[float]] | None = None,
        min_count: int = DEFAULT_MIN_COUNT,
    ) -> StatsResult:
        """Federated statistics over every node's table (``lab stats``), small counts suppressed."""
        task = self.task
        request = self.federation.stats_request(
            task, columns, by=by, crosstab=crosstab, correlation=correlation, bins=bins, min_count=min_count
        )  # a wrong column fails here, before any process starts
        result = self.federation.stats(
            task,
            request,
            workspace=self.workspace,
            tracking_uri=self.tracking_uri,
            on_event=self._progress("federated statistics", 1),
        )
        moments = [
            {"column": column, "group": group, **{k: values.get(k) for k in ("n", "mean", "sd", "nodes", "incomplete")}}
            for column, figures in result.stats.pooled["columns"].items()
            for group, values in figures["groups"].items()
        ]
        return StatsResult(pd.DataFrame(moments).set_index(["column", "group"]), result.stats, result.mlflow_run_id)

    def run(self, **settings: Any) -> TrainingRun:
        """Train the spec's model on the federation (``lab run``). Settings are the run settings
        with underscores (``num_rounds=3``, ``strategy="fedprox"``, ``contributions=True``)."""
        task = self.task
        typed = self.federation.settings(task, self.workspace, self.tracking_uri, settings)
        result = self.federation.train(
            typed,
            workspace=self.workspace,
            on_event=self._progress(f"{task.name}: {typed.num_rounds} rounds of {typed.strategy}", typed.num_rounds),
        )
        return TrainingRun.of(result)

    def mock(self, rows: int, out: str | Path, *, seed: int = 0, preflight: Preflight | None = None) -> dict[str, Path]:
        """Per node, a synthetic table with the spec's columns drawn from the node's catalog
        (``lab mock``): no real row in it. Returns each node's file. With ``preflight`` (what
        ``check()`` returned) the catalogs it holds are used and the nodes are not asked again."""
        return self.federation.mock(
            self.task,
            rows,
            Path(out),
            seed=seed,
            answers=preflight.answers if preflight is not None else None,
            workspace=self.workspace,
            tracking_uri=self.tracking_uri,
            on_event=self._progress("mock tables", 1),
        )

    def runs(self, limit: int = 50) -> pd.DataFrame:
        """The tracking store's runs, newest first (``lab runs``)."""
        found = list_runs(self.tracking, limit=limit)
        return pd.DataFrame([vars(row) for row in found]).set_index("run_id") if found else pd.DataFrame()

    def compare(self, run_ids: Sequence[str]) -> pd.DataFrame:
        """Runs side by side: a row per run with its strategy, rounds and final metrics."""
        return pd.DataFrame(compared(self.tracking, run_ids)).set_index("run_id")

    def curves(self, run_ids: Sequence[str], metric: str = "mean.accuracy") -> pd.DataFrame:
        """A metric round by round for each run (a column per run's name, a row per round): the
        nodes' mean score (``mean.accuracy``), one node's (``node.NAME.accuracy``) or the training
        loss (``train_loss``)."""
        series = metric_curves(self.tracking, run_ids, metric)
        frame = pd.DataFrame({name: pd.Series(points, dtype=float) for name, points in series.items()})
        frame.index.name = "round"
        return frame.sort_index()

    def _progress(self, title: str, rounds: int) -> Any:
        return Progress(title, rounds) if self.progress else (lambda _event: None)


def evaluate(
    model: str,
    data: str | Path,
    *,
    tracking_uri: str,
    node: str | None = None,
    split: str = "test",
    federation_key: str | Path | None = None,
    workspace: str | Path = WORKSPACE.default,
) -> Evaluation:
    """A registered model's metrics on a table in-house (``lab evaluate``), with the accuracy's 95%
    interval (``.intervals``) and whether its AUC rests on too few rows (``.auc_unreliable``). The
    model's signature is checked with ``federation_key`` (default: as ``lab evaluate`` finds it)."""
    if split not in ("test", "train", "all"):
        raise UsageError(f"split {split!r}: choose test, train or all")
    key = federation_key_for(Path(workspace), Path(federation_key) if federation_key else None)
    return evaluate_table(load_model(model, tracking_uri, key), data, node=node, split=split)  # type: ignore[arg-type]
