"""Reading the federation's logs: their plain text, and the messages each SuperNode received."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

__all__ = ["ANSI", "all_nodes", "plain_text", "received_messages"]

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain_text(path: Path) -> str:
    """A log's text without its terminal colours."""
    return ANSI.sub("", path.read_text(encoding="utf-8", errors="replace"))


def received_messages(logs: Path) -> dict[str, dict[str, Counter[str]]]:
    """Messages each SuperNode received, by run and message type, from its log (``Receiving: TYPE message``)."""
    runs: dict[str, dict[str, Counter[str]]] = defaultdict(dict)
    for log in sorted(logs.glob("node-*.log")):
        node = log.stem.removeprefix("node-")
        run = "?"
        for line in plain_text(log).splitlines():
            if match := re.search(r"\[RUN (\d+)", line):
                run = match.group(1)
            elif match := re.search(r"Receiving: (\S+) message", line):
                runs[run].setdefault(node, Counter())[match.group(1)] += 1
    return dict(runs)


def all_nodes(per_node: dict[str, Counter[str]]) -> Counter[str]:
    """The messages of every node together, by message type."""
    total: Counter[str] = Counter()
    for counts in per_node.values():
        total.update(counts)
    return total
