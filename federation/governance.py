"""The node's side of its agreement: what each message asks for, what each reply lets out, and the audit."""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from flwr.app import Context, Error, Message, RecordDict

from lab.contract import keys
from lab.contract.messages import NodeReport, carry_audit_head
from lab.core.environ import APP_HASH
from lab.errors import LabError, Refusal
from lab.node.agreement import UNBOUND, Agreement, Request
from lab.node.audit import AuditHead, AuditLog
from lab.node.site import NodeSite

__all__ = ["Checks", "audit", "governed"]

logger = logging.getLogger(__name__)

Handler = Callable[[Message, Context], Message]


class Checks(Protocol):
    """What a message asks of the node before any data is read, and what its reply releases."""

    def asked(self, msg: Message, context: Context) -> dict[str, Any]:
        """What the message asks, in full, for the node's audit log (before anything is checked)."""
        ...

    def asks(self, msg: Message, context: Context, agreement: Agreement) -> Request: ...

    def releases(self, msg: Message, reply: Message, context: Context, agreement: Agreement) -> Request: ...


def governed(checks: Checks) -> Callable[[Handler], Handler]:
    """Check a message against the node's agreement before any data is read, check the reply
    before it leaves, audit the decision, and turn a refusal into an error reply naming the clause."""

    def decorate(handler: Handler) -> Handler:
        def wrapped(msg: Message, context: Context) -> Message:
            site = NodeSite.from_node_config(context.node_config, context.node_id)
            asked = _asked(checks, msg, context)
            try:
                agreement = site.agreement
                if agreement is None and not site.no_agreement:
                    raise Refusal("agreement", UNBOUND)
                if agreement is not None:
                    agreement.check(checks.asks(msg, context, agreement))
                reply = handler(msg, context)
                if agreement is not None and not reply.has_error():
                    agreement.check(checks.releases(msg, reply, context, agreement))
            except LabError as exc:
                # The operator's log and the audit entry say everything; off the node goes only what
                # names no file, database URL or cell value (LabError.off_node).
                clause = exc.clause if isinstance(exc, Refusal) else None
                logger.error("node %s refused the %s message: %s", site.name, msg.metadata.message_type, exc)
                audit(site, msg, asked, "refused", clause=clause, reason=str(exc))
                said = exc.off_node()
                return Message(Error(code=keys.REFUSED, reason=f"node {site.name!r} refused: {said}"), reply_to=msg)
            except Exception as exc:  # a bug in the lab: one line to the coordinator, the traceback kept here
                where = _keep_traceback(site.audit_path, msg)
                reason = f"internal error (a bug in the lab): {type(exc).__name__}: {exc}; {where}"
                audit(site, msg, asked, "failed", reason=reason)
                said = f"internal error (a bug in the lab): {type(exc).__name__}; {where}"  # its text may hold data
                return Message(Error(code=keys.FAILED, reason=f"node {site.name!r} failed: {said}"), reply_to=msg)
            head = audit(site, msg, asked, "accepted", reply=reply)
            if head is not None:  # the coordinator records it: a log later cut or rolled back is found
                carry_audit_head(reply, head.count, head.hash)
            return reply

        return wrapped

    return decorate


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


#: What every audit entry of a node started with --no-agreement says of it.
NO_AGREEMENT = "none: started with --no-agreement, so no clause was checked"


def _asked(checks: Checks, msg: Message, context: Context) -> dict[str, Any]:
    """What the message asks, or why it cannot be read (the refusal that follows says more)."""
    try:
        return checks.asked(msg, context)
    except Exception as exc:  # noqa: BLE001 - a malformed message is still recorded
        config = msg.content.config_records.get(keys.CONFIG)
        return {"unreadable": f"{type(exc).__name__}: {exc}"[:500], "keys": sorted(config) if config else []}


def audit(
    site: NodeSite,
    msg: Message,
    asked: dict[str, Any],
    decision: str,
    *,
    clause: str | None = None,
    reason: str | None = None,
    reply: Message | None = None,
) -> AuditHead | None:
    """Record the node's decision on ``msg`` in its audit log (its new head; None without a log):
    the handlers' through ``governed``, and a mod's that answers without one (a SecAgg+ stage)."""
    if not site.audit_path:
        return None
    extra = {"agreement": NO_AGREEMENT} if site.no_agreement else {}
    return AuditLog(site.audit_path, site.secret).append(
        run_id=msg.metadata.run_id,
        app_hash=APP_HASH.get(),
        message_type=msg.metadata.message_type,
        asked=asked,
        decision=decision,
        clause=clause,
        reason=reason,
        left_node=_left_node(reply.content) if reply is not None else [],
        suppressed=_suppressed(reply) if reply is not None else "",
        **extra,
    )


def _suppressed(reply: Message) -> str:
    """What the node held back under its minimum cell count, as its reply says."""
    node = reply.content.config_records.get(keys.NODE)
    if node is None:
        return ""
    if keys.ANSWER in node:  # a query's answer
        return str(json.loads(str(node[keys.ANSWER])).get("suppressed", ""))
    report = NodeReport.of(reply)
    return report.suppressed if report is not None else ""


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
