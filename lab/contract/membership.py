"""The coordinator's record of a training run's members: each node that accepted the task
(``Member``: who it is, its rows, fingerprints and scores as the run goes), which of them keep their
own figures, and the check of every reply against the run (``Guard``: the spec, the environment
lock, the name each node's key was admitted under). Built by the preparation query
(lab.queries.prepare), read by the coordinator's training, SecAgg+ and recorder (federation/).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lab.contract.messages import NodeReport
from lab.core.environment import Environment

__all__ = ["HELD_BACK", "NO_AGREEMENT", "UNREPORTED_AGREEMENT", "Guard", "Member", "hidden_names"]

#: What the coordinator records for a node that holds no agreement, or did not say (an older node).
NO_AGREEMENT = {"agreement": "none: the node holds no data-use agreement, so nothing was checked against one"}
UNREPORTED_AGREEMENT = {"agreement": "not reported by the node"}

#: What the run records in place of a node's own figures where its agreement keeps them.
HELD_BACK = "held back: the node's agreement keeps its own figures (allow.node-figures = false)"


@dataclass
class Member:
    """A node that accepted the task."""

    node_id: int
    name: str
    organisation: str
    train_rows: int
    test_rows: int
    baseline: dict[str, float]
    baseline_noise: dict[str, float] = field(default_factory=dict)  # each baseline score's noise (its sd)
    env_fingerprint: str = ""
    data_fingerprint: str = ""
    env_pins: list[str] | None = None
    warning: str | None = None
    final: dict[str, float] = field(default_factory=dict)
    final_noise: dict[str, float] = field(default_factory=dict)  # each final score's noise (its sd)
    epsilon: float | None = None  # differential privacy spent at the node by this run so far
    privacy: dict[str, float] = field(default_factory=dict)  # the node's DP plan (noise, planned epsilon)
    suppressed: str = ""  # what the node withheld under its minimum count
    agreement: dict[str, Any] = field(default_factory=dict)  # the clauses the node checked this run against

    @property
    def shows_figures(self) -> bool:
        """Whether the run may record this node's own figures (its row counts, scores, baseline,
        loss, epsilon and contribution) for the federation to read: its agreement's
        ``allow.node-figures``, or no agreement at all (its operator's choice, in every audit entry)."""
        return self.agreement == NO_AGREEMENT or self.agreement.get("allow.node-figures") is True


def hidden_names(members: Iterable[Member]) -> frozenset[str]:
    """The members whose agreement keeps their own figures to themselves."""
    return frozenset(m.name for m in members if not m.shows_figures)


@dataclass(frozen=True)
class Guard:
    """The coordinator's check of each reply: the spec it used and the environment it ran in.

    Under ``strict`` a node whose environment differs from the lock is not aggregated; under
    ``warn`` it is, and the run is flagged.
    """

    lock: Environment | None
    policy: str
    spec_sha256: str
    admitted: dict[int, str] = field(default_factory=dict)  # node id -> the name it was admitted under

    def screen(
        self, report: NodeReport, pins: list[str] | None = None, *, node_id: int | None = None
    ) -> tuple[str | None, str | None]:
        """(reason to refuse, warning) for a reply's node report (from ``node_id``)."""
        if self.admitted and node_id is not None and self.admitted.get(node_id) != report.name:
            admitted = self.admitted.get(node_id)
            who = f"was admitted as {admitted!r}" if admitted else "was not admitted"
            return f"it claims the name {report.name!r} but its key {who}", None
        if report.spec_sha256 != self.spec_sha256:
            return "it used a different task spec than the run's", None
        if self.lock is None or report.env_fingerprint == self.lock.fingerprint:
            return None, None
        if pins is not None:
            here = Environment.from_pins(report.env_python, report.env_platform, pins)
            detail = here.diff(self.lock).summary()
        else:
            detail = f"fingerprint {report.env_fingerprint[:12]}, lock {self.lock.fingerprint[:12]}"
        message = f"its environment differs from the lock ({detail})"
        return (message, None) if self.policy == "strict" else (None, message)
