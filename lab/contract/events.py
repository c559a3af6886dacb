"""Progress events: how the coordinator tells whoever launched a run what happens, through Flower.

The ServerApp writes each event as one line on its standard output (``emit``), which Flower
mirrors to the SuperLink and streams to ``flwr run --stream`` (and ``flwr log``), on the
coordinator's host or from an analyst's machine alike; the runtime reads them back from that
stream (``parse``). Each kind is a type here, and ``Event`` their union; ``describe`` is the one
way an event is put into words, which both front ends show.

Kinds: ``Started`` (rounds, strategy, the MLflow and Flower runs), ``Joined``, ``Warned`` and
``Refused`` (node, reason), ``Trained`` and ``Evaluated`` (round, answered, asked, mean, errors),
``Valuing`` (the nodes score the coalitions' models), and the last one, ``Done`` (what the run
reports, lab.contract.results) or ``Failed`` (reason).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

__all__ = [
    "PREFIX",
    "Done",
    "Evaluated",
    "Event",
    "Failed",
    "Joined",
    "Refused",
    "Started",
    "Trained",
    "Valuing",
    "Warned",
    "clean",
    "describe",
    "emit",
    "parse",
]

#: Marks an event line among the ServerApp's other output.
PREFIX = "lab-event "


@dataclass(frozen=True, kw_only=True)
class _Event:
    kind: ClassVar[str]
    time: float = field(default_factory=time.time)  # when the coordinator sent it (its clock)

    def to_json(self) -> dict[str, Any]:
        return {"event": self.kind, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def of(cls, value: dict[str, Any]) -> Any:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in known})


@dataclass(frozen=True, kw_only=True)
class Started(_Event):
    kind: ClassVar[str] = "started"
    rounds: int = 0
    strategy: str = ""
    mlflow_run_id: str | None = None
    flwr_run_id: int | None = None


@dataclass(frozen=True, kw_only=True)
class Joined(_Event):
    """A node took part; its row counts are None where its agreement keeps its figures."""

    kind: ClassVar[str] = "joined"
    node: str
    organisation: str = ""
    train_rows: int | None = None
    test_rows: int | None = None


@dataclass(frozen=True, kw_only=True)
class Warned(_Event):
    kind: ClassVar[str] = "warning"
    reason: str
    node: str | None = None


@dataclass(frozen=True, kw_only=True)
class Refused(_Event):
    kind: ClassVar[str] = "refused"
    reason: str
    node: str | None = None


@dataclass(frozen=True, kw_only=True)
class _Round(_Event):
    """A round's replies: how many of the nodes asked answered, their mean scores, and why those
    left out of it were."""

    round: int
    answered: int = 0
    asked: int = 0
    mean: dict[str, float | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Trained(_Round):
    """A training round: the scores are of the model the nodes received (the previous round's),
    with the pooled training loss."""

    kind: ClassVar[str] = "train"
    train_loss: float | None = None


@dataclass(frozen=True, kw_only=True)
class Evaluated(_Round):
    """The final model's scores at the nodes."""

    kind: ClassVar[str] = "evaluate"


@dataclass(frozen=True, kw_only=True)
class Valuing(_Event):
    kind: ClassVar[str] = "valuing"
    nodes: int
    metric: str = ""


@dataclass(frozen=True, kw_only=True)
class Done(_Event):
    """The run's end: what it reports (``to_json`` of a lab.contract.results type)."""

    kind: ClassVar[str] = "done"
    reported: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"event": self.kind, "time": self.time, **self.reported}

    @classmethod
    def of(cls, value: dict[str, Any]) -> Done:
        return cls(time=value.get("time", 0.0), reported={k: v for k, v in value.items() if k not in ("event", "time")})


@dataclass(frozen=True, kw_only=True)
class Failed(_Event):
    kind: ClassVar[str] = "failed"
    reason: str
    traceback: str | None = None


Event = Started | Joined | Warned | Refused | Trained | Evaluated | Valuing | Done | Failed

_KINDS: dict[str, Any] = {
    k.kind: k for k in (Started, Joined, Warned, Refused, Trained, Evaluated, Valuing, Done, Failed)
}


def emit(event: Event) -> None:
    """Write one event line (one write, so it reaches the stream whole)."""
    line = json.dumps(clean(event.to_json()), default=str, allow_nan=False)
    sys.stdout.write(PREFIX + line + "\n")
    sys.stdout.flush()


def parse(line: str) -> Event | None:
    """The event on an output line, or None for any other line (or an event of no kind known here)."""
    start = line.find(PREFIX)
    if start < 0:
        return None
    try:
        value = json.loads(line[start + len(PREFIX) :])
    except json.JSONDecodeError:
        return None
    kind = _KINDS.get(str(value.get("event"))) if isinstance(value, dict) else None
    if kind is None:
        return None
    try:
        event: Event = kind.of(value)
    except TypeError:  # a line that lacks what its kind needs
        return None
    return event


def describe(event: Event) -> str:
    """The event in words, as the command line and the workbench show it ("" for the kinds they
    show as progress instead: the rounds, the start and the end)."""
    if isinstance(event, Joined):
        rows = (
            "its row counts held back (its agreement keeps its figures)"
            if event.train_rows is None
            else f"{event.train_rows} train / {event.test_rows} test rows"
        )
        return f"joined {event.node} ({event.organisation}): {rows}"
    if isinstance(event, Refused):
        return f"refused {event.reason}"
    if isinstance(event, Warned):
        return f"warning {event.reason}"
    if isinstance(event, Valuing):
        return (
            f"valuing each of {event.nodes} nodes' contribution: the nodes score every coalition's model "
            f"({event.metric})"
        )
    return ""


def clean(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value
