"""A node's rows for one run: read, checked against the spec, split and fingerprinted once, then
kept in the node's process (the warm worker) for the run's later messages.

Reading a table of a million rows takes tens of seconds; a run sends a node one message a round,
so each message reading it again would cost more than the training itself. The rows are kept
for the run that read them: another run, a file changed on disk (its size, time or inode), or
another spec reads them again. Each node keeps only its latest, so its memory holds its table once
(a process that answers for several nodes, as the in-process runtime's, keeps one for each).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from lab.core.sources import TableSource
from lab.core.spec import TaskSpec
from lab.core.training import NodeData, load_node_data
from lab.node.site import NodeSite

__all__ = ["NodeRows", "rows_of"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeRows:
    """A node's rows for a run, and the fingerprint of its training rows under the node's secret."""

    data: NodeData
    fingerprint: str


#: By node (its name and secret): what its latest rows were read for, and the rows.
_kept: dict[tuple[str, bytes], tuple[tuple[object, ...], NodeRows]] = {}
_lock = threading.Lock()


def rows_of(site: NodeSite, spec: TaskSpec, run_id: int) -> NodeRows:
    """The node's rows as ``spec`` reads them in run ``run_id``: from the node's process when this
    run read them before and the table is unchanged, else from the table (which may refuse)."""
    path = site.table_path()
    node, key = (site.name, site.secret), (path, spec.sha256, run_id, _version(path))
    with _lock:
        kept = _kept.get(node)
        if kept is not None and kept[0] == key:
            return kept[1]
        _kept.pop(node, None)  # the node's earlier rows go before the new ones are read
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
        _kept[node] = (key, rows)
    return rows


def _version(path: str) -> tuple[int, int, int] | None:
    """A file's size, modification time and inode (None for a database, read again each run)."""
    if not path or TableSource.of(path).is_sql:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None  # reading it says why
    return (stat.st_size, stat.st_mtime_ns, stat.st_ino)
