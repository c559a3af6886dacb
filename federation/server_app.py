"""The coordinator's ServerApp: prepare the nodes, run the strategy, record and register the model."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from federation import keys
from federation.recorder import EventLog, Member, Recorder
from federation.records import config_of, metrics_of, number, numbers, text
from federation.settings import RunSettings
from federation.strategies import make_strategy
from federation.task import predictor_from
from lab.errors import LabError, RunFailedError
from lab.model import build_model
from lab.preprocess import ColumnSums, Scaler
from lab.spec import TaskSpec, parse_spec
from lab.tracking import Tracker, lock_requirements

logger = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one federated training run end to end."""
    settings = RunSettings.from_run_config(dict(context.run_config))
    spec = parse_spec(settings.task_spec, source="the run's task spec")
    events = EventLog(settings.events_file)
    tracker = Tracker(settings.tracking_uri, settings.experiment or spec.name)
    tags = {"flwr.run_id": str(context.run_id), "lab.spec": spec.name, "lab.spec_sha256": spec.sha256}
    try:
        with tracker.run(
            run_name=f"{spec.name}-{settings.strategy}-{context.run_id}",
            params={**settings.as_params(), "spec": spec.name, "spec_sha256": spec.sha256},
            tags=tags,
        ):
            events.emit("started", rounds=settings.num_rounds, strategy=settings.strategy, mlflow_run_id=tracker.run_id)
            tracker.log_text(spec.text, "task/spec.toml")
            if settings.environment_lock:
                tracker.log_text(settings.environment_lock, "environment/requirements.lock")
            summary = _run(grid, spec, settings, tracker, events)
            events.emit("done", **summary)
    except Exception as exc:
        reason = str(exc) if isinstance(exc, LabError) else f"{type(exc).__name__}: {exc}"
        events.emit("failed", reason=reason)
        raise


def _run(grid: Grid, spec: TaskSpec, settings: RunSettings, tracker: Tracker, events: EventLog) -> dict[str, Any]:
    members, scaler = _prepare(grid, spec, settings, tracker, events)
    recorder = Recorder(members, tracker, events, spec.metrics)
    strategy = make_strategy(settings, set(members), recorder)
    mean, std = scaler.to_lists()
    shared: dict[str, Any] = {keys.TASK_SPEC: spec.text, keys.SCALER_MEAN: mean, keys.SCALER_STD: std}
    train_config = ConfigRecord(
        {
            **shared,
            keys.LEARNING_RATE: settings.learning_rate,
            keys.LOCAL_STEPS: settings.local_steps,
            keys.BATCH_SIZE: settings.batch_size,
            keys.SEED: settings.seed,
            keys.EVALUATE_FIRST: True,
        }
    )
    initial = ArrayRecord(build_model(spec, seed=settings.seed).state_dict())
    result = strategy.start(
        grid, initial, num_rounds=settings.num_rounds, timeout=settings.round_timeout, train_config=train_config
    )
    _evaluate_final(grid, result.arrays, ConfigRecord(shared), members, recorder, settings)
    predictor = predictor_from(spec, scaler, result.arrays)
    summary = _summary(members, spec)
    tracker.log_metrics({f"final.{k}": v for k, v in summary["mean"].items() if _finite(v)}, step=settings.num_rounds)
    logged = tracker.log_model(
        predictor, requirements=lock_requirements(settings.environment_lock), register=settings.register
    )
    if logged is not None:
        summary.update(model_uri=logged.model_uri, registered=logged.registered_name, version=logged.version)
    return summary


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


def _prepare(
    grid: Grid, spec: TaskSpec, settings: RunSettings, tracker: Tracker, events: EventLog
) -> tuple[dict[int, Member], Scaler]:
    """Ask every connected node to check its table, share column sums and run its baseline."""
    node_ids = _wait_for_nodes(grid, max(settings.expected_nodes, settings.min_nodes), settings.node_wait_seconds)
    config = ConfigRecord(
        {keys.TASK_SPEC: spec.text, keys.SEED: settings.seed, keys.BASELINE_EPOCHS: settings.baseline_epochs}
    )
    messages = [
        Message(RecordDict({keys.CONFIG: config}), dst_node_id=node_id, message_type=keys.PREPARE_MESSAGE_TYPE)
        for node_id in node_ids
    ]
    replies = list(grid.send_and_receive(messages, timeout=settings.round_timeout))
    members: dict[int, Member] = {}
    sums: ColumnSums | None = None
    refusals: dict[str, str] = {}
    for reply in replies:
        node_id = reply.metadata.src_node_id
        if reply.has_error():
            refusals[f"node-{node_id}"] = reply.error.reason or f"error {reply.error.code}"
            continue
        member, part = _member(reply)
        members[node_id] = member
        sums = part if sums is None else sums + part
    for missing in set(node_ids) - {r.metadata.src_node_id for r in replies}:
        refusals[f"node-{missing}"] = f"no reply within {settings.round_timeout:.0f} s"
    for member in members.values():
        events.emit(
            "joined",
            node=member.name,
            organisation=member.organisation,
            train_rows=member.train_rows,
            test_rows=member.test_rows,
        )
    for node, reason in refusals.items():
        logger.warning("%s", reason)
        events.emit("refused", node=node, reason=reason)
    tracker.log_params(
        {
            "nodes": ",".join(sorted(m.name for m in members.values())),
            "num_nodes": len(members),
            "refused_nodes": len(refusals),
        }
    )
    if refusals:
        tracker.log_text("\n".join(f"{n}: {r}" for n, r in refusals.items()) + "\n", "nodes/refusals.txt")
    tracker.log_metrics(
        {f"node.{m.name}.baseline.{k}": v for m in members.values() for k, v in m.baseline.items() if _finite(v)},
        step=0,
    )
    if len(members) < settings.min_nodes:
        detail = "; ".join(refusals.values()) or "no node answered"
        raise RunFailedError(
            f"{len(members)} node(s) accepted the task, fewer than min-nodes = {settings.min_nodes}: {detail}"
        )
    if spec.scaling == "none" or sums is None:
        return members, Scaler.identity(len(spec.encoded_names))
    return members, Scaler.from_sums(sums)


def _member(reply: Message) -> tuple[Member, ColumnSums]:
    """A node's answer to the prepare query: who it is, its baseline, its column sums."""
    node, metrics = config_of(reply, keys.NODE), metrics_of(reply)
    member = Member(
        node_id=reply.metadata.src_node_id,
        name=text(node, keys.NODE_NAME),
        organisation=text(node, keys.ORGANISATION),
        train_rows=int(number(node, keys.TRAIN_ROWS)),
        test_rows=int(number(node, keys.TEST_ROWS)),
        baseline={
            k.removeprefix(keys.BASELINE_PREFIX): number(metrics, k)
            for k in metrics
            if k.startswith(keys.BASELINE_PREFIX)
        },
    )
    sums = ColumnSums(
        *(np.asarray(numbers(metrics, k)) for k in (keys.COLUMN_COUNT, keys.COLUMN_SUM, keys.COLUMN_SQUARES))
    )
    return member, sums


def _wait_for_nodes(grid: Grid, wanted: int, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while len(node_ids := list(grid.get_node_ids())) < wanted and time.monotonic() < deadline:
        time.sleep(0.5)
    logger.info("%d node(s) connected (waited for %d)", len(node_ids), wanted)
    return sorted(node_ids)


def _summary(members: dict[int, Member], spec: TaskSpec) -> dict[str, Any]:
    rows = [
        {
            "node": m.name,
            "organisation": m.organisation,
            "train_rows": m.train_rows,
            "test_rows": m.test_rows,
            "federated": m.final,
            "local_only": m.baseline,
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
