"""`lab`: the front door for analysts, organisations and coordinators.

The command line is the only part of the lab that prints: each command calls the library (the
runtime, the registry, the node's records) and shows its typed result.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from lab.cli import federation
from lab.cli.deploy import coordinator_app
from lab.cli.governance import agreement_app, app_app, node_app
from lab.cli.inhouse import env_app, evaluate, model_app, predict, spec_app
from lab.cli.report import report
from lab.errors import LabError
from lab.runtime.environ import PRIVATE_ENV, WORKSPACE
from lab.runtime.processes import interrupt_on_stop_signals

__all__ = ["app", "main"]

os.environ.update(PRIVATE_ENV)  # before MLflow or Flower is imported by any command

app = typer.Typer(
    help="A federated data science lab on Flower and MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)

for command in (
    federation.demo,
    federation.run,
    federation.runs,
    report,
    federation.check,
    federation.mock,
    federation.stats,
    predict,
    evaluate,
    federation.ui,
):
    app.command()(command)
app.add_typer(env_app, name="env")
app.add_typer(spec_app, name="spec")
app.add_typer(model_app, name="model")
app.add_typer(agreement_app, name="agreement")
app.add_typer(app_app, name="app")
app.add_typer(node_app, name="node")
app.add_typer(coordinator_app, name="coordinator")


def main() -> NoReturn:
    """Entry point: a user's mistake is one clear line on stderr, never a traceback."""
    interrupt_on_stop_signals()  # SIGTERM and SIGHUP stop the lab the way Ctrl-C does: processes first
    try:
        app(standalone_mode=True)
    except LabError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted; every process the lab started has been stopped")
        sys.exit(130)
    except Exception as exc:  # a bug in the lab: one line here, the traceback in the workspace's logs
        where = _keep_traceback()
        line = f"internal error (a bug in the lab): {type(exc).__name__}: {exc}; the traceback is in {where}"
        err.print(f"[red]error:[/] {escape(line)}", highlight=False)
        sys.exit(1)
    sys.exit(0)


def _keep_traceback() -> str:
    """Write the exception being handled to the workspace's logs; the file's path."""
    folder = Path(WORKSPACE.get()) / "logs"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"lab-error-{time.strftime('%Y%m%d-%H%M%S')}.txt"
        path.write_text(traceback.format_exc(), encoding="utf-8")
    except OSError:
        traceback.print_exc()
        return "the output above"
    return repr(str(path.resolve()))
