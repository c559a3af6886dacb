"""A node's audit log: append-only JSON lines, each holding the keyed hash of the one before.

Every entry's hash is an HMAC-SHA256 with the node's own secret (lab.node.site): whoever can write
the file but does not hold the secret cannot write a chain that verifies, and a chain cannot be
rebuilt after an entry was edited. A log kept without a secret (a node with no home) is chained
with the empty key, which anyone can recompute.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["GENESIS", "AuditHead", "AuditLog", "Problem"]

GENESIS = "0" * 64


def _digest(entry: dict[str, Any], key: bytes) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hmac.new(key, json.dumps(body, sort_keys=True, separators=(",", ":")).encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Problem:
    """Where the chain breaks, and how."""

    line: int
    reason: str


@dataclass(frozen=True)
class AuditHead:
    """How long a log was and the hash of its last entry at some moment: every reply a node sends
    carries its head, and the coordinator records it with the run, so a log later cut at its end or
    rolled back no longer reaches a head that was recorded."""

    count: int
    hash: str


class AuditLog:
    """Every decision a node takes on a message, what the message asked and what left the node,
    chained by HMAC-SHA256 with ``key`` (the node's secret).

    Editing an entry breaks its own hash; removing or reordering entries breaks the link to
    the previous hash. Cutting entries off the end leaves a valid shorter chain: ``against``
    finds that from the heads a run recorded.
    """

    def __init__(self, path: str | Path, key: bytes = b"") -> None:
        self.path = Path(path)
        self.key = key

    def append(self, **fields: Any) -> AuditHead:
        """Add one entry (time and chain fields are filled in); safe across processes. Returns the
        log's new head."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            lines = [line for line in fh.read().splitlines() if line.strip()]  # only the last is parsed
            last = json.loads(lines[-1]).get("hash", GENESIS) if lines else GENESIS
            entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields, "prev": last}
            entry["hash"] = _digest(entry, self.key)
            fh.seek(0, 2)
            fh.write((json.dumps(entry, sort_keys=True) + "\n").encode("utf-8"))
            fh.flush()
            count = len(lines)
        return AuditHead(count + 1, entry["hash"])

    def entries(self) -> list[dict[str, Any]]:
        """All entries, oldest first (an unreadable line is returned as ``{"unreadable": text}``)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"unreadable": line})
        return out

    def verify(self) -> list[Problem]:
        """Every break in the chain: an edited entry, or one removed or moved."""
        problems = []
        previous = GENESIS
        for number, entry in enumerate(self.entries(), start=1):
            if "unreadable" in entry:
                problems.append(Problem(number, "not valid JSON: the line was edited"))
                previous = ""
                continue
            if entry.get("hash") != _digest(entry, self.key):
                problems.append(
                    Problem(number, "its content does not match its keyed hash: the entry was edited (or written "
                            "without the node's secret)")
                )  # fmt: skip
            if entry.get("prev") != previous:
                problems.append(
                    Problem(
                        number,
                        "it does not follow the entry before it: an entry was removed or the entries were reordered",
                    )
                )
            previous = str(entry.get("hash", ""))
        return problems

    def against(self, heads: list[AuditHead]) -> list[Problem]:
        """Where the log no longer reaches a head recorded elsewhere (by a run's coordinator): it was
        cut at its end, or rolled back and written again."""
        entries = self.entries()
        problems = []
        for head in sorted(set(heads), key=lambda h: h.count):
            if head.count > len(entries):
                problems.append(
                    Problem(
                        len(entries) + 1,
                        f"the log holds {len(entries)} entries, but it held {head.count} when it sent the head "
                        f"{head.hash[:12]}… that was recorded: entries were cut off its end",
                    )
                )
            elif entries[head.count - 1].get("hash") != head.hash:
                problems.append(
                    Problem(
                        head.count,
                        f"entry {head.count} is not the one recorded (head {head.hash[:12]}…): the log was rolled "
                        "back and written again",
                    )
                )
        return problems
