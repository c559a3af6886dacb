"""The preparation query, a training run's first step: every node checks its environment against
the lock and its table against the spec, says who it is, shares the column sums behind the
federated scalers and trains its local-only baseline. The spec's text travels here only: later
messages name it by its hash.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lab.contract.events import Joined, Refused, Warned
from lab.contract.membership import HELD_BACK, NO_AGREEMENT, UNREPORTED_AGREEMENT, Guard, Member
from lab.contract.messages import NodeReport
from lab.contract.plan import RunPlan
from lab.contract.results import PreparedAnswer
from lab.contract.settings import RunSettings
from lab.core.analytics import protect_column_sums
from lab.core.environment import EnvDiff, Environment
from lab.core.preprocess import ColumnSums, Scaler
from lab.core.privacy import DPPlan, DPSettings
from lab.core.spec import TaskSpec
from lab.core.training import local_baseline, node_seed, score, target_sums
from lab.errors import EnvironmentDriftError, RunFailedError
from lab.node.agreement import Agreement, Request
from lab.node.holding import Hold, book, check_rows
from lab.node.rows import rows_of
from lab.node.site import NodeSite
from lab.queries.base import Answers, Ask, Emit, QueryKind

if TYPE_CHECKING:  # the nodes import the queries too: no MLflow there
    from lab.registry.tracking import Tracker

__all__ = ["KIND", "Lock", "Prepare", "PrepareRequest", "Preparation"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lock:
    """The federation's pinned environment, and what to do with a node that differs."""

    python: str
    platform: str
    pins: list[str]
    policy: str

    def environment(self) -> Environment:
        return Environment.from_pins(self.python, self.platform, self.pins)


@dataclass(frozen=True)
class PrepareRequest:
    """What a node needs to prepare: the seed and baseline, the strategy, the run's plan and DP
    settings its agreement checks, and the lock its environment is held to."""

    seed: int
    baseline_epochs: int
    strategy: str
    plan: RunPlan
    dp: DPSettings | None = None
    lock: Lock | None = None

    @classmethod
    def of(cls, settings: RunSettings, lock: Environment | None, *, nodes: int) -> PrepareRequest:
        """The request of a run with these settings, put to ``nodes`` nodes."""
        pinned = Lock(lock.python, lock.platform, lock.pins, settings.environment_policy) if lock else None
        plan = RunPlan.of(settings, nodes=nodes)
        return cls(settings.seed, settings.baseline_epochs, settings.strategy, plan, DPSettings.of(settings), pinned)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PrepareRequest:
        raw = json.loads(text)
        return cls(
            seed=int(raw["seed"]),
            baseline_epochs=int(raw["baseline_epochs"]),
            strategy=str(raw["strategy"]),
            plan=RunPlan.from_dict(raw["plan"]),
            dp=DPSettings(**raw["dp"]) if raw.get("dp") else None,
            lock=Lock(**raw["lock"]) if raw.get("lock") else None,
        )


@dataclass(frozen=True)
class Preparation:
    """Who takes part, and the federated scalers of the features and of a regression target."""

    members: dict[int, Member]
    scaler: Scaler
    target_scaler: Scaler


def check_environment(lock: Lock | None, name: str) -> tuple[Environment, EnvDiff]:
    """Compare this node's environment with the federation's lock, before any data is read.

    Under the ``strict`` policy a difference refuses the task, naming each package and both
    versions; under ``warn`` it is reported with the reply.
    """
    current = Environment.current()
    if lock is None:
        return current, EnvDiff()
    drift = current.diff(lock.environment())
    if drift and lock.policy == "strict":
        raise EnvironmentDriftError(
            f"its environment differs from the federation's pinned one ({drift.summary()}); "
            "install from environments/requirements.lock with `make setup`"
        )
    if drift:
        logger.warning("node %s: environment differs from the lock: %s", name, drift.summary())
    return current, drift


class Prepare(QueryKind[PrepareRequest]):
    name = "prepare"
    outputs = frozenset({"metrics", "statistics"})

    def parse_request(self, text: str) -> PrepareRequest:
        return PrepareRequest.from_json(text)

    def describe(self, text: str) -> Any:
        """The request as it came, its lock named by its fingerprint and policy (the pins are the lock's)."""
        described = json.loads(text)
        lock = described.get("lock") if isinstance(described, dict) else None
        if isinstance(lock, dict):
            pinned = Lock(**lock).environment()
            described["lock"] = {"fingerprint": pinned.fingerprint, "policy": lock.get("policy")}
        return described

    def asks(self, spec: TaskSpec, request: PrepareRequest, agreement: Agreement) -> Request:
        outputs = {"metrics"} | ({"statistics"} if spec.scaling == "federated" else set())
        return Request(
            task=spec.name,
            task_sha256=spec.sha256,
            strategy=request.strategy,
            outputs=frozenset(outputs),
            metrics=frozenset(spec.metrics),
            rows=agreement.min_rows,  # the row count is checked on the reply, once the rows are loaded
            differential_privacy=request.dp is not None,
        )

    def releases(
        self, spec: TaskSpec, request: PrepareRequest, answer: dict[str, Any], agreement: Agreement
    ) -> Request:
        outputs = ({"metrics"} if answer["baseline"] else set()) | {"statistics"}
        return Request(
            spec.name,
            spec.sha256,
            request.strategy,
            frozenset(outputs),
            frozenset(answer["baseline"]),
            int(answer["report"]["train_rows"]),
            request.dp is not None,
        )

    def answer(self, spec: TaskSpec, request: PrepareRequest, site: NodeSite, run_id: int) -> dict[str, Any]:
        """Check the environment and the table, check and book the run's plan, share column sums for
        scaling, run the local-only baseline."""
        env, drift = check_environment(request.lock, site.name)
        rows = rows_of(site, spec, run_id)
        data = rows.data
        minimum = check_rows(site, data)
        # Metrics on fewer rows than the minimum do not leave; in a DP run nothing trained without
        # DP does either, so the local-only baseline is skipped.
        with_baseline = len(data.test) >= minimum and request.dp is None
        booking = book(
            site, spec, request.plan, request.dp, train_rows=len(data.train), baseline=with_baseline, run_id=run_id
        )
        plan = booking.dp_plan if booking is not None else unbound_dp_plan(request.plan, request.dp, len(data.train))
        sums, held_back = protect_column_sums(ColumnSums.of(data.train.encoded(spec)), spec, len(data.train), minimum)
        baseline: dict[str, float] = {}
        noise: dict[str, float] = {}
        trained = (
            local_baseline(spec, data, epochs=request.baseline_epochs, seed=node_seed(request.seed, site.name, 0))
            if with_baseline
            else None
        )
        if trained is not None:
            hold = Hold(site, booking)
            released = score(trained, data.test, scale=hold.scale("baseline"), min_class_rows=minimum)
            hold.released("baseline", [released])
            baseline, noise = released.metrics, released.noise
        suppressed = [
            f"metrics on the test split withheld: it has fewer rows than the minimum of {minimum}"
            if len(data.test) < minimum
            else "",
            *held_back,
            f"dropped rows under {minimum} held back" if 0 < data.dropped < minimum else "",
        ]
        notes = "; ".join(note for note in suppressed if note)
        report = NodeReport.of_node(site.name, spec, env, data.train, rows.fingerprint, notes)
        agreement = site.agreement
        return {
            "report": asdict(report),
            # Counts under the minimum are sent as 0 (the report says they were held back).
            "test_rows": len(data.test) if len(data.test) >= minimum else 0,
            "dropped_rows": data.dropped if not 0 < data.dropped < minimum else 0,
            "env_pins": env.pins,
            "env_drift": drift.summary(),
            "dp": {"noise_multiplier": plan.noise_multiplier, "planned_epsilon": plan.planned_epsilon}
            if plan
            else None,
            "noise": noise,
            "sums": _sums_json(sums),
            "target": _sums_json(target_sums(data.train)) if spec.target.kind == "regression" else None,
            "baseline": baseline,
            "suppressed": report.suppressed,
            # What this run was checked against, for the coordinator's record (None: no agreement).
            "agreement": agreement.clauses(spec.name) if agreement else None,
        }

    def prepare(
        self,
        spec: TaskSpec,
        request: PrepareRequest,
        settings: RunSettings,
        guard: Guard,
        ask: Ask,
        tracker: Tracker,
        emit: Emit,
    ) -> Preparation:
        """Ask every connected node to prepare; the nodes that take part and the federated scalers."""
        gathered = ask(request)
        members: dict[int, Member] = {}
        sums: ColumnSums | None = None
        target: ColumnSums | None = None
        refusals = dict(gathered.refusals)
        for node in gathered.answers.values():
            member, part, target_part = _member(node.node_id, node.answer)
            report = NodeReport(**node.answer["report"])
            refusal, warning = guard.screen(report, member.env_pins, node_id=node.node_id)
            if refusal:
                refusals[member.name] = f"node {member.name!r} not admitted by the coordinator: {refusal}"
                continue
            member.warning = warning or member.warning
            members[node.node_id] = member
            sums = part if sums is None else sums + part
            if target_part is not None:
                target = target_part if target is None else target + target_part
        _record(members, refusals, tracker, emit)
        if len(members) < settings.min_nodes:
            _too_few(members, refusals, settings, gathered)
        if spec.scaling == "none" or sums is None:
            return Preparation(members, Scaler.identity(len(spec.encoded_names)), Scaler.identity(1))
        target_scaler = Scaler.from_sums(target) if target is not None else Scaler.identity(1)
        return Preparation(members, Scaler.from_sums(sums), target_scaler)

    def coordinate(
        self, spec: TaskSpec, request: PrepareRequest, settings: RunSettings, ask: Ask, tracker: Tracker, emit: Emit
    ) -> PreparedAnswer:
        """Preparation alone: which nodes would take part in this task, and why the others would not."""
        lock = request.lock.environment() if request.lock else None
        guard = Guard(lock, settings.environment_policy, spec.sha256, settings.admitted)
        prepared = self.prepare(spec, request, settings, guard, ask, tracker, emit)
        return PreparedAnswer(sorted(m.name for m in prepared.members.values()))


def unbound_dp_plan(plan: RunPlan, dp: DPSettings | None, train_rows: int) -> DPPlan | None:
    """The DP plan of a node that holds no agreement (and books nothing): the run's, as it asks."""
    if dp is None:
        return None
    return DPPlan.make(dp, train_rows, rounds=plan.rounds, local_steps=plan.local_steps, batch_size=plan.batch_size)


def _too_few(members: dict[int, Member], refusals: dict[str, str], settings: RunSettings, gathered: Answers) -> None:
    wanted = max(settings.expected_nodes, settings.min_nodes)
    if gathered.asked < wanted:
        refusals["connected"] = (
            f"only {gathered.asked} of {wanted} node(s) connected within node-wait-seconds = "
            f"{settings.node_wait_seconds:.0f}; check the nodes' logs"
        )
    detail = "; ".join(refusals.values()) or "no node answered"
    raise RunFailedError(
        f"{len(members)} node(s) accepted the task, fewer than min-nodes = {settings.min_nodes}: {detail}"
    )


def _sums_json(sums: ColumnSums) -> dict[str, list[float]]:
    """Column sums as JSON (a regression target's sums are one column; its count is the row count)."""
    return {"count": sums.count.tolist(), "total": sums.total.tolist(), "squares": sums.squares.tolist()}


def _member(node_id: int, answer: dict[str, Any]) -> tuple[Member, ColumnSums, ColumnSums | None]:
    """A node's answer: who it is, its fingerprints, baseline, column sums and (for a regression
    target) the target's sums."""
    report = answer["report"]
    dp = answer.get("dp") or {}
    member = Member(
        node_id=node_id,
        name=report["name"],
        organisation=report["organisation"],
        train_rows=int(report["train_rows"]),
        test_rows=int(answer["test_rows"]),
        baseline={k: float(v) for k, v in answer["baseline"].items()},
        baseline_noise={k: float(v) for k, v in answer.get("noise", {}).items()},
        env_fingerprint=report["env_fingerprint"],
        data_fingerprint=report["data_sha256"],
        env_pins=list(answer["env_pins"]),
        warning=f"its environment differs from the lock ({answer['env_drift']})" if answer["env_drift"] else None,
        privacy={f"dp_{k}": float(v) for k, v in dp.items()},
        suppressed=str(answer.get("suppressed", "")),
        agreement=_agreement(answer),
    )
    sums = answer["sums"]
    columns = ColumnSums(*(np.asarray(sums[k], dtype=np.float64) for k in ("count", "total", "squares")))
    target = answer.get("target")
    if not target:
        return member, columns, None
    return (
        member,
        columns,
        ColumnSums(*(np.asarray(target[k], dtype=np.float64) for k in ("count", "total", "squares"))),
    )


def _agreement(answer: dict[str, Any]) -> dict[str, Any]:
    """The clauses a node's answer says it checked the run against."""
    if "agreement" not in answer:
        return dict(UNREPORTED_AGREEMENT)
    clauses = answer["agreement"]
    return dict(clauses) if isinstance(clauses, dict) else dict(NO_AGREEMENT)


def _record(members: dict[int, Member], refusals: dict[str, str], tracker: Tracker, emit: Emit) -> None:
    """Who joined, who was refused and why, and every node's fingerprints, to MLflow and the caller;
    a node's row counts, DP plan and baseline only where its agreement lets them be shown."""
    for member in members.values():
        shown = member.shows_figures
        emit(
            Joined(
                node=member.name,
                organisation=member.organisation,
                train_rows=member.train_rows if shown else None,
                test_rows=member.test_rows if shown else None,
            )
        )
        if member.warning:
            emit(Warned(node=member.name, reason=f"node {member.name!r}: {member.warning}"))
        if member.suppressed:
            emit(Warned(node=member.name, reason=f"node {member.name!r}: {member.suppressed}"))
    for node, reason in refusals.items():
        logger.warning("%s", reason)
        emit(Refused(node=node, reason=reason))
    names = sorted(m.name for m in members.values())
    tracker.log_params({"nodes": ",".join(names), "num_nodes": len(members), "refused_nodes": len(refusals)})
    for m in members.values():
        figures = {f"node.{m.name}.train_rows": m.train_rows, **{f"node.{m.name}.{k}": v for k, v in m.privacy.items()}}
        tracker.log_params(
            {
                f"node.{m.name}.env_fingerprint": m.env_fingerprint,
                f"node.{m.name}.data_sha256": m.data_fingerprint,
                **(figures if m.shows_figures else {}),
            }
        )
    drifted = sorted(m.name for m in members.values() if m.warning)
    if drifted:
        tracker.set_tags({"lab.environment_drift": ",".join(drifted)})
    fingerprints = {
        m.name: {
            "organisation": m.organisation,
            "environment": m.env_fingerprint,
            "data_sha256": m.data_fingerprint,
            "warning": m.warning,
            "suppressed": m.suppressed,
            **({"train_rows": m.train_rows, "test_rows": m.test_rows, **m.privacy} if m.shows_figures else {}),
            **({} if m.shows_figures else {"figures": HELD_BACK}),
        }
        for m in members.values()
    }
    from lab.registry.run_record import AGREEMENTS, FINGERPRINTS  # the coordinator's side only: MLflow

    tracker.log_text(json.dumps({"members": fingerprints, "refused": refusals}, indent=2), FINGERPRINTS)
    agreements = {m.name: m.agreement for m in sorted(members.values(), key=lambda m: m.name)}
    tracker.log_text(json.dumps(agreements, indent=2), AGREEMENTS)
    tracker.log_metrics(
        {
            f"node.{m.name}.baseline.{k}": v
            for m in members.values()
            if m.shows_figures
            for k, v in m.baseline.items()
            if math.isfinite(v)
        },
        step=0,
    )


KIND = Prepare()
