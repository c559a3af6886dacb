"""The node's side of its agreement: what each message asks for, what each reply lets out, and the audit."""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Error, Message, MessageType, RecordDict

from lab.contract import keys
from lab.contract.records import config_of, text
from lab.core.spec import parse_spec
from lab.errors import LabError
from lab.node.agreement import Agreement, Refusal, Request, load_agreement
from lab.node.audit import AuditLog
from lab.node.guard import APP_HASH_ENV

__all__ = ["governed", "node_agreement"]

logger = logging.getLogger(__name__)

Handler = Callable[[Message, Context], Message]

#: Metric keys checked by other clauses than allow.metrics: the row count (min-rows), the
#: scalers' column and target sums (statistics) and the privacy spent (the node's own accounting).
_NOT_METRICS = {
    keys.NUM_EXAMPLES,
    keys.COLUMN_COUNT,
    keys.COLUMN_SUM,
    keys.COLUMN_SQUARES,
    keys.TARGET_COUNT,
    keys.TARGET_SUM,
    keys.TARGET_SQUARES,
    keys.DP_EPSILON,
}


def governed(handler: Handler) -> Handler:
    """Check a message against the node's agreement before any data is read, check the reply
    before it leaves, audit the decision, and turn a refusal into an error reply naming the clause."""

    def wrapped(msg: Message, context: Context) -> Message:
        name = str(context.node_config.get(keys.NODE_NAME, f"node-{context.node_id}"))
        audit_path = str(context.node_config.get(keys.AUDIT_LOG, ""))
        try:
            agreement = node_agreement(context)
            if agreement is not None:
                agreement.check(_asked(msg, agreement))
            reply = handler(msg, context)
            if agreement is not None and not reply.has_error():
                agreement.check(_released(msg, reply, agreement))
        except LabError as exc:
            clause = exc.clause if isinstance(exc, Refusal) else None
            logger.error("node %s refused the %s message: %s", name, msg.metadata.message_type, exc)
            _audit(audit_path, msg, "refused", clause=clause, reason=str(exc))
            return Message(Error(code=keys.REFUSED, reason=f"node {name!r} refused: {exc}"), reply_to=msg)
        except Exception as exc:  # a bug in the lab: one line to the coordinator, the traceback kept here
            where = _keep_traceback(audit_path, msg)
            reason = f"internal error (a bug in the lab): {type(exc).__name__}: {exc}; {where}"
            _audit(audit_path, msg, "failed", reason=reason)
            return Message(Error(code=keys.FAILED, reason=f"node {name!r} failed: {reason}"), reply_to=msg)
        _audit(audit_path, msg, "accepted", reply=reply)
        return reply

    return wrapped


def _keep_traceback(audit_path: str, msg: Message) -> str:
    """Log the exception being handled and write it to the node's home (beside its audit log)."""
    text = traceback.format_exc()
    logger.error("%s", text)
    if not audit_path:
        return "the traceback is in the node's log"
    folder = Path(audit_path).parent / "errors"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-run{msg.metadata.run_id}-{msg.metadata.message_type}.txt"
    path.write_text(text, encoding="utf-8")
    return f"the traceback is in the node's home, errors/{path.name}"


def node_agreement(context: Context) -> Agreement | None:
    """The node's data-use agreement, when its SuperNode was given one."""
    path = str(context.node_config.get(keys.AGREEMENT, ""))
    return load_agreement(path) if path else None


def _asked(msg: Message, agreement: Agreement) -> Request:
    """What the message will make leave the node, known before any data is read."""
    config = config_of(msg)
    spec = parse_spec(text(config, keys.TASK_SPEC), source="the run's task spec")
    kind = msg.metadata.message_type
    if kind == keys.CATALOG_MESSAGE_TYPE:
        return Request(spec.name, spec.sha256, None, frozenset({"catalog"}), frozenset(), agreement.min_rows)
    if kind == keys.STATS_MESSAGE_TYPE:  # every count under min-rows is suppressed by the node itself
        return Request(spec.name, spec.sha256, None, frozenset({"analytics"}), frozenset(), agreement.min_rows)
    outputs = {"metrics"}
    metrics = set(spec.metrics)
    if kind == MessageType.TRAIN:
        outputs.add("model-updates")
        metrics.add(keys.TRAIN_LOSS)
    elif kind == keys.PREPARE_MESSAGE_TYPE and spec.scaling == "federated":
        outputs.add("statistics")
    return Request(
        task=spec.name,
        task_sha256=spec.sha256,
        strategy=str(config.get(keys.STRATEGY, "")),
        outputs=frozenset(outputs),
        metrics=frozenset(metrics),
        rows=agreement.min_rows,  # the row count is checked on the reply, once the rows are loaded
        differential_privacy=bool(config.get(keys.DIFFERENTIAL_PRIVACY, False)),
    )


def _released(msg: Message, reply: Message, agreement: Agreement) -> Request:
    """What the reply actually carries out of the node."""
    config = config_of(msg)
    spec = parse_spec(text(config, keys.TASK_SPEC), source="the run's task spec")
    content = reply.content
    if msg.metadata.message_type in (keys.CATALOG_MESSAGE_TYPE, keys.STATS_MESSAGE_TYPE):
        return _asked(msg, agreement)  # counts under min-rows are already hidden
    outputs, metrics, rows = set(), set(), 0
    if content.array_records:
        outputs.add("model-updates")
    for record in content.metric_records.values():
        rows = int(record.get(keys.NUM_EXAMPLES, 0))  # type: ignore[arg-type]
        names = {k.removeprefix(keys.EVAL_PREFIX).removeprefix(keys.BASELINE_PREFIX) for k in record} - _NOT_METRICS
        metrics |= names
        if names:
            outputs.add("metrics")
        if keys.COLUMN_SUM in record:
            outputs.add("statistics")
    if not outputs:  # nothing computed on rows leaves (scores withheld): no row count to check
        rows = agreement.min_rows
    return Request(
        spec.name,
        spec.sha256,
        str(config.get(keys.STRATEGY, "")),
        frozenset(outputs),
        frozenset(metrics),
        rows,
        bool(config.get(keys.DIFFERENTIAL_PRIVACY, False)),
    )


def _audit(
    path: str,
    msg: Message,
    decision: str,
    *,
    clause: str | None = None,
    reason: str | None = None,
    reply: Message | None = None,
) -> None:
    if not path:
        return
    AuditLog(path).append(
        run_id=msg.metadata.run_id,
        app_hash=os.environ.get(APP_HASH_ENV, "unchecked"),
        message_type=msg.metadata.message_type,
        decision=decision,
        clause=clause,
        reason=reason,
        left_node=_left_node(reply.content) if reply is not None else [],
        suppressed=_suppressed(reply.content) if reply is not None else "",
    )


def _suppressed(content: RecordDict) -> str:
    """What the node held back under its minimum cell count, as its reply says."""
    node = content.config_records.get(keys.NODE)
    return str(node.get(keys.SUPPRESSED, "")) if node is not None else ""


def _left_node(content: RecordDict) -> list[dict[str, object]]:
    """Record names and sizes, and metric names: what a reply carries out of the node."""
    out: list[dict[str, object]] = []
    for key, record in content.array_records.items():
        out.append({"record": key, "kind": "arrays", "bytes": record.count_bytes()})
    for key, metrics in content.metric_records.items():
        out.append({"record": key, "kind": "metrics", "names": sorted(metrics)})
    for key, config in content.config_records.items():
        out.append({"record": key, "kind": "config", "names": sorted(config)})
    return out
