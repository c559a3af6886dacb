"""Flower's grid, asking for replies often enough not to leave a round waiting."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid

__all__ = ["DelegatingGrid", "PromptGrid"]

#: Seconds between two pulls while replies are outstanding. Flower's deployment grid waits 3 s,
#: which is most of a round when nodes answer in well under a second; a pull is one small
#: request to the SuperLink on loopback.
PULL_INTERVAL = 0.2


class DelegatingGrid(Grid):
    """A Grid that hands every call to the ``grid`` it wraps; subclasses change what they need."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def set_run(self, run: Any) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Any:
        return self.grid.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.grid.send_and_receive(messages, timeout=timeout)


class PromptGrid(DelegatingGrid):
    """Delegates to Flower's grid; only ``send_and_receive`` pulls every ``PULL_INTERVAL`` seconds.

    It pushes and pulls with the wrapped grid's own ``push_messages`` and ``pull_messages``, so
    the messages and their checks are Flower's; the loop keeps Flower's timeout semantics. When
    the SuperLink answers for a node it has lost (its "Node Unavailable" error comes from the
    SuperLink's own node id), the error is handed on as the reply of the node it concerns, so a
    round's report names that node.
    """

    def __init__(self, grid: Grid, pull_interval: float = PULL_INTERVAL) -> None:
        super().__init__(grid)
        # Flower's in-memory grid (the simulation runtime) already pulls every 0.1 s.
        self.pull_interval = min(pull_interval, float(getattr(grid, "pull_interval", pull_interval)))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push ``messages``, then pull until every one is answered or ``timeout`` seconds pass."""
        messages = list(messages)
        waiting = set(self.grid.push_messages(messages))
        sent = {m.metadata.message_id: m for m in messages}
        deadline = time.monotonic() + (timeout or 0.0)
        replies: list[Message] = []
        while waiting:
            pulled = list(self.grid.pull_messages(waiting))
            replies.extend(_attributed(reply, sent) for reply in pulled)
            waiting.difference_update(m.metadata.reply_to_message_id for m in pulled)
            if not waiting or (timeout is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.pull_interval)
        return replies


def _attributed(reply: Message, sent: dict[str, Message]) -> Message:
    """``reply``, or, when the SuperLink answered for the node, the same error from that node."""
    asked = sent.get(reply.metadata.reply_to_message_id)
    if reply.metadata.src_node_id != SUPERLINK_NODE_ID or not reply.has_error() or asked is None:
        return reply
    return Message(reply.error, reply_to=asked)
