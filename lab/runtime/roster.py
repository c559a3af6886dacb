"""The coordinator's roster, two files in its home.

``admitted.json``: each admitted organisation's node, by name (its node id, public key, when it
was admitted, its tracking account); written by `lab coordinator admit`, read by the ServerApp to
hold every node to its admitted name.

``seen.json``: what each admitted node last reported in a run (its organisation, environment
fingerprint, the run and when); written by the ServerApp once the nodes have prepared, read by
`lab coordinator nodes`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["ADMITTED_FILE", "SEEN_FILE", "admitted", "names_by_id", "note_seen", "seen", "write_admitted"]

ADMITTED_FILE = "admitted.json"
SEEN_FILE = "seen.json"


def _read(path: Path) -> dict[str, dict[str, Any]]:
    return dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else {}


def _write(path: Path, content: dict[str, dict[str, Any]]) -> None:
    """Whole or not at all: a reader never sees half a file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(content, indent=2, sort_keys=True), encoding="utf-8")
    partial.replace(path)


def admitted(folder: Path) -> dict[str, dict[str, Any]]:
    """Each admitted organisation's entry, by node name."""
    return _read(folder / ADMITTED_FILE)


def write_admitted(folder: Path, entries: dict[str, dict[str, Any]]) -> None:
    _write(folder / ADMITTED_FILE, entries)


def names_by_id(folder: Path) -> dict[int, str]:
    """The admitted names, by the node id the SuperLink knows each node by."""
    return {int(entry["node_id"]): name for name, entry in admitted(folder).items()}


def seen(folder: Path) -> dict[str, dict[str, Any]]:
    """What each node last reported, by node name."""
    return _read(folder / SEEN_FILE)


def note_seen(folder: Path, reports: dict[str, dict[str, Any]], run: str) -> None:
    """Record ``reports`` (by node name) as the nodes' latest, from ``run``."""
    at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    latest = seen(folder)
    latest.update({name: {**report, "run": run, "at": at} for name, report in reports.items()})
    _write(folder / SEEN_FILE, latest)
