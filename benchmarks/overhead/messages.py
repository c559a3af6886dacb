"""Reading the federation's logs: their plain text, and the messages each SuperNode received.

A SuperNode logs every message it pulls from the SuperLink (``Receiving: TYPE message``) and every reply it
pushes (``Sending: TYPE message``), after a ``[RUN ID]`` or ``[RUN ID, ROUND N]`` line, whatever its isolation:
Flower's loop in ``flwr.supernode.start_client_internal`` logs them before it hands the message to a
``flwr-clientapp`` process (``--isolation subprocess``) or to the lab's warm worker (``--isolation process``).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

__all__ = ["ANSI", "RUN_LINE", "all_nodes", "audited_messages", "message_line", "plain_text", "received_messages"]

ANSI = re.compile(r"\x1b\[[0-9;]*m")
RUN_LINE = re.compile(r"\[RUN (\d+)")
_MESSAGE = re.compile(r"(Receiving|Sending): (\S+) message")


def plain_text(path: Path) -> str:
    """A log's text without its terminal colours."""
    return ANSI.sub("", path.read_text(encoding="utf-8", errors="replace"))


def message_line(line: str) -> tuple[str, str] | None:
    """("Receiving" or "Sending", the message type) of a SuperNode's log line about a message; else None."""
    found = _MESSAGE.search(line)
    return (found.group(1), found.group(2)) if found else None


def received_messages(logs: Path) -> dict[str, dict[str, Counter[str]]]:
    """Messages each SuperNode received, by run and message type, from its log (``Receiving: TYPE message``)."""
    runs: dict[str, dict[str, Counter[str]]] = defaultdict(dict)
    for log in sorted(logs.glob("node-*.log")):
        if log.stem.endswith("-worker"):  # a warm worker's own log (lab.runtime.node)
            continue
        node = log.stem.removeprefix("node-")
        run = "?"
        for line in plain_text(log).splitlines():
            if match := RUN_LINE.search(line):
                run = match.group(1)
            elif (found := message_line(line)) and found[0] == "Receiving":
                runs[run].setdefault(node, Counter())[found[1]] += 1
    return dict(runs)


def audited_messages(homes: Path) -> dict[str, dict[str, int]]:
    """What the nodes' audit logs (``NAME/audit.jsonl`` under ``homes``, one entry per message the node's gate
    or worker answered) hold, by message type and by decision: a cross-check of the SuperNodes' logs."""
    by_type: Counter[str] = Counter()
    by_decision: Counter[str] = Counter()
    for audit in sorted(homes.glob("*/audit.jsonl")):
        for line in audit.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            by_type[str(entry.get("message_type"))] += 1
            by_decision[str(entry.get("decision"))] += 1
    return {"by_type": dict(sorted(by_type.items())), "by_decision": dict(sorted(by_decision.items()))}


def all_nodes(per_node: dict[str, Counter[str]]) -> Counter[str]:
    """The messages of every node together, by message type."""
    total: Counter[str] = Counter()
    for counts in per_node.values():
        total.update(counts)
    return total
