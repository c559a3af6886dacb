"""The coordinator's SuperExec, warm: each run's ServerApp forked from one process that has
imported what a ServerApp imports.

Flower's SuperLink starts Flower's SuperExec, which starts a new ``flwr-serverapp`` interpreter
for every run, and the lab's ServerApp imports PyTorch, MLflow and pandas before it sends its
first message (about 3.5 CPU-seconds, seconds of a user's wait on two cores, for every `lab run`,
`lab check` and `lab stats`). Started with ``--isolation process``, the SuperLink leaves that to
a SuperExec one starts oneself. This is Flower's own SuperExec (``run_superexec``: it acquires
each task from the SuperLink's Runtime API with its token, and launches it as ever) with one
difference, its executor (``ForkingExecutor``): a ServerApp task is launched as Flower's
``flwr_serverapp``, unchanged and with the arguments Flower's own executor passes it, in a
process forked from this one instead of a new interpreter. Other task types are launched as
Flower launches them.

The app itself is never imported here (``SERVERAPP_IMPORTS`` names libraries, not
``federation``): each ServerApp loads the app from the run's FAB, as Flower's does.

    python -m lab.runtime.superexec --runtime-api-address HOST:PORT (--insecure | --root-certificates CA)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import traceback

from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult

__all__ = ["SERVERAPP_IMPORTS", "ForkingExecutor", "main"]

logger = logging.getLogger(__name__)

#: What the lab's ServerApp imports before its first message (Flower's ServerApp runtime, the
#: tracking store, the model and the query kinds), imported once here, before any run.
SERVERAPP_IMPORTS = (
    "flwr.superlink.cli.flwr_serverapp",
    "flwr.serverapp",
    "flwr.serverapp.strategy",
    "torch",
    "pandas",
    "mlflow",
    "mlflow.pyfunc",
    "lab.registry.run_record",
    "lab.registry.tracking",
    "lab.core.training",
    "lab.queries",
)


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


class ForkingExecutor(SubprocessExecutor):
    """Flower's SubprocessExecutor, but a ServerApp's process is forked from this one."""

    def __init__(self) -> None:
        super().__init__()
        self.children: set[int] = set()

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        if spec.task_type != TaskType.SERVER_APP:
            return super().launch(spec)
        argv = ["flwr-serverapp", "--runtime-api-address", spec.runtime_api_address, "--token", spec.token]
        if spec.insecure:
            argv.append("--insecure")
        elif spec.root_certificates_path is not None:
            argv.extend(["--root-certificates", spec.root_certificates_path])
        if spec.parent_pid is not None:
            argv.extend(["--parent-pid", str(spec.parent_pid)])
        if spec.runtime_dependency_install:
            argv.append("--allow-runtime-dependency-installation")
        sys.stdout.flush()  # nothing buffered here is written twice, by the child too
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the ServerApp's process
            _serve(argv, quiet=spec.suppress_output)
        self.children.add(pid)
        logger.info("task %s: ServerApp forked as process %d", spec.task_id, pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap the ServerApps that have ended (between two asks for a task)."""
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done == 0:
                    continue
                logger.info("ServerApp process %d ended with status %d", pid, os.waitstatus_to_exitcode(status))
            self.children.discard(pid)


def _serve(argv: list[str], *, quiet: bool) -> None:
    """In the forked process: run Flower's ``flwr-serverapp`` with ``argv``, then exit."""
    code = 1
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):  # the ServerApp's own, not the SuperExec's handlers
            signal.signal(sig, signal.SIG_DFL)
        if quiet:  # as Flower's executor starts it when output is suppressed
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
        from flwr.superlink.cli.flwr_serverapp import flwr_serverapp

        sys.argv = argv
        try:
            flwr_serverapp()
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc.code)
    except BaseException:  # noqa: BLE001 - a forked process must never return into the SuperExec's loop
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> None:
    """``python -m lab.runtime.superexec``: Flower's SuperExec with the forking executor."""
    parser = argparse.ArgumentParser(description="The coordinator's warm SuperExec.")
    parser.add_argument("--runtime-api-address", required=True, help="the SuperLink's Runtime API, HOST:PORT")
    transport = parser.add_mutually_exclusive_group(required=True)
    transport.add_argument("--insecure", action="store_true", help="the Runtime API serves without TLS")
    transport.add_argument("--root-certificates", help="the CA certificate the Runtime API's TLS is checked with")
    parser.add_argument("--parent-pid", type=int, help="exit when this process (the SuperLink) has")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per ask for a task
    logging.getLogger("flwr").propagate = False  # Flower prints its own lines
    for name in SERVERAPP_IMPORTS:
        importlib.import_module(name)
    if "federation" in sys.modules:
        raise RuntimeError("the app is loaded from each run's FAB, never into the SuperExec")
    from flwr.supercore.superexec import run_superexec as flower

    flower.get_executor = lambda *_, **__: ForkingExecutor()  # type: ignore[attr-defined]  # where it differs
    flower.run_superexec(
        runtime_api_address=args.runtime_api_address,
        insecure=args.insecure,
        root_certificates_path=args.root_certificates,
        parent_pid=args.parent_pid,
        runtime_dependency_install=False,
    )


if __name__ == "__main__":
    main()
