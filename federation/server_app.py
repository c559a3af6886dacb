"""The coordinator's ServerApp: prepare the nodes, run the strategy, record and register the model."""

from __future__ import annotations

import json
import logging
import math
import traceback
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from federation.analytics_run import federated_stats
from federation.grid import PromptGrid
from federation.preparation import Guard, preflight, prepare
from federation.recorder import EventLog, Member, Recorder
from federation.secure_aggregation import run_secure_rounds
from federation.strategies import make_strategy
from lab.contract import keys
from lab.contract.settings import RunSettings
from lab.core.environment import Environment
from lab.core.model import build_model
from lab.core.privacy import dp_config
from lab.core.spec import TaskSpec, parse_spec
from lab.core.training import predictor_from
from lab.errors import LabError, RunFailedError
from lab.registry.packaging import check_packaging
from lab.registry.tracking import Tracker

logger = logging.getLogger(__name__)

app = ServerApp()

TRACEBACK_FILE = "traceback.txt"


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one federated training run end to end."""
    grid = PromptGrid(grid)  # replies are read within 0.2 s, not Flower's 3 s
    settings = RunSettings.from_run_config(dict(context.run_config))
    spec = parse_spec(settings.task_spec, source="the run's task spec")
    events = EventLog(settings.events_file)
    tracker = Tracker(settings.tracking_uri, settings.experiment or spec.name)
    fab_hash = grid.run.fab_hash  # the app's code, as the SuperLink received it
    tags = {
        "flwr.run_id": str(context.run_id),
        "lab.core.spec": spec.name,
        "lab.spec_sha256": spec.sha256,
        "lab.code.fab_hash": fab_hash,
        "lab.code.version": settings.code_version or "unknown",
    }
    traceback_at = ""
    try:
        with tracker.run(
            run_name=f"{spec.name}-{settings.strategy if settings.mode == 'train' else settings.mode}-{context.run_id}",
            params={**settings.as_params(), "spec": spec.name, "spec_sha256": spec.sha256, "code.fab_hash": fab_hash},
            tags=tags,
        ):
            try:
                events.emit(
                    "started", rounds=settings.num_rounds, strategy=settings.strategy, mlflow_run_id=tracker.run_id
                )
                tracker.log_text(spec.text, "task/spec.toml")
                if settings.environment_lock:
                    tracker.log_text(settings.environment_lock, "environment/requirements.lock")
                if settings.mode == "check":
                    summary = preflight(grid, spec, settings, tracker)
                elif settings.mode == "stats":
                    summary = federated_stats(grid, spec, settings, tracker, events)
                else:
                    summary = _run(grid, spec, settings, tracker, events, fab_hash)
                events.emit("done", **summary)
            except Exception as exc:
                if not isinstance(exc, LabError):  # a bug: keep its traceback with the failed run
                    traceback_at = _keep_traceback(events, tracker)
                raise
    except Exception as exc:
        reason = (
            str(exc) if isinstance(exc, LabError) else f"internal error (a bug in the lab): {type(exc).__name__}: {exc}"
        )
        events.emit("failed", reason=reason + traceback_at)
        raise


def _keep_traceback(events: EventLog, tracker: Tracker) -> str:
    """Write the exception being handled to the run's folder and its MLflow run; where it went."""
    text = traceback.format_exc()
    logger.error("%s", text)
    places = []
    if events.path is not None:
        path = events.path.with_name(TRACEBACK_FILE)
        path.write_text(text, encoding="utf-8")
        places.append(repr(str(path)))
    if tracker.run_id is not None:
        tracker.log_text(text, f"error/{TRACEBACK_FILE}")
        places.append(f"MLflow run {tracker.run_id} (artifact error/{TRACEBACK_FILE})")
    return f"; the traceback is in {' and in '.join(places)}" if places else ""


def _run(
    grid: Grid, spec: TaskSpec, settings: RunSettings, tracker: Tracker, events: EventLog, fab_hash: str
) -> dict[str, Any]:
    guard = _guard(spec, settings)
    check_packaging(spec)  # a task that cannot become a model fails now, not after the last round
    members, scaler, target_scaler = prepare(grid, spec, settings, guard, tracker, events)
    recorder = Recorder(members, tracker, events, spec.metrics)
    strategy = make_strategy(settings, set(members), recorder, guard)
    mean, std = scaler.to_lists()
    shared: dict[str, Any] = {
        keys.TASK_SPEC: spec.text,
        keys.SCALER_MEAN: mean,
        keys.SCALER_STD: std,
        **(
            {keys.TARGET_MEAN: float(target_scaler.mean[0]), keys.TARGET_STD: float(target_scaler.std[0])}
            if spec.target.kind == "regression"
            else {}
        ),
        keys.STRATEGY: settings.strategy,
        **dp_config(settings),
    }
    train_config = ConfigRecord(
        {
            **shared,
            keys.LEARNING_RATE: settings.learning_rate,
            keys.SEED: settings.seed,
            keys.EVALUATE_FIRST: True,
        }
    )
    initial = ArrayRecord(build_model(spec, seed=settings.seed).state_dict())
    if settings.secure_aggregation:  # the same train config, through SecAgg+
        result = run_secure_rounds(grid, initial, train_config, members, recorder, guard, settings, tracker)
    else:
        result = strategy.start(
            grid, initial, num_rounds=settings.num_rounds, timeout=settings.round_timeout, train_config=train_config
        )
    _evaluate_final(grid, result.arrays, ConfigRecord(shared), members, recorder, settings)
    if recorder.refusals:
        tracker.log_text(json.dumps(recorder.refusals, indent=2), "nodes/refusals-in-rounds.json")
    predictor = predictor_from(spec, scaler, result.arrays, target_scaler)
    if not predictor.is_finite():
        raise RunFailedError(
            "the federated model's weights are not finite numbers (the training diverged); nothing is registered: "
            "lower learning-rate and check the spec's scaling"
        )
    summary = _summary(members, spec)
    tracker.log_metrics({f"final.{k}": v for k, v in summary["mean"].items() if _finite(v)}, step=settings.num_rounds)
    provenance = {
        "environment_fingerprint": guard.lock.fingerprint if guard.lock else "",
        "environment_policy": settings.environment_policy,
        "spec_sha256": spec.sha256,
        "code_version": settings.code_version or "unknown",
        "fab_hash": fab_hash,
        "nodes": {
            m.name: {"environment": m.env_fingerprint, "data_sha256": m.data_fingerprint, "train_rows": m.train_rows}
            for m in members.values()
        },
    }
    logged = tracker.log_model(
        predictor, lock_text=settings.environment_lock, provenance=provenance, register=settings.register
    )
    if logged is not None:
        summary.update(model_uri=logged.model_uri, registered=logged.registered_name, version=logged.version)
    return summary


def _guard(spec: TaskSpec, settings: RunSettings) -> Guard:
    """The environment policy against the run's lock (strict needs a lock)."""
    if not settings.environment_lock:
        if settings.environment_policy == "strict":
            raise RunFailedError(
                "the strict environment policy needs the lock; `lab run` sends "
                'environments/requirements.lock, or set environment-policy = "warn"'
            )
        return Guard(None, settings.environment_policy, spec.sha256)
    lock = Environment.from_lock(settings.environment_lock, source="the run's environment lock")
    return Guard(lock, settings.environment_policy, spec.sha256)


def _evaluate_final(
    grid: Grid,
    arrays: ArrayRecord,
    config: ConfigRecord,
    members: dict[int, Member],
    recorder: Recorder,
    settings: RunSettings,
) -> None:
    """Score the final model on every participant's test split (the only evaluate message)."""
    messages = [
        Message(
            RecordDict({keys.ARRAYS: arrays, keys.CONFIG: config}),
            dst_node_id=node_id,
            message_type=MessageType.EVALUATE,
        )
        for node_id in members
    ]
    replies = list(grid.send_and_receive(messages, timeout=settings.round_timeout))
    good = [r for r in replies if not r.has_error()]
    if len(good) < settings.min_nodes:
        raise RunFailedError(
            f"final evaluation: {len(good)} node(s) answered, fewer than min-nodes = {settings.min_nodes}"
        )
    recorder.on_evaluate(settings.num_rounds, replies, len(members))


def _summary(members: dict[int, Member], spec: TaskSpec) -> dict[str, Any]:
    rows = [
        {
            "node": m.name,
            "organisation": m.organisation,
            "train_rows": m.train_rows,
            "test_rows": m.test_rows,
            "federated": m.final,
            "local_only": m.baseline,
            "epsilon": m.epsilon,
        }
        for m in sorted(members.values(), key=lambda m: m.name)
    ]
    mean: dict[str, float] = {}
    for metric in spec.metrics:
        for label, scores in (
            ("federated", [m.final for m in members.values()]),
            ("local_only", [m.baseline for m in members.values()]),
        ):
            values = [s[metric] for s in scores if _finite(s.get(metric))]
            mean[f"{label}.{metric}"] = float(np.mean(values)) if values else float("nan")
    return {"nodes": rows, "mean": mean}


def _finite(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value)
