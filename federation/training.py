"""The coordinator's training run: prepare the nodes, run the strategy's rounds, score the final
model at every node, and log and register it."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from federation.asking import asker, chosen
from federation.contributions import Opening, UpdateLog, opening, value_contributions
from federation.recorder import Recorder
from federation.rounds import run_rounds
from federation.secure_aggregation import run_secure_rounds
from federation.strategies import make_strategy
from lab.contract import keys
from lab.contract.membership import HELD_BACK, Guard, Member, hidden_names
from lab.contract.messages import Instructions
from lab.contract.results import NodeRow, PooledAccuracy, RunSummary
from lab.contract.settings import RunSettings
from lab.core.disclosure import subtraction_reveals
from lab.core.environ import ROSTER, SIGNING_KEY
from lab.core.environment import Environment
from lab.core.intervals import LEVEL, compare, pooled_accuracy, wilson
from lab.core.model import build_model
from lab.core.preprocess import Scaler
from lab.core.privacy import DPSettings
from lab.core.spec import TaskSpec
from lab.core.training import predictor_from
from lab.errors import RunFailedError, SettingsError
from lab.queries.base import Emit
from lab.queries.prepare import KIND as PREPARE
from lab.queries.prepare import Preparation, PrepareRequest
from lab.registry.checkpoints import Checkpoint, log_settings, resumable
from lab.registry.packaging import check_packaging
from lab.registry.run_record import REFUSALS, SUMMARY
from lab.registry.tracking import AUDIT_HEADS, Tracker
from lab.runtime.roster import note_seen

__all__ = ["train"]


def train(grid: Grid, spec: TaskSpec, settings: RunSettings, tracker: Tracker, emit: Emit, fab_hash: str) -> RunSummary:
    """One training run end to end; its summary (every node's scores, the means, the model).

    A run that resumes (``settings.resume_run``) takes its model, server optimiser, scalers and
    round from its last checkpoint; its nodes are asked again whether they take part.
    """
    guard = _guard(spec, settings)
    signing_key = _signing_key(settings)
    check_packaging(spec)  # a task that cannot become a model fails now, not after the last round
    resumed = _checkpoint(settings, tracker)
    request = PrepareRequest.of(settings, guard.lock, nodes=len(chosen(grid, settings)))
    prepared = PREPARE.prepare(spec, request, settings, guard, asker(grid, spec, PREPARE, settings), tracker, emit)
    members = prepared.members
    if ROSTER.get():  # nodes admitted by key: `lab coordinator nodes` shows what each node reported
        reports = {m.name: {"organisation": m.organisation, "environment": m.env_fingerprint} for m in members.values()}
        note_seen(Path(ROSTER.get()), reports, run=str(grid.run.run_id))
    if resumed is not None:
        prepared = _as_checkpointed(prepared, resumed)
    else:
        log_settings(tracker, settings)
    recorder = Recorder(members, tracker, emit, spec.metrics, settings.round_timeout)
    instructions = _instructions(spec, settings, prepared)
    updates = UpdateLog() if settings.contributions else None
    if settings.secure_aggregation:  # the same instructions, through SecAgg+
        initial = ArrayRecord(build_model(spec, seed=settings.seed).state_dict())
        result = run_secure_rounds(grid, initial, instructions.to_record(), members, recorder, guard, settings, tracker)
        arrays = result.arrays
    else:
        names = {n: m.name for n, m in members.items()}
        declared = {n: m.train_rows for n, m in members.items()}
        strategy = make_strategy(settings, names, recorder, guard, updates, declared)
        if resumed is None:
            initial = ArrayRecord(build_model(spec, seed=settings.seed).state_dict())
        else:
            initial = ArrayRecord({k: Array(v) for k, v in resumed.weights.items()})
            strategy.restore(resumed.optimiser)
        data = {m.name: m.data_fingerprint for m in members.values()}
        mean, std = prepared.scaler.to_lists()
        target = prepared.target_scaler.to_lists()

        def keep(server_round: int, arrays: ArrayRecord) -> None:
            weights = {k: a.numpy() for k, a in arrays.items()}
            Checkpoint(server_round, weights, strategy.optimiser_state(), (mean, std), target, data).log(tracker)

        arrays = run_rounds(
            grid,
            strategy,
            initial,
            rounds=range((resumed.server_round if resumed else 0) + 1, settings.num_rounds + 1),
            timeout=settings.round_timeout,
            train_config=instructions.to_record(),
            after_round=keep,
        )
    predictor = predictor_from(spec, prepared.scaler, arrays, prepared.target_scaler)
    names = {n: m.name for n, m in members.items()}
    hidden = hidden_names(members.values())
    # The valuation's first message goes out with the final evaluation (federation.contributions).
    opened = None
    if updates is not None and predictor.is_finite():
        opened = opening(grid, updates, instructions, names, hidden=hidden)
    _evaluate_final(grid, arrays, instructions, members, recorder, settings, opened)
    if recorder.refusals:
        tracker.log_text(json.dumps(recorder.refusals, indent=2), REFUSALS)
    if recorder.audit_heads:
        tracker.log_text(json.dumps(recorder.audit_heads, indent=2), AUDIT_HEADS)
    if not predictor.is_finite():
        raise RunFailedError(
            "the federated model's weights are not finite numbers (the training diverged); nothing is registered: "
            "lower learning-rate and check the spec's scaling"
        )
    summary = _summary(members, spec, recorder.auc_unreliable)
    if updates is not None:
        contributions = value_contributions(
            grid,
            updates,
            instructions,
            names,
            spec,
            hidden=hidden,
            strategy=settings.strategy,
            timeout=settings.round_timeout,
            seed=settings.seed,
            tracker=tracker,
            emit=emit,
            opened=opened,
        )
        summary = replace(summary, contributions=contributions)
    tracker.log_metrics(summary.final_metrics(), step=settings.num_rounds)
    tracker.log_text(json.dumps(summary.to_json(), indent=2, allow_nan=True), SUMMARY)
    provenance = {
        "environment_fingerprint": guard.lock.fingerprint if guard.lock else "",
        "environment_policy": settings.environment_policy,
        "spec_sha256": spec.sha256,
        "code_version": settings.code_version or "unknown",
        "fab_hash": fab_hash,
        "nodes": {
            m.name: {
                "environment": m.env_fingerprint,
                "data_sha256": m.data_fingerprint,
                **({"train_rows": m.train_rows} if m.shows_figures else {}),
            }
            for m in members.values()
        },
    }
    logged = tracker.log_model(
        predictor,
        lock_text=settings.environment_lock,
        provenance=provenance,
        register=settings.register,
        signing_key=signing_key,
    )
    if logged is not None:
        summary = replace(
            summary, model_uri=logged.model_uri, registered=logged.registered_name, version=logged.version
        )
    return summary


def _checkpoint(settings: RunSettings, tracker: Tracker) -> Checkpoint | None:
    """The last checkpoint of the run this one resumes (None for a new run)."""
    if not settings.resume_run:
        return None
    if settings.secure_aggregation:
        raise RunFailedError("a secure-aggregation run keeps no checkpoint and cannot be resumed; start it again")
    done = resumable(settings.tracking_uri, settings.resume_run).checkpoint_round
    return Checkpoint.load(tracker.tracking_uri, settings.resume_run, done)


def _as_checkpointed(prepared: Preparation, checkpoint: Checkpoint) -> Preparation:
    """The preparation with the checkpoint's scalers; a node whose table changed since is refused."""
    changed = sorted(
        m.name
        for m in prepared.members.values()
        if m.name in checkpoint.data and checkpoint.data[m.name] != m.data_fingerprint
    )
    if changed:
        raise RunFailedError(
            f"cannot resume: the table of node(s) {', '.join(changed)} changed since the run started (its "
            "fingerprint differs from the checkpoint's); start a new run"
        )
    return replace(
        prepared,
        scaler=Scaler.from_lists(*checkpoint.scaler),
        target_scaler=Scaler.from_lists(*checkpoint.target_scaler),
    )


def _instructions(spec: TaskSpec, settings: RunSettings, prepared: Preparation) -> Instructions:
    """What every train message says besides the model (and, without the training fields, every
    evaluate message)."""
    mean, std = prepared.scaler.to_lists()
    target_mean, target_std = prepared.target_scaler.to_lists()
    return Instructions(
        task=spec.name,
        spec_sha256=spec.sha256,
        strategy=settings.strategy,
        scaler_mean=mean,
        scaler_std=std,
        target_mean=target_mean[0],
        target_std=target_std[0],
        seed=settings.seed,
        local_steps=settings.local_steps,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        evaluate_first=True,
        dp=DPSettings.of(settings),
    )


def _signing_key(settings: RunSettings) -> Path | None:
    """The federation's key the model is signed with; a run that registers needs one, and learns
    it has none before any node trains."""
    key = Path(SIGNING_KEY.get()) if SIGNING_KEY.get() else None
    if key is not None and not key.is_file():
        raise RunFailedError(f"the federation's signing key {str(key)!r} ({SIGNING_KEY.name}) does not exist")
    if key is None and settings.register and settings.tracking_uri:
        raise RunFailedError(
            f"this coordinator has no federation key to sign the model with ({SIGNING_KEY.name} is not set), and "
            "members refuse an unsigned model: start the coordinator with the lab (lab run, lab coordinator "
            "start), or run with --set register=false"
        )
    return key


def _guard(spec: TaskSpec, settings: RunSettings) -> Guard:
    """The environment policy against the run's lock (strict needs a lock)."""
    if not settings.environment_lock:
        if settings.environment_policy == "strict":
            raise SettingsError(
                "the strict environment policy needs the lock; `lab run` sends "
                'environments/requirements.lock, or set environment-policy = "warn"'
            )
        return Guard(None, settings.environment_policy, spec.sha256, settings.admitted)
    lock = Environment.from_lock(settings.environment_lock, source="the run's environment lock")
    return Guard(lock, settings.environment_policy, spec.sha256, settings.admitted)


def _evaluate_final(
    grid: Grid,
    arrays: ArrayRecord,
    instructions: Instructions,
    members: dict[int, Member],
    recorder: Recorder,
    settings: RunSettings,
    opened: Opening | None = None,
) -> None:
    """Score the final model on every participant's test split (the only evaluate message); the
    ``opened`` valuation's messages go with it, and their replies are kept in it."""
    content = RecordDict({keys.ARRAYS: arrays, keys.CONFIG: instructions.to_record()})
    messages = [Message(content, dst_node_id=node_id, message_type=MessageType.EVALUATE) for node_id in members]
    beside = opened.messages if opened is not None else []
    replies = list(grid.send_and_receive([*messages, *beside], timeout=settings.round_timeout))
    if opened is not None:  # a reply, an error reply too, has the type of the message it answers
        opened.replies = [r for r in replies if r.metadata.message_type != MessageType.EVALUATE]
        replies = [r for r in replies if r.metadata.message_type == MessageType.EVALUATE]
    good = [r for r in replies if not r.has_error()]
    if len(good) < settings.min_nodes:
        raise RunFailedError(
            f"final evaluation: {len(good)} node(s) answered, fewer than min-nodes = {settings.min_nodes}"
        )
    recorder.on_evaluate(settings.num_rounds, replies, len(members), recorder.dropped(members, replies))


def _summary(members: dict[int, Member], spec: TaskSpec, auc_unreliable: set[str]) -> RunSummary:
    """Every node's scores with their intervals, the means, and the accuracy pooled over the nodes;
    a node's own only where its agreement lets them be shown, and a pooled figure only where it
    gives no hidden node's own by subtraction (what was held back is said in ``held_back``)."""
    rows = [_row(m, spec, m.name in auc_unreliable) for m in sorted(members.values(), key=lambda m: m.name)]
    hidden = hidden_names(members.values())
    held_back: dict[str, str] = {}
    mean: dict[str, float | None] = {}
    for metric in spec.metrics:
        for label, side in (("federated", "final"), ("local_only", "baseline")):
            scored = {
                m.name: getattr(m, side)[metric] for m in members.values() if _finite(getattr(m, side).get(metric))
            }
            why = subtraction_reveals(hidden & set(scored), len(scored))
            if why:
                held_back[f"mean.{label}.{metric}"] = why
            mean[f"{label}.{metric}"] = float(np.mean(list(scored.values()))) if scored and not why else float("nan")
    pooled: dict[str, PooledAccuracy] = {}
    comparison = ""
    if "accuracy" in spec.metrics:
        for label, side in (("federated", "final"), ("local_only", "baseline")):
            counted = [m for m in members.values() if _finite(getattr(m, side).get("accuracy")) and m.test_rows > 0]
            why = subtraction_reveals(hidden & {m.name for m in counted}, len(counted))
            if why:
                held_back[f"pooled.{label}.accuracy"] = why
                continue
            found = pooled_accuracy(
                (getattr(m, side).get("accuracy"), m.test_rows, getattr(m, f"{side}_noise").get("accuracy", 0.0))
                for m in counted
            )
            if found is not None:
                pooled[label] = PooledAccuracy(*found)
        if {"federated", "local_only"} <= set(pooled):
            comparison = compare(pooled["federated"].interval, pooled["local_only"].interval, _SIDES)
    return RunSummary(tuple(rows), mean, pooled, comparison, LEVEL, held_back)


#: How the federated model and a local-only one are named when their intervals are compared.
_SIDES = ("federated", "local-only")


def _row(member: Member, spec: TaskSpec, auc_unreliable: bool) -> NodeRow:
    """One node's line of the summary: its rows and scores, and its accuracies' 95% intervals (its
    name alone, with why, where its agreement keeps its figures)."""
    if not member.shows_figures:
        return NodeRow(member.name, member.organisation, held_back=HELD_BACK)
    intervals, comparison = None, None
    if "accuracy" in spec.metrics:
        federated = wilson(member.final.get("accuracy"), member.test_rows, member.final_noise.get("accuracy", 0.0))
        local = wilson(member.baseline.get("accuracy"), member.test_rows, member.baseline_noise.get("accuracy", 0.0))
        intervals = {
            "federated": {"accuracy": federated} if federated else {},
            "local_only": {"accuracy": local} if local else {},
        }
        comparison = compare(federated, local, _SIDES)
    return NodeRow(
        member.name,
        member.organisation,
        train_rows=member.train_rows,
        test_rows=member.test_rows,
        federated=dict(member.final),
        local_only=dict(member.baseline),
        # Each score's noise (its standard deviation), as the node released it (lab.core.scores).
        noise={"federated": dict(member.final_noise), "local_only": dict(member.baseline_noise)},
        epsilon=member.epsilon,
        auc_unreliable=auc_unreliable,
        intervals=intervals,
        comparison=comparison,
    )


def _finite(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value)
