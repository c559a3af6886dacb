"""Run one task on a local federation: the engine behind `lab demo`, `lab run`, `lab check` and
`lab stats`, and behind the notebook workbench (lab.workbench). It returns the run's result and hands every
progress event to a callback; it prints nothing (the CLI draws the progress)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lab.contract.events import Event, Started
from lab.contract.results import PreflightAnswer, PreparedAnswer, RunSummary, StatsAnswer, read_reported
from lab.contract.settings import RunSettings
from lab.core.sources import TableSource
from lab.core.spec import TaskSpec, parse_spec
from lab.errors import CoordinatorLostError, DataError, LabError, UsageError
from lab.runtime.agreements import default_agreements
from lab.runtime.app import code_version
from lab.runtime.connection import Connection
from lab.runtime.environ import lock_path, project_root
from lab.runtime.local import LocalFederation, NodeSpec
from lab.runtime.submit import new_run_dir, started_runs, submit_run

__all__ = ["RunResult", "node_specs", "run_federation", "run_on", "run_settings"]


@dataclass(frozen=True)
class RunResult:
    """How a run ended: what the coordinator reported (``outcome``, lab.contract.results), read as
    the kind of run it was with ``summary`` (training), ``preflight`` or ``stats``."""

    outcome: RunSummary | PreflightAnswer | StatsAnswer | PreparedAnswer
    seconds: float  # wall time, the processes' start and stop included
    mlflow_run_id: str | None
    run_dir: Path

    @property
    def summary(self) -> RunSummary:
        """A training run's summary: every organisation's rows and scores, the means, the model."""
        return self._as(RunSummary)

    @property
    def preflight(self) -> PreflightAnswer:
        return self._as(PreflightAnswer)

    @property
    def stats(self) -> StatsAnswer:
        return self._as(StatsAnswer)

    def _as(self, kind: type[Outcome]) -> Outcome:
        if not isinstance(self.outcome, kind):
            raise TypeError(f"this run reported a {type(self.outcome).__name__}, not a {kind.__name__}")
        return self.outcome


Outcome = TypeVar("Outcome", RunSummary, PreflightAnswer, StatsAnswer)


def run_settings(
    spec: TaskSpec,
    *,
    tracking_uri: str,
    nodes: int,
    values: Mapping[str, Any] | None = None,
    lock: Path | None = None,
    source: str = "run settings",
) -> RunSettings:
    """The run's settings: ``values`` (by field name, ``num_rounds``; typed, or as command-line
    text) on the defaults, and what the lab fills in (the spec's text, the environment lock (``lock``, or the
    project's), the code's version).

    Raises SettingsError for an unknown or invalid setting, before any process starts.
    """
    lock = lock_path(lock)
    filled = RunSettings(
        task_spec=spec.text,
        tracking_uri=tracking_uri,
        expected_nodes=nodes,
        environment_lock=lock.read_text(encoding="utf-8") if lock.is_file() else "",
        code_version=code_version(project_root()),
    )
    return filled.with_values(dict(values or {}), source=source)


def node_specs(
    nodes: Mapping[str, str],
    agreements: Mapping[str, Path] | None,
    *,
    workspace: Path,
    spec: TaskSpec,
    no_agreement: bool = False,
) -> list[NodeSpec]:
    """The local nodes: each with its agreement, the default one for ``spec`` written into its home
    where none is given (lab.runtime.agreements), or none at all with ``no_agreement``."""
    given = dict(agreements or {})
    if no_agreement:
        if given:
            raise UsageError("--no-agreement starts every local node without an agreement: drop --agreement")
        return [NodeSpec(n, p, no_agreement=True) for n, p in nodes.items()]
    given.update(default_agreements(workspace.resolve(), spec, [n for n in nodes if n not in given]))
    return [NodeSpec(n, p, agreement=given[n]) for n, p in nodes.items()]


def run_federation(
    settings: RunSettings,
    nodes: Mapping[str, str],
    *,
    workspace: Path,
    agreements: Mapping[str, Path] | None = None,
    no_agreement: bool = False,
    secure: bool = False,
    node_runtime: str = "warm",
    on_event: Callable[[Event], None] = lambda _: None,
) -> RunResult:
    """Start a federation of ``nodes`` (name -> table) in ``workspace``, run, stop everything;
    ``node_runtime`` says how the nodes answer (lab.runtime.node.RUNTIMES). A node given no
    agreement enforces the default one (``node_specs``), unless ``no_agreement``.

    Raises LabError (RunFailedError) with the reason when the run fails; every process is stopped
    and the coordinator's MLflow run closed in any case (KILLED on Ctrl-C, FAILED otherwise).
    """
    for name, source in nodes.items():
        if not TableSource.of(source).exists() and settings.query != "catalog":  # a pre-flight lets the node report it
            raise DataError(f"node {name!r}: {source!r} does not exist; give the path of its table")
    spec = parse_spec(settings.task_spec, source="the run's task spec")
    specs = node_specs(nodes, agreements, workspace=workspace, spec=spec, no_agreement=no_agreement)
    wall = time.time()
    try:
        with LocalFederation(workspace, specs, secure=secure, node_runtime=node_runtime) as federation:
            return run_on(federation.connection, settings, workspace=workspace, on_event=on_event)
    except KeyboardInterrupt:
        # Every process of the federation is stopped now, so no coordinator can still record its
        # run FAILED after run_on marked it KILLED: mark it again.
        _close_runs(settings.tracking_uri, _opened(settings.tracking_uri, workspace.resolve(), wall), "KILLED")
        raise


def run_on(
    connection: Connection,
    settings: RunSettings,
    *,
    workspace: Path,
    on_event: Callable[[Event], None] = lambda _: None,
) -> RunResult:
    """Run on the federation whose SuperLink ``connection`` reaches (the local one, or a
    coordinator's Control API), its files in ``workspace/runs``.

    On Ctrl-C or a failure the run is stopped at the SuperLink and the coordinator's MLflow run
    closed, KILLED or FAILED (where its tracking server can be reached from here).
    """
    workspace = workspace.resolve()
    mlflow_runs: list[str] = []
    flower_runs: list[str] = []
    started, wall = time.monotonic(), time.time()

    def follow(event: Event) -> None:
        if isinstance(event, Started):
            mlflow_runs.extend([event.mlflow_run_id] if event.mlflow_run_id else [])
            flower_runs.extend([str(event.flwr_run_id)] if event.flwr_run_id else [])
        on_event(event)

    if settings.resume_run:
        # A SuperLink killed and started again still lists the earlier attempts' Flower runs as
        # running, and its nodes would go on pulling their last messages before the resumed run's.
        from lab.registry.runs import FLOWER_RUN_TAGS, run_tags

        tags = run_tags(settings.tracking_uri, settings.resume_run)
        _stop_flower_runs(connection, [tags[key] for key in FLOWER_RUN_TAGS if tags.get(key)], workspace)
    try:
        outcome = submit_run(
            connection, settings, app_dir=project_root(), run_dir=new_run_dir(workspace), on_event=follow
        )
    except BaseException as exc:
        # The coordinator may go on, or have been stopped before it could close its MLflow run.
        _stop_flower_runs(connection, flower_runs, workspace)
        mlflow_runs += [r for r in _opened(settings.tracking_uri, workspace, wall) if r not in mlflow_runs]
        _close_runs(settings.tracking_uri, mlflow_runs, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        if isinstance(exc, CoordinatorLostError) and (hint := _resume_hint(settings.tracking_uri, mlflow_runs)):
            first, _, rest = str(exc).partition("\n")  # the hint before the tail of Flower's output
            raise CoordinatorLostError(f"{first}\n{hint}\n{rest}".rstrip()) from exc
        raise
    reported = read_reported(settings.query, outcome.final.reported)
    return RunResult(reported, time.monotonic() - started, mlflow_runs[0] if mlflow_runs else None, outcome.run_dir)


def _stop_flower_runs(connection: Connection, run_ids: list[str], workspace: Path) -> None:
    """Stop these Flower runs at the SuperLink, where it still knows them as running."""
    for run_id in run_ids:
        with contextlib.suppress(LabError):  # a SuperLink that never knew it, has ended it, or is gone
            connection.flwr_json(["stop", run_id], workspace / "flwr-home", what=f"stopping run {run_id}")


def _resume_hint(tracking_uri: str, mlflow_runs: list[str]) -> str:
    """How to continue a failed training run from its last checkpoint, if it kept one."""
    from lab.registry.checkpoints import ROUND_TAG
    from lab.registry.runs import run_tags

    for run_id in mlflow_runs if tracking_uri else []:
        if kept := run_tags(tracking_uri, run_id).get(ROUND_TAG):
            return f"run {run_id} kept its model after round {kept}: continue it with `lab run --resume {run_id}`"
    return ""


def _opened(tracking_uri: str, workspace: Path, since: float) -> list[str]:
    """The MLflow runs this workspace's coordinators opened since ``since``: those their events
    named, and those the tracking store holds for the Flower runs `flwr run` started."""
    from lab.registry.runs import runs_of
    from lab.registry.tracking import patience

    named, flower_runs = started_runs(workspace, since)
    if tracking_uri:
        # A tracking server that is down is not waited for here (MLflow's own retries take minutes).
        with contextlib.suppress(Exception), patience(3):
            named += [r for r in runs_of(tracking_uri, flower_runs) if r not in named]
    return named


def _close_runs(tracking_uri: str, run_ids: list[str], status: str) -> None:
    """Mark the coordinator's MLflow runs ``status`` where it left them open (or FAILED, on Ctrl-C)."""
    from lab.registry.tracking import close_unfinished

    for run_id in run_ids if tracking_uri else []:
        with contextlib.suppress(Exception):  # a tracking server this host cannot reach
            close_unfinished(tracking_uri, run_id, status)
