"""The app a coordinator submits: exactly the files of its FAB, its hash, and the code's version."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from lab.errors import UsageError
from lab.runtime.environ import project_root

__all__ = ["app_hash", "build_fab", "code_version", "read_app", "stage_app"]


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


def app_hash(app_dir: Path | None = None) -> str:
    """sha256 of the FAB `flwr run` builds from ``app_dir``: the hash a node's allow-list names."""
    return hashlib.sha256(build_fab(app_dir)).hexdigest()


def build_fab(app_dir: Path | None = None) -> bytes:
    """The FAB `flwr run` builds from ``app_dir`` (default: this project), byte for byte."""
    from flwr.cli.build import build_fab_from_disk

    with tempfile.TemporaryDirectory(prefix="lab-app-") as staging:
        return build_fab_from_disk(stage_app(app_dir or project_root(), Path(staging) / "app"))


def read_app(path: Path | None) -> tuple[bytes, str]:
    """The FAB at ``path`` (a .fab file), or built from the app folder ``path`` (default: this
    project); with what to call it in messages."""
    if path is None:
        return build_fab(), "this project's app"
    if path.is_dir():
        if not (path / "pyproject.toml").is_file():
            raise UsageError(f"{str(path)!r} has no pyproject.toml: give a Flower app's folder or its .fab file")
        try:
            return build_fab(path), str(path)
        except ValueError as exc:  # Flower's word on the app's pyproject.toml (a TOML error is one too)
            raise UsageError(f"{str(path / 'pyproject.toml')!r} is not a Flower app's: {exc}") from None
    try:
        return path.read_bytes(), str(path)
    except FileNotFoundError:
        raise UsageError(f"{str(path)!r} does not exist; give a Flower app's .fab file or its folder") from None
