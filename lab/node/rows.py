"""A node's rows for one run: read, checked against the spec, split and fingerprinted once, then
kept in the node's process (the warm worker) for the run's later messages.

Reading a table of a million rows takes tens of seconds; a run sends a node one message a round,
so each message reading it again would cost more than the training itself. The rows are kept
for the run that read them: another run, a file changed on disk (its size, time or inode), or
another spec reads them again. Only the latest are kept, so a node's memory holds its table once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from lab.core.sources import is_sql_url
from lab.core.spec import TaskSpec
from lab.core.training import NodeData, load_node_data
from lab.node.site import NodeSite

__all__ = ["NodeRows", "rows_of"]

logger = logging.getLogger(__name__)

#: How many runs' rows a node process keeps (a node answers one message at a time).
_KEPT = 1


@dataclass(frozen=True)
class NodeRows:
    """A node's rows for a run, and the fingerprint of its training rows under the node's secret."""

    data: NodeData
    fingerprint: str


_kept: OrderedDict[tuple[object, ...], NodeRows] = OrderedDict()
_lock = threading.Lock()


def rows_of(site: NodeSite, spec: TaskSpec, run_id: int) -> NodeRows:
    """The node's rows as ``spec`` reads them in run ``run_id``: from the node's process when this
    run read them before and the table is unchanged, else from the table (which may refuse)."""
    path = site.table_path()
    key = (site.name, path, spec.sha256, run_id, _version(path), site.secret)
    with _lock:
        kept = _kept.get(key)
        if kept is not None:
            _kept.move_to_end(key)
            return kept
    started = time.perf_counter()
    data = load_node_data(site.name, path, spec)
    rows = NodeRows(data, data.train.fingerprint(site.secret))
    logger.info(
        "node %s: read %d rows for run %s in %.1f s (kept for the run's next messages)",
        site.name,
        len(data.train) + len(data.test),
        run_id,
        time.perf_counter() - started,
    )
    with _lock:
        _kept[key] = rows
        while len(_kept) > _KEPT:
            _kept.popitem(last=False)
    return rows


def _version(path: str) -> tuple[int, int, int] | None:
    """A file's size, modification time and inode (None for a database, read again each run)."""
    if not path or is_sql_url(path):
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None  # reading it says why
    return (stat.st_size, stat.st_mtime_ns, stat.st_ino)
