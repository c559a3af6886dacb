"""How a node holds a training run to what its agreement lets a message ask.

At the run's preparation the node checks the plan the coordinator declares (lab.contract.plan)
against its limits, plans its differential privacy and its scores' noise from its own rows and
clauses, checks its epsilon budget, and books all of it (lab.node.runbook). Every later message of
the run is held to that booking: a train message must ask the planned local optimisation, for a
round within the plan not trained before, with the run's one scaler; each model it scores must be
within the plan's count, and is scored with the booked noise, its cost written to the ledger.

A node started without an agreement on purpose (``--no-agreement``) books nothing and is held to
nothing: its scores are exact.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from lab.contract.messages import Instructions
from lab.contract.plan import RunPlan
from lab.core.model import build_model
from lab.core.privacy import DPPlan, DPSettings
from lab.core.scores import Released, scales
from lab.core.spec import TaskSpec
from lab.core.training import NodeData
from lab.core.valuation import models_needed
from lab.errors import DataError, Refusal
from lab.node.ledger import check_budget
from lab.node.runbook import BOOK_FILE, DAY, Booking, RunBook
from lab.node.site import NodeSite

__all__ = ["Hold", "book", "check_rows", "parameters_of"]


def parameters_of(spec: TaskSpec) -> int:
    """How many parameters the spec's model has."""
    return sum(p.numel() for p in build_model(spec).parameters())


def _book(site: NodeSite) -> RunBook:
    if site.home is None:
        raise DataError(
            f"node {site.name!r} holds an agreement but no home to keep its run book in; start it with its home "
            "(`lab node start --home DIR`, or the SuperNode's --node-config 'audit-log=\"DIR/audit.jsonl\"')"
        )
    return RunBook(site.home / BOOK_FILE)


def book(
    site: NodeSite,
    spec: TaskSpec,
    plan: RunPlan,
    dp: DPSettings | None,
    *,
    train_rows: int,
    baseline: bool,
    run_id: int,
) -> Booking | None:
    """Check a run's plan against the node's limits and budget and book it; refusals name the
    clause. ``baseline``: the node will release its local-only baseline's scores. A node that holds
    no agreement books the plan as it comes (exact scores), where it has a home (None otherwise)."""
    agreement = site.agreement
    if agreement is None:
        if site.home is None:
            return None
        dp_plan = _dp_plan(dp, plan, train_rows)
        booking = Booking.new(run_id, spec.name, spec.sha256, plan, dp=dp, dp_plan=dp_plan)
        _book(site).open(booking)
        return booking
    limits, runbook = agreement.limits, _book(site)
    candidates = models_needed(plan.nodes) if plan.contributions else 0
    limits.check_plan(
        plan,
        train_rows=train_rows,
        parameters=parameters_of(spec),
        candidates=candidates,
        runs_today=runbook.prepared_since(time.time() - DAY),
    )
    dp_plan = _dp_plan(dp, plan, train_rows)
    if dp is not None and dp_plan is not None:
        limits.check_privacy(delta=dp.delta, train_rows=train_rows, planned_epsilon=dp_plan.planned_epsilon)
    releases = {"baseline": int(baseline), "final": 1, "round": plan.scored_rounds, "candidate": candidates}
    check_budget(site.ledger(), agreement.epsilon_budget, dp_plan, limits.scores_epsilon)
    booking = Booking.new(
        run_id,
        spec.name,
        spec.sha256,
        plan,
        scales=scales(releases, spec, limits.scores_epsilon, limits.max_delta),
        dp=dp,
        dp_plan=dp_plan,
        delta=limits.max_delta,
    )
    runbook.open(booking)
    return booking


def _dp_plan(dp: DPSettings | None, plan: RunPlan, train_rows: int) -> DPPlan | None:
    if dp is None:
        return None
    return DPPlan.make(dp, train_rows, rounds=plan.rounds, local_steps=plan.local_steps, batch_size=plan.batch_size)


@dataclass(frozen=True)
class Hold:
    """A message of a booked run at the node: what its checks and its releases go through
    (``booking`` None: the node holds no agreement, and holds the run to nothing)."""

    site: NodeSite
    booking: Booking | None

    @classmethod
    def of(cls, site: NodeSite, run_id: int) -> Hold:
        """The run's booking at this node; a refusal when a node that holds an agreement never
        prepared it (a node that holds none answers without one)."""
        if site.agreement is not None:
            return cls(site, _book(site).booking(run_id))
        if site.home is None:
            return cls(site, None)
        try:
            return cls(site, _book(site).booking(run_id))
        except Refusal:
            return cls(site, None)

    @property
    def bound(self) -> bool:
        """Whether the node holds the run to its agreement's limits (it holds one)."""
        return self.booking is not None and self.site.agreement is not None

    @property
    def key(self) -> str:
        """The booking's key: what the node's ledger books the run under."""
        return self.booking.key if self.booking is not None else ""

    def train(self, instructions: Instructions) -> None:
        """Refuse a train message that departs from the plan, is beyond its rounds (or the node's
        limit) or repeats a round, or carries another scaler than the run's."""
        if self.booking is None or not self.bound:
            return
        booking, runbook = self.booking, _book(self.site)
        booking.hold(
            spec_sha256=instructions.spec_sha256,
            local_steps=instructions.local_steps,
            batch_size=instructions.batch_size,
            learning_rate=instructions.learning_rate,
            dp=instructions.dp,
        )
        server_round = instructions.server_round
        limits = self.site.agreement.limits if self.site.agreement else None
        trained = runbook.trained(booking.key)
        most = min(booking.plan.rounds, limits.max_rounds if limits else booking.plan.rounds)
        if not 1 <= server_round <= booking.plan.rounds:
            raise Refusal("plan", f"round {server_round} is outside the {booking.plan.rounds} rounds the run planned")
        if server_round in trained:
            raise Refusal("plan", f"round {server_round} of this run was already trained here")
        if len(trained) >= most:
            raise Refusal("limits.max-rounds", f"this run has trained {len(trained)} rounds here, the most it may")
        self.pin(instructions)

    def trained(self, server_round: int) -> None:
        """Note that the run's round ``server_round`` was trained."""
        if self.booking is not None:
            _book(self.site).note_trained(self.booking.key, server_round)

    def pin(self, instructions: Instructions) -> None:
        """Hold the run to one scaler (the first one a message of the run carried)."""
        if self.bound and self.booking is not None:
            _book(self.site).pin_scaler(self.booking.key, instructions.describe()["scaler_sha256"])

    def scale(self, kind: str, models: int = 1) -> float:
        """The noise of ``models`` more models' scores of ``kind`` (0: exact, for a node that holds no
        agreement); a refusal when the plan has no room for them."""
        if self.booking is None or not self.bound:
            return 0.0
        booking = self.booking
        planned = {
            "baseline": 1,
            "final": 1,
            "round": booking.plan.scored_rounds,
            "candidate": models_needed(booking.plan.nodes) if booking.plan.contributions else 0,
        }[kind]
        done = _book(self.site).scored(booking.key)[kind]
        if done + models > planned:
            raise Refusal(
                "plan",
                f"the run planned {planned} {kind} model(s) to be scored here and {done} were; {models} more would "
                "make the node's scores an oracle on its test rows",
            )
        return booking.scales.get(kind, 0.0)

    def released(self, kind: str, scored: list[Released]) -> float | None:
        """Book the release of ``scored`` models' scores of ``kind``: in the run book, and their
        cost in the ledger (its epsilon on the test rows so far, or None for exact scores)."""
        if self.booking is None or not self.bound or not scored:
            return None
        booking = self.booking
        _book(self.site).note_scored(booking.key, kind, len(scored))
        rho = sum(r.rho for r in scored)
        entry = self.site.ledger().record_scores(
            key=booking.key, run_id=booking.run_id, task=booking.task, what=kind, models=len(scored), rho=rho,
            delta=booking.delta,
        )  # fmt: skip
        return float(entry["epsilon"])


def check_rows(site: NodeSite, data: NodeData) -> int:
    """The node's minimum count; a node with fewer training rows refuses to train."""
    minimum = site.min_count()
    if len(data.train) < minimum:
        raise Refusal(
            "allow.min-rows",
            f"the node has fewer training rows than the minimum of {minimum} (its operator sees how many): a model "
            "update from so few rows can reveal them",
        )
    return minimum
