"""`lab report RUN_ID`: a training run's report as one HTML page, written here and logged to the run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lab.cli.options import PasswordFile, TrackingCa, TrackingUri, TrackingUser, Workspace, read_password
from lab.core.environ import WORKSPACE
from lab.errors import LabError
from lab.runtime.environ import tracking_uri_for

__all__ = ["report"]

console = Console()


def report(
    run_id: Annotated[str, typer.Argument(help="The MLflow run id of a training run (`lab runs` lists them).")],
    out: Annotated[
        Path | None, typer.Option(help="Where to write the page (default: WORKSPACE/reports/RUN_ID.html).")
    ] = None,
    log: Annotated[bool, typer.Option(help="Also log the page to the run, as its artifact report/report.html.")] = True,
    workspace: Workspace = Path(WORKSPACE.default),
    tracking_uri: TrackingUri = "",
    user: TrackingUser = "",
    password_file: PasswordFile = None,
    ca: TrackingCa = None,
) -> None:
    """Write a training run's report: the per-organisation table with intervals, the round curves,
    the contributions, privacy spent per node, the fingerprints and the agreement clauses that applied."""
    from lab.registry.report import REPORT_ARTIFACT, build_report, log_report
    from lab.registry.tracking import account

    uri = tracking_uri_for(workspace, tracking_uri)
    password = read_password(password_file)
    with account(user, password, ca):
        html = build_report(uri, run_id)
    path = (out or workspace / "reports" / f"{run_id}.html").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    if log:  # after the page is written: an account that may read the run but not write to it still gets it
        try:
            with account(user, password, ca):
                log_report(uri, run_id, html)
        except LabError as exc:
            raise type(exc)(f"{exc} (the page is written to {str(path)!r}; --no-log skips logging it)") from None
        console.print(f"logged to MLflow run {run_id} as {REPORT_ARTIFACT}", highlight=False)
    print(path)
