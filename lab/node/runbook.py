"""A node's run book: every training run it prepared, under a key of its own, and what it did for it.

The coordinator names a run by its Flower run id, which a coordinator that owns its SuperLink
chooses as it likes. So each preparation the node accepts opens a booking under a fresh key the
node draws itself, with the plan it checked (lab.contract.plan), the noise of its scores and its
DP plan; every later message of the run is held to its booking: the same spec and local
optimisation, no round beyond the plan or trained twice, no more models scored than planned, the
same scaler throughout. A run id prepared again opens a new booking, and everything composes:
what the old one spent stays spent. The book is JSON lines in the node's home (``runs.jsonl``),
appended under a lock, never rewritten.
"""

from __future__ import annotations

import fcntl
import json
import math
import secrets
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab.contract.plan import RunPlan
from lab.core.privacy import DPPlan, DPSettings
from lab.errors import DataError, Refusal

__all__ = ["BOOK_FILE", "DAY", "Booking", "RunBook"]

#: The run book, in the node's home.
BOOK_FILE = "runs.jsonl"
#: The window of limits.max-runs-per-day, in seconds.
DAY = 24 * 3600.0


@dataclass(frozen=True)
class Booking:
    """One preparation the node accepted: the plan it holds the run to."""

    key: str
    run_id: int
    time: float
    task: str
    spec_sha256: str
    plan: RunPlan
    scales: dict[str, float] = field(default_factory=dict)  # noise of each kind of score release
    dp: DPSettings | None = None
    dp_plan: DPPlan | None = None
    delta: float = 1e-5  # the delta the scores' spending is booked at

    @classmethod
    def new(cls, run_id: int, task: str, spec_sha256: str, plan: RunPlan, **booked: Any) -> Booking:
        """A booking under a fresh key the node draws itself."""
        return cls(secrets.token_hex(8), run_id, time.time(), task, spec_sha256, plan, **booked)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Booking:
        return cls(
            key=str(raw["key"]),
            run_id=int(raw["run_id"]),
            time=float(raw["time"]),
            task=str(raw["task"]),
            spec_sha256=str(raw["spec_sha256"]),
            plan=RunPlan.from_dict(raw["plan"]),
            scales={k: float(v) for k, v in raw.get("scales", {}).items()},
            dp=DPSettings(**raw["dp"]) if raw.get("dp") else None,
            dp_plan=DPPlan.from_dict(raw["dp_plan"]) if raw.get("dp_plan") else None,
            delta=float(raw.get("delta", 1e-5)),
        )

    def hold(
        self,
        *,
        spec_sha256: str,
        local_steps: int,
        batch_size: int,
        learning_rate: float,
        dp: DPSettings | None,
    ) -> None:
        """Refuse a train message that asks what the plan did not: another spec, local optimisation
        or differential privacy (the node booked its noise and its epsilon for the plan's)."""
        plan = self.plan
        asked = {"spec": spec_sha256, "local steps": local_steps, "minibatch": batch_size}
        planned = {"spec": self.spec_sha256, "local steps": plan.local_steps, "minibatch": plan.batch_size}
        for what, value in asked.items():
            if value != planned[what]:
                raise Refusal(
                    "plan", f"the message asks {what} {value!r}; the run's preparation planned {planned[what]!r}"
                )
        if not math.isclose(learning_rate, plan.learning_rate, rel_tol=1e-9):
            raise Refusal(
                "plan", f"the message asks learning rate {learning_rate:g}; the run planned {plan.learning_rate:g}"
            )
        if dp != self.dp:
            raise Refusal("plan", "the message's differential privacy settings are not those the run planned")


class RunBook:
    """A node's bookings and what it did for each: rounds trained, models scored, the scaler."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _events(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        events = []
        for lineno, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    raise DataError(f"run book {str(self.path)!r}, line {lineno}: not JSON; restore it") from None
        return events

    def _append(self, event: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(json.dumps({"at": time.time(), **event}, sort_keys=True) + "\n")

    def open(self, booking: Booking) -> None:
        """Book a preparation (from now on the run's messages are held to it)."""
        self._append({"event": "prepared", "booking": booking.to_dict()})

    def prepared_since(self, since: float) -> int:
        """How many preparations the node booked since ``since`` (a time in seconds)."""
        return sum(1 for e in self._events() if e["event"] == "prepared" and float(e["booking"]["time"]) >= since)

    def booking(self, run_id: int) -> Booking:
        """The run's latest booking; a refusal when the node never prepared it."""
        found = [e["booking"] for e in self._events() if e["event"] == "prepared" and e["booking"]["run_id"] == run_id]
        if not found:
            raise Refusal(
                "plan", f"run {run_id} was not prepared at this node: a run's messages follow its preparation"
            )
        return Booking.from_dict(found[-1])

    def _of(self, key: str, event: str) -> list[dict[str, Any]]:
        return [e for e in self._events() if e["event"] == event and e["key"] == key]

    def trained(self, key: str) -> list[int]:
        """The rounds trained for booking ``key``."""
        return [int(e["round"]) for e in self._of(key, "trained")]

    def note_trained(self, key: str, server_round: int) -> None:
        self._append({"event": "trained", "key": key, "round": server_round})

    def scored(self, key: str) -> Counter[str]:
        """How many models booking ``key`` has scored, by kind (round, final, candidate, baseline)."""
        counts: Counter[str] = Counter()
        for e in self._of(key, "scored"):
            counts[str(e["kind"])] += int(e["models"])
        return counts

    def note_scored(self, key: str, kind: str, models: int) -> None:
        self._append({"event": "scored", "key": key, "kind": kind, "models": models})

    def pin_scaler(self, key: str, scaler_sha256: str) -> None:
        """Hold the run to the first scaler it sent: a message with another is refused."""
        pinned = self._of(key, "scaler")
        if not pinned:
            self._append({"event": "scaler", "key": key, "sha256": scaler_sha256})
        elif pinned[0]["sha256"] != scaler_sha256:
            raise Refusal(
                "plan",
                "the message's scaler is not the one this run's first message carried: a run standardises the "
                "nodes' rows with one scaler",
            )
