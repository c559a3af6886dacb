"""The coordinator's first step: every node checks its environment and table, and says who it is."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from federation.recorder import EventLog, Member
from lab.contract import keys
from lab.contract.provenance import lock_config
from lab.contract.records import config_of, error_reason, metrics_of, number, numbers, text
from lab.contract.settings import RunSettings
from lab.core.environment import Environment
from lab.core.preprocess import ColumnSums, Scaler
from lab.core.privacy import dp_config
from lab.core.spec import TaskSpec
from lab.errors import RunFailedError
from lab.registry.tracking import Tracker

__all__ = ["Guard", "preflight", "prepare", "wait_for_nodes"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Guard:
    """The coordinator's check of each reply: the spec it used and the environment it ran in.

    Under ``strict`` a node whose environment differs from the lock is not aggregated; under
    ``warn`` it is, and the run is flagged.
    """

    lock: Environment | None
    policy: str
    spec_sha256: str

    def screen(self, node: ConfigRecord, pins: list[str] | None = None) -> tuple[str | None, str | None]:
        """(reason to refuse, warning) for a reply's NODE record."""
        if text(node, keys.SPEC_FINGERPRINT) != self.spec_sha256:
            return "it used a different task spec than the run's", None
        if self.lock is None or text(node, keys.ENV_FINGERPRINT) == self.lock.fingerprint:
            return None, None
        if pins is not None:
            here = Environment.from_pins(text(node, keys.ENV_PYTHON), text(node, keys.ENV_PLATFORM), pins)
            detail = here.diff(self.lock).summary()
        else:
            detail = f"fingerprint {text(node, keys.ENV_FINGERPRINT)[:12]}, lock {self.lock.fingerprint[:12]}"
        message = f"its environment differs from the lock ({detail})"
        return (message, None) if self.policy == "strict" else (None, message)


def prepare(
    grid: Grid, spec: TaskSpec, settings: RunSettings, guard: Guard, tracker: Tracker, events: EventLog
) -> tuple[dict[int, Member], Scaler, Scaler]:
    """Ask every connected node to check its environment and table, share column sums and run
    its local-only baseline; returns the nodes that take part and the federated scalers of the
    features and of a regression target (identity for other targets)."""
    node_ids = wait_for_nodes(grid, max(settings.expected_nodes, settings.min_nodes), settings.node_wait_seconds)
    config = ConfigRecord(
        {
            keys.TASK_SPEC: spec.text,
            keys.SEED: settings.seed,
            keys.BASELINE_EPOCHS: settings.baseline_epochs,
            keys.STRATEGY: settings.strategy,
            **dp_config(settings),
            **(lock_config(guard.lock, guard.policy) if guard.lock else {}),
        }
    )
    messages = [
        Message(RecordDict({keys.CONFIG: config}), dst_node_id=node_id, message_type=keys.PREPARE_MESSAGE_TYPE)
        for node_id in node_ids
    ]
    replies = list(grid.send_and_receive(messages, timeout=settings.round_timeout))
    members: dict[int, Member] = {}
    sums: ColumnSums | None = None
    target: ColumnSums | None = None
    refusals: dict[str, str] = {}
    for reply in replies:
        node_id = reply.metadata.src_node_id
        if reply.has_error():
            refusals[f"node-{node_id}"] = error_reason(reply)
            continue
        member, part, target_part = _member(reply)
        refusal, warning = guard.screen(config_of(reply, keys.NODE), member.env_pins)
        if refusal:
            refusals[member.name] = f"node {member.name!r} not admitted by the coordinator: {refusal}"
            continue
        member.warning = warning or member.warning
        members[node_id] = member
        sums = part if sums is None else sums + part
        if target_part is not None:
            target = target_part if target is None else target + target_part
    for missing in set(node_ids) - {r.metadata.src_node_id for r in replies}:
        refusals[f"node-{missing}"] = f"node-{missing}: no reply within {settings.round_timeout:.0f} s"
    _record(members, refusals, tracker, events)
    if len(members) < settings.min_nodes:
        wanted = max(settings.expected_nodes, settings.min_nodes)
        if len(node_ids) < wanted:
            refusals["connected"] = (
                f"only {len(node_ids)} of {wanted} node(s) connected within node-wait-seconds = "
                f"{settings.node_wait_seconds:.0f}; check the nodes' logs"
            )
        detail = "; ".join(refusals.values()) or "no node answered"
        raise RunFailedError(
            f"{len(members)} node(s) accepted the task, fewer than min-nodes = {settings.min_nodes}: {detail}"
        )
    if spec.scaling == "none" or sums is None:
        return members, Scaler.identity(len(spec.encoded_names)), Scaler.identity(1)
    return members, Scaler.from_sums(sums), Scaler.from_sums(target) if target is not None else Scaler.identity(1)


def preflight(grid: Grid, spec: TaskSpec, settings: RunSettings, tracker: Tracker) -> dict[str, Any]:
    """Ask every node for its catalog and its table's problems against the spec; train nothing."""
    node_ids = wait_for_nodes(grid, max(settings.expected_nodes, settings.min_nodes), settings.node_wait_seconds)
    config = ConfigRecord({keys.TASK_SPEC: spec.text})
    messages = [
        Message(RecordDict({keys.CONFIG: config}), dst_node_id=node_id, message_type=keys.CATALOG_MESSAGE_TYPE)
        for node_id in node_ids
    ]
    nodes: dict[str, dict[str, Any]] = {}
    for reply in grid.send_and_receive(messages, timeout=settings.round_timeout):
        if reply.has_error():
            nodes[f"node-{reply.metadata.src_node_id}"] = {"refused": error_reason(reply)}
            continue
        node = config_of(reply, keys.NODE)
        nodes[text(node, keys.NODE_NAME)] = {
            "organisation": text(node, keys.ORGANISATION),
            "catalog": json.loads(text(node, keys.CATALOG_JSON)),
            "problems": json.loads(text(node, keys.PREFLIGHT_JSON)),
        }
    tracker.log_text(json.dumps(nodes, indent=2), "nodes/preflight.json")
    tracker.log_params({"mode": "check", "num_nodes": len(nodes)})
    return {"preflight": nodes}


def _member(reply: Message) -> tuple[Member, ColumnSums, ColumnSums | None]:
    """A node's answer to the prepare query: who it is, its fingerprints, baseline, column sums and
    (for a regression target) the target's sums."""
    node, metrics = config_of(reply, keys.NODE), metrics_of(reply)
    pins = node.get(keys.ENV_PINS)
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
        env_fingerprint=text(node, keys.ENV_FINGERPRINT),
        data_fingerprint=text(node, keys.DATA_FINGERPRINT),
        env_pins=[str(p) for p in pins] if isinstance(pins, list) else None,
        warning=(
            f"its environment differs from the lock ({text(node, keys.ENV_DRIFT)})"
            if text(node, keys.ENV_DRIFT)
            else None
        ),
        privacy={
            name: number(node, key)
            for name, key in (
                ("dp_noise_multiplier", keys.DP_NOISE_USED),
                ("dp_planned_epsilon", keys.DP_PLANNED_EPSILON),
            )
            if key in node
        },
        suppressed=str(node.get(keys.SUPPRESSED, "")),
    )
    sums = ColumnSums(
        *(np.asarray(numbers(metrics, k)) for k in (keys.COLUMN_COUNT, keys.COLUMN_SUM, keys.COLUMN_SQUARES))
    )
    target = None
    if keys.TARGET_SUM in metrics:
        target = ColumnSums(
            *(np.asarray([number(metrics, k)]) for k in (keys.TARGET_COUNT, keys.TARGET_SUM, keys.TARGET_SQUARES))
        )
    return member, sums, target


def _record(members: dict[int, Member], refusals: dict[str, str], tracker: Tracker, events: EventLog) -> None:
    """Who joined, who was refused and why, and every node's fingerprints, to MLflow and the CLI."""
    for member in members.values():
        events.emit(
            "joined",
            node=member.name,
            organisation=member.organisation,
            train_rows=member.train_rows,
            test_rows=member.test_rows,
        )
        if member.warning:
            events.emit("warning", node=member.name, reason=f"node {member.name!r}: {member.warning}")
        if member.suppressed:
            events.emit("warning", node=member.name, reason=f"node {member.name!r}: {member.suppressed}")
    for node, reason in refusals.items():
        logger.warning("%s", reason)
        events.emit("refused", node=node, reason=reason)
    names = sorted(m.name for m in members.values())
    tracker.log_params({"nodes": ",".join(names), "num_nodes": len(members), "refused_nodes": len(refusals)})
    for m in members.values():
        tracker.log_params(
            {
                f"node.{m.name}.env_fingerprint": m.env_fingerprint,
                f"node.{m.name}.data_sha256": m.data_fingerprint,
                f"node.{m.name}.train_rows": m.train_rows,
                **{f"node.{m.name}.{k}": v for k, v in m.privacy.items()},
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
            "train_rows": m.train_rows,
            "test_rows": m.test_rows,
            "warning": m.warning,
            "suppressed": m.suppressed,
            **m.privacy,
        }
        for m in members.values()
    }
    tracker.log_text(json.dumps({"members": fingerprints, "refused": refusals}, indent=2), "nodes/fingerprints.json")
    tracker.log_metrics(
        {f"node.{m.name}.baseline.{k}": v for m in members.values() for k, v in m.baseline.items() if math.isfinite(v)},
        step=0,
    )


def wait_for_nodes(grid: Grid, wanted: int, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while len(node_ids := list(grid.get_node_ids())) < wanted and time.monotonic() < deadline:
        time.sleep(0.5)
    logger.info("%d node(s) connected (waited for %d)", len(node_ids), wanted)
    return sorted(node_ids)
