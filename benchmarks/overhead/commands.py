"""Running one command to its end (or a timeout), its output in a log file, in its own session."""

from __future__ import annotations

import subprocess
from pathlib import Path

from lab.runtime.processes import start_logged, stop_process

__all__ = ["run_logged"]


def run_logged(
    name: str, argv: list[str], *, env: dict[str, str], log_path: Path, cwd: Path, timeout: float, grace: float
) -> int | None:
    """Run ``argv`` (lab.runtime.processes.start_logged) until it exits; its exit status, or None if it still ran
    after ``timeout`` seconds. It is stopped in any case (on a timeout, an error or Ctrl-C): SIGTERM, then SIGKILL
    after ``grace`` seconds."""
    proc = start_logged(name, argv, env=env, log_path=log_path, cwd=cwd)
    try:
        return proc.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:
        stop_process(proc.popen, grace=grace)
        proc.log_file.close()
