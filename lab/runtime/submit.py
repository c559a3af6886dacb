"""Submit a federated run to the SuperLink with `flwr run` and follow its progress events."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import tomli_w

from lab.contract.settings import RunSettings
from lab.core.spec import TaskSpec
from lab.errors import LabError, RunFailedError
from lab.runtime.local import LocalFederation, executable

__all__ = [
    "RunOutcome",
    "build_run_config",
    "code_version",
    "follow_events",
    "stage_app",
    "stop_process",
    "submit_run",
    "user_settings",
]

logger = logging.getLogger(__name__)

Event = dict[str, Any]


def build_run_config(
    spec: TaskSpec, settings: dict[str, Any], *, tracking_uri: str, expected_nodes: int, lock: Path, root: Path
) -> dict[str, Any]:
    """The run config `flwr run` submits: the user's settings, checked, plus what the lab fills in
    (the spec's text, where to record, the environment lock, the code version).

    Raises LabError for an unknown or invalid setting, before any process starts.
    """
    unknown = sorted(set(settings) - user_settings())
    if unknown:
        raise LabError(f"unknown run setting {unknown[0]!r}; known: {sorted(user_settings())!r}")
    run_config = {
        **settings,
        "task-spec": spec.text,
        "tracking-uri": tracking_uri,
        "expected-nodes": expected_nodes,
        "environment-lock": lock.read_text(encoding="utf-8") if lock.is_file() else "",
        "code-version": code_version(root),
    }
    RunSettings.from_run_config(run_config)
    return run_config


def user_settings() -> set[str]:
    """Settings a user may set (the lab fills in the spec, the lock and where to record)."""
    filled_in = {"task-spec", "tracking-uri", "events-file", "environment-lock", "expected-nodes", "code-version"}
    return {f.name.replace("_", "-") for f in fields(RunSettings)} - filled_in


def code_version(root: Path) -> str:
    """The checkout's git commit, with ``+dirty`` when tracked files differ ("unknown" outside git)."""

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: its last event, and where its files are."""

    final: Event
    run_dir: Path
    seconds: float


def _app_files(app_dir: Path) -> dict[str, Path]:
    """The files under ``app_dir`` as Flower's ``collect_files`` lists them, without descending
    into folders whose every file Flower would leave out (its built-in excludes such as
    ``.venv/``, and the app's .gitignore)."""
    from flwr.cli.utils import build_pathspec, load_gitignore_patterns
    from flwr.common.constant import FAB_EXCLUDE_PATTERNS

    gitignore = app_dir / ".gitignore"
    patterns = list(FAB_EXCLUDE_PATTERNS) + (load_gitignore_patterns(gitignore) if gitignore.is_file() else [])
    excluded = build_pathspec(patterns)
    root = app_dir.resolve()
    files: dict[str, Path] = {}
    for folder, subfolders, names in os.walk(root, followlinks=False):
        here = Path(folder).relative_to(root)
        # A folder is skipped when a file of any name in it would be excluded.
        subfolders[:] = [d for d in subfolders if not excluded.match_file((here / d / "__any_file__").as_posix())]
        for name in names:
            path = Path(folder) / name
            if not path.is_symlink():
                files[(here / name).as_posix()] = path
    return files


def stage_app(app_dir: Path, dest: Path) -> Path:
    """Copy exactly the files of the FAB `flwr run` would build from ``app_dir`` into ``dest``.

    Flower looks at every file under the app's folder before it filters them, and this project's
    folder holds its virtual environment (some 66,000 files, 5 to 15 s a build). The files are
    chosen here by Flower's own rules (``build_fab_from_files``: its built-in patterns, the app's
    ``fab-include``/``fab-exclude`` and .gitignore), so the FAB built from ``dest`` has the same
    files, and the same hash, as one built from ``app_dir``.
    """
    from flwr.cli.build import build_fab_from_files

    fab, _ = build_fab_from_files(_app_files(app_dir))
    if dest.exists():
        shutil.rmtree(dest)
    for name in zipfile.ZipFile(io.BytesIO(fab)).namelist():
        if name.startswith(".info/"):
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(app_dir / name, target)
    shutil.copy2(app_dir / "pyproject.toml", dest / "pyproject.toml")
    return dest


def stop_process(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Stop ``proc`` if it still runs: SIGTERM, then SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def submit_run(
    federation: LocalFederation,
    *,
    app_dir: Path,
    run_config: dict[str, Any],
    on_event: Callable[[Event], None] = lambda _: None,
    timeout: float = 3600.0,
) -> RunOutcome:
    """Submit the app with ``run_config`` and block until the coordinator reports the end.

    Raises
    ------
    RunFailedError
        If the ServerApp reports a failure, or `flwr run` ends without a final event.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = federation.workspace / "runs" / stamp
    suffix = 1
    while run_dir.exists():
        run_dir = federation.workspace / "runs" / f"{stamp}-{suffix}"
        suffix += 1
    run_dir.mkdir(parents=True)
    events_path = run_dir / "events.jsonl"
    config_path = run_dir / "run-config.toml"
    config_path.write_text(tomli_w.dumps({**run_config, "events-file": str(events_path)}), encoding="utf-8")
    log_path = run_dir / "flwr-run.log"
    app_dir = stage_app(app_dir, run_dir / "app")
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [executable("flwr"), "run", str(app_dir), "lab", "--run-config", str(config_path), "--stream"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=federation.env(),
            cwd=federation.workspace,
            start_new_session=True,
        )
        try:
            final = follow_events(events_path, proc, on_event, timeout=timeout, log_path=log_path)
        finally:
            stop_process(proc, grace=10)
    outcome = RunOutcome(final=final, run_dir=run_dir, seconds=time.monotonic() - started)
    if final["event"] == "failed":
        raise RunFailedError(f"the run failed: {final.get('reason')} (logs in {str(run_dir)!r})")
    return outcome


def follow_events(
    path: Path,
    proc: subprocess.Popen[bytes],
    on_event: Callable[[Event], None],
    *,
    timeout: float,
    log_path: Path,
) -> Event:
    """Read events as the ServerApp appends them until ``done`` or ``failed``."""
    deadline = time.monotonic() + timeout
    offset = 0
    exited_at: float | None = None
    while time.monotonic() < deadline:
        if path.exists():
            with path.open("r", encoding="utf-8") as fh:
                fh.seek(offset)
                for line in fh:
                    if not line.endswith("\n"):
                        break  # a line still being written
                    offset += len(line.encode("utf-8"))
                    event = json.loads(line)
                    on_event(event)
                    if event["event"] in ("done", "failed"):
                        return event  # type: ignore[no-any-return]
        if proc.poll() is not None:
            exited_at = exited_at or time.monotonic()
            if time.monotonic() - exited_at > 5:  # give the last events time to land
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
                raise RunFailedError(
                    f"`flwr run` ended (status {proc.returncode}) before the run reported "
                    f"its end; its output ends with:\n{tail}"
                )
        time.sleep(0.25)
    raise RunFailedError(f"the run did not finish within {timeout:.0f} s; see {str(log_path)!r}")
