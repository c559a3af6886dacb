"""The coordinator's ServerApp: one run, either training (federation.training) or a query of a kind
in ``lab.queries``, recorded in MLflow and reported to the caller as progress events."""

from __future__ import annotations

import json
import logging
import traceback
from dataclasses import replace
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from federation.asking import asker
from federation.grid import PromptGrid
from federation.training import train
from lab.contract import events
from lab.contract.events import Done, Failed, Started
from lab.contract.results import Reported
from lab.contract.settings import RunSettings
from lab.core.environ import ROSTER
from lab.core.spec import TaskSpec, parse_spec
from lab.errors import LabError, RunFailedError
from lab.queries import kind_named
from lab.registry.checkpoints import resumable
from lab.registry.runs import FLOWER_RUN, RESUMED_BY, close_orphans, coordinator_tags
from lab.registry.tracking import Tracker, patience, unreachable
from lab.runtime.roster import names_by_id

__all__ = ["TRACEBACK_FILE", "app"]

logger = logging.getLogger(__name__)

app = ServerApp()

#: The MLflow artifact holding the traceback of a bug the coordinator met.
TRACEBACK_FILE = "error/traceback.txt"


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one federated run end to end."""
    grid = PromptGrid(grid)  # replies are read within 0.2 s, not Flower's 3 s
    settings = RunSettings.from_run_config(dict(context.run_config))
    # Where the coordinator admits nodes by key (its roster), each is held to its admitted name; the
    # roster alone says so, whatever the run's config says (whoever submits a run cannot rename nodes).
    admitted = names_by_id(Path(ROSTER.get())) if ROSTER.get() else {}
    settings = replace(settings, admitted_nodes=json.dumps(admitted) if admitted else "")
    spec = parse_spec(settings.task_spec, source="the run's task spec")
    tracker = Tracker(settings.tracking_uri, settings.experiment or spec.name)
    fab_hash = grid.run.fab_hash  # the app's code, as the SuperLink received it
    tags = {
        FLOWER_RUN: str(context.run_id),
        "lab.spec": spec.name,
        "lab.spec_sha256": spec.sha256,
        "lab.code.fab_hash": fab_hash,
        "lab.code.version": settings.code_version or "unknown",
    }
    if settings.resume_run:
        tags = {RESUMED_BY: str(context.run_id), "lab.code.fab_hash": fab_hash}
    kept: dict[str, str] = {}
    try:
        with patience(settings.tracking_timeout):
            _record(grid, context, spec, settings, tracker, fab_hash, tags, kept)
    except Exception as exc:
        if isinstance(exc, LabError):
            reason = str(exc)
        elif unreachable(exc):
            reason = (
                f"the tracking store {settings.tracking_uri} could not be reached for {settings.tracking_timeout:.0f} "
                f"s (tracking-timeout), so the run stopped and nothing was registered; once it is back, `lab runs "
                f"--clean` closes the run and `lab run --resume {tracker.run_id or 'RUN_ID'}` continues it from its "
                "last checkpoint"
            )
        else:
            reason = f"internal error (a bug in the lab): {type(exc).__name__}: {exc}"
        events.emit(Failed(reason=reason + kept.get("where", ""), traceback=kept.get("text")))
        raise


def _record(
    grid: Grid,
    context: Context,
    spec: TaskSpec,
    settings: RunSettings,
    tracker: Tracker,
    fab_hash: str,
    tags: dict[str, str],
    kept: dict[str, str],
) -> None:
    """The run inside its MLflow run; the traceback of a bug goes into ``kept``."""
    if tracker.enabled:  # runs a dead coordinator left RUNNING (this one's, when it resumes)
        close_orphans(settings.tracking_uri)
    if settings.resume_run:
        _check_resumable(settings.tracking_uri, settings.resume_run, fab_hash)
    with tracker.run(
        run_name=f"{spec.name}-{settings.query or settings.strategy}-{context.run_id}",
        params={**settings.as_params(), "spec": spec.name, "spec_sha256": spec.sha256, "code.fab_hash": fab_hash},
        tags={**tags, **coordinator_tags()},
        resume_run_id=settings.resume_run,
    ):
        try:
            events.emit(
                Started(
                    rounds=settings.num_rounds,
                    strategy=settings.strategy,
                    mlflow_run_id=tracker.run_id,
                    flwr_run_id=context.run_id,
                )
            )
            result = _run(grid, spec, settings, tracker, fab_hash)
        except Exception as exc:
            if not isinstance(exc, LabError) and not unreachable(exc):  # a bug: keep its traceback
                kept.update(_keep_traceback(tracker))
            raise
    # Only once MLflow has the run's end: whoever reads the run on "done" finds it FINISHED.
    events.emit(Done(reported=result.to_json()))


def _run(grid: Grid, spec: TaskSpec, settings: RunSettings, tracker: Tracker, fab_hash: str) -> Reported:
    tracker.log_text(spec.text, "task/spec.toml")
    if settings.environment_lock:
        tracker.log_text(settings.environment_lock, "environment/requirements.lock")
    if not settings.query:
        return train(grid, spec, settings, tracker, events.emit, fab_hash)
    kind = kind_named(settings.query)
    request = kind.parse_request(settings.query_request)
    return kind.coordinate(spec, request, settings, asker(grid, spec, kind, settings), tracker, events.emit)


def _check_resumable(tracking_uri: str, run_id: str, fab_hash: str) -> None:
    """Refuse to resume a run that finished, still runs, or ran other code."""
    run = resumable(tracking_uri, run_id)
    if run.status == "RUNNING":
        raise RunFailedError(f"run {run_id} is still running (its coordinator is alive); stop it before resuming")
    ran = run.tags.get("lab.code.fab_hash", "")
    if ran and ran != fab_hash:
        raise RunFailedError(
            f"run {run_id} ran the app with FAB hash {ran[:12]}..., this is {fab_hash[:12]}...: a resumed run must "
            "run the same code; check out the commit it ran (its tag lab.code.version) or start a new run"
        )


def _keep_traceback(tracker: Tracker) -> dict[str, str]:
    """The exception being handled: logged, kept in the MLflow run, and sent to the caller with the
    failed event (the runtime writes it to the run's folder)."""
    text = traceback.format_exc()
    logger.error("%s", text)
    where = ""
    if tracker.run_id is not None:
        tracker.log_text(text, TRACEBACK_FILE)
        where = f"; the traceback is in MLflow run {tracker.run_id} (artifact {TRACEBACK_FILE})"
    return {"text": text, "where": where}
