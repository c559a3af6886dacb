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
from typing import Any, NoReturn

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from lab.cli import federation
from lab.cli.deploy import coordinator_app
from lab.cli.governance import agreement_app, app_app, node_app
from lab.cli.inhouse import env_app, evaluate, model_app, predict, spec_app
from lab.cli.report import report
from lab.core.environ import PRIVATE_ENV, WORKSPACE
from lab.errors import LabError
from lab.runtime.processes import interrupt_on_stop_signals

__all__ = ["app", "main"]

os.environ.update(PRIVATE_ENV)  # before MLflow or Flower is imported by any command

err = Console(stderr=True)


class _Guarded(TyperGroup):
    """The command group that turns what goes wrong in any command into an exit status: a user's
    mistake (a LabError) is one clear line on stderr and status 2, Ctrl-C status 130 once every
    process the lab started is stopped, and a bug one line and status 1, its traceback kept in the
    workspace's logs. Here rather than around ``app()``, so that Typer's ``CliRunner`` runs a
    command in-process exactly as the console script does."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, EOFError, BrokenPipeError):
            raise  # Click's own: its exits, its usage errors, "Aborted!", a closed pipe (`lab runs | head`)
        except LabError as exc:
            err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted; every process the lab started has been stopped")
            raise typer.Exit(130) from None
        except Exception as exc:  # a bug in the lab: one line here, the traceback in the workspace's logs
            where = _keep_traceback()
            line = f"internal error (a bug in the lab): {type(exc).__name__}: {exc}; the traceback is in {where}"
            err.print(f"[red]error:[/] {escape(line)}", highlight=False)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Guarded,
    help="A federated data science lab on Flower and MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

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
    """Entry point: a user's mistake is one clear line on stderr, never a traceback (``_Guarded``)."""
    interrupt_on_stop_signals()  # SIGTERM and SIGHUP stop the lab the way Ctrl-C does: processes first
    app(standalone_mode=True)
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
