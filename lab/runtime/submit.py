"""Submit a run to a SuperLink with `flwr run`, and follow its progress as Flower streams it back."""

from __future__ import annotations

import logging
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from lab.contract import events
from lab.contract.events import Done, Event, Failed, Started
from lab.contract.settings import RunSettings
from lab.errors import CoordinatorLostError, RunFailedError
from lab.runtime.app import stage_app
from lab.runtime.connection import FEDERATION, Connection
from lab.runtime.processes import executable, stop_process

__all__ = ["OUTPUT", "Event", "RunOutcome", "follow_events", "new_run_dir", "started_runs", "submit_run"]

logger = logging.getLogger(__name__)

#: The run's output as `flwr run --stream` receives it, in the run's folder.
OUTPUT = "flwr-run.log"


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: its last event (what the run reported), and where its files are."""

    final: Done
    run_dir: Path
    seconds: float


def new_run_dir(workspace: Path) -> Path:
    """A new folder ``runs/TIME`` for one run's config, app and output."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = workspace / "runs" / stamp
    suffix = 1
    while run_dir.exists():
        run_dir = workspace / "runs" / f"{stamp}-{suffix}"
        suffix += 1
    run_dir.mkdir(parents=True)
    return run_dir


def submit_run(
    connection: Connection,
    settings: RunSettings,
    *,
    app_dir: Path,
    run_dir: Path,
    on_event: Callable[[Event], None] = lambda _: None,
    timeout: float = 3600.0,
) -> RunOutcome:
    """Submit the app with ``settings`` to the SuperLink at ``connection`` and block until the
    coordinator reports the end; every progress event is handed to ``on_event`` as it arrives.

    Raises
    ------
    RunFailedError
        If the ServerApp reports a failure, or `flwr run` ends without a final event. The
        traceback of a bug in the coordinator is written to ``run_dir/traceback.txt``.
    """
    config_path = run_dir / "run-config.toml"
    config_path.write_text(tomli_w.dumps(settings.to_run_config()), encoding="utf-8")
    log_path = run_dir / OUTPUT
    app = stage_app(app_dir, run_dir / "app")
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [executable("flwr"), "run", str(app), FEDERATION, "--run-config", str(config_path), "--stream"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=connection.env(run_dir / "flwr-home"),
            cwd=run_dir,
            start_new_session=True,
        )
        try:
            final = follow_events(log_path, proc, on_event, timeout=timeout)
        finally:
            stop_process(proc, grace=10)
    if isinstance(final, Failed):
        reason = final.reason
        if final.traceback:
            kept = run_dir / "traceback.txt"
            kept.write_text(final.traceback, encoding="utf-8")
            reason += f" and in {str(kept)!r}"
        raise RunFailedError(f"the run failed: {reason} (logs in {str(run_dir)!r})")
    return RunOutcome(final=final, run_dir=run_dir, seconds=time.monotonic() - started)


def follow_events(
    path: Path, proc: subprocess.Popen[bytes], on_event: Callable[[Event], None], *, timeout: float
) -> Done | Failed:
    """Read the run's streamed output as it grows and hand on its events until ``done`` or ``failed``."""
    deadline = time.monotonic() + timeout
    offset = 0
    exited_at: float | None = None
    while time.monotonic() < deadline:
        if path.exists():
            with path.open("rb") as fh:
                fh.seek(offset)
                for raw in fh:
                    if not raw.endswith(b"\n"):
                        break  # a line still being written
                    offset += len(raw)
                    event = events.parse(raw.decode("utf-8", errors="replace"))
                    if event is None:
                        continue
                    on_event(event)
                    if isinstance(event, Done | Failed):
                        return event
        if proc.poll() is not None:
            exited_at = exited_at or time.monotonic()
            if time.monotonic() - exited_at > 5:  # give the last events time to land
                tail = "\n".join(path.read_text(errors="replace").splitlines()[-15:])
                raise CoordinatorLostError(
                    f"`flwr run` ended (status {proc.returncode}) before the run reported "
                    f"its end; its output ends with:\n{tail}"
                )
        time.sleep(0.25)
    raise RunFailedError(f"the run did not finish within {timeout:.0f} s; see {str(path)!r}")


def started_runs(workspace: Path, since: float) -> tuple[list[str], list[str]]:
    """The runs this workspace's coordinators started since ``since`` (wall clock), as each run's
    output says, for closing what a stopped coordinator left open: the MLflow runs whose ``started``
    event arrived, and every Flower run id `flwr run` reported (at once, while the events come
    through Flower's log stream, which can lag)."""
    mlflow_ids: list[str] = []
    flower_ids: list[str] = []
    for output in sorted(workspace.glob(f"runs/*/{OUTPUT}")):
        if output.stat().st_mtime < since:
            continue
        for line in output.read_text(encoding="utf-8", errors="replace").splitlines():
            if found := _STARTED.search(line):
                flower_ids.append(found.group(1))
            event = events.parse(line)
            if isinstance(event, Started) and event.mlflow_run_id:
                mlflow_ids.append(event.mlflow_run_id)
    return mlflow_ids, flower_ids


#: What `flwr run` prints once the SuperLink has accepted a run.
_STARTED = re.compile(r"Successfully started run (\d+)")
