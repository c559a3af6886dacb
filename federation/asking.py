"""The coordinator's half of every query: wait for the nodes, send the request, gather the answers."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from lab.contract.messages import QueryMessage, QueryReply
from lab.contract.records import error_reason
from lab.contract.settings import RunSettings
from lab.core.spec import TaskSpec
from lab.errors import SettingsError
from lab.queries.base import Answers, Ask, NodeAnswer, QueryKind

__all__ = ["asker", "chosen", "wait_for_nodes"]

logger = logging.getLogger(__name__)


def wait_for_nodes(grid: Grid, wanted: int, seconds: float) -> list[int]:
    """The connected nodes, once ``wanted`` have connected or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while len(node_ids := list(grid.get_node_ids())) < wanted and time.monotonic() < deadline:
        time.sleep(0.5)
    logger.info("%d node(s) connected (waited for %d)", len(node_ids), wanted)
    return sorted(node_ids)


def chosen(grid: Grid, settings: RunSettings) -> list[int]:
    """The connected nodes this run asks: all of them, or those the ``nodes`` setting names."""
    node_ids = wait_for_nodes(grid, max(settings.expected_nodes, settings.min_nodes), settings.node_wait_seconds)
    if not settings.only_nodes:
        return node_ids
    names = {n.strip() for n in settings.only_nodes.split(",") if n.strip()}
    known = settings.admitted
    unknown = sorted(names - set(known.values()))
    if unknown:
        raise SettingsError(
            f"run setting only-nodes names {unknown!r}, which are not admitted; admitted: {sorted(known.values())!r}"
        )
    return [node_id for node_id in node_ids if known.get(node_id) in names]


def asker(grid: Grid, spec: TaskSpec, kind: QueryKind[Any], settings: RunSettings) -> Ask:
    """A function that puts a request of ``kind`` to every connected node and gathers the answers."""

    def ask(request: Any) -> Answers:
        node_ids = chosen(grid, settings)
        content = QueryMessage(spec.text, request.to_json() if request is not None else "").to_record()
        messages = [Message(content, dst_node_id=node_id, message_type=kind.message_type) for node_id in node_ids]
        answers: dict[str, NodeAnswer] = {}
        refusals: dict[str, str] = {}
        names = settings.admitted  # node id -> admitted name; empty where nodes are not admitted by key
        replies = list(grid.send_and_receive(messages, timeout=settings.round_timeout))
        for reply in replies:
            node_id = reply.metadata.src_node_id
            if reply.has_error():
                refusals[names.get(node_id, f"node-{node_id}")] = error_reason(reply)
                continue
            answer = QueryReply.of(reply)
            answers[answer.name] = NodeAnswer(node_id, answer.name, answer.organisation, json.loads(answer.answer))
        for missing in sorted(set(node_ids) - {r.metadata.src_node_id for r in replies}):
            name = names.get(missing, f"node-{missing}")
            refusals[name] = f"node {name!r} dropped: no reply within {settings.round_timeout:.0f} s"
        return Answers(answers, refusals, asked=len(node_ids))

    return ask
