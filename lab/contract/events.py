"""Progress events: how the coordinator tells whoever launched a run what happens, through Flower.

The ServerApp writes each event as one line on its standard output, which Flower mirrors to the
SuperLink and streams to ``flwr run --stream`` (and ``flwr log``), on the coordinator's host or
from an analyst's machine alike. The runtime reads them back from that stream.

Kinds: ``started`` (rounds, strategy, mlflow_run_id), ``joined``, ``warning``, ``refused``
(node, reason), ``train`` and ``evaluate`` (round, answered, asked, mean, errors), ``valuing``
(nodes, metric: the nodes score the coalitions' models), and the last one, ``done`` (the run's
summary) or ``failed`` (reason).
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any

__all__ = ["PREFIX", "clean", "emit", "joined_rows", "parse"]

#: Marks an event line among the ServerApp's other output.
PREFIX = "lab-event "


def emit(event: str, **fields: Any) -> None:
    """Write one event line (one write, so it reaches the stream whole)."""
    line = json.dumps(clean({"event": event, "time": time.time(), **fields}), default=_jsonable, allow_nan=False)
    sys.stdout.write(PREFIX + line + "\n")
    sys.stdout.flush()


def parse(line: str) -> dict[str, Any] | None:
    """The event on an output line, or None for any other line."""
    start = line.find(PREFIX)
    if start < 0:
        return None
    try:
        event = json.loads(line[start + len(PREFIX) :])
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def joined_rows(event: dict[str, Any]) -> str:
    """A ``joined`` event's row counts as words (a node whose agreement keeps its figures sends none)."""
    if event.get("train_rows") is None:
        return "its row counts held back (its agreement keeps its figures)"
    return f"{event['train_rows']} train / {event['test_rows']} test rows"


def _jsonable(value: Any) -> Any:
    return str(value)


def clean(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value
