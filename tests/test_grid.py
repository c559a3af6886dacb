"""The coordinator's grid wrapper: replies read promptly, Flower's timeout kept, and the
SuperLink's answers for a lost node handed on as that node's (a stand-in grid of real messages)."""

from __future__ import annotations

import pytest
from flwr.app import Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message
from flwr.supercore.task_identity import TaskIdentity

from federation.grid import PromptGrid


@pytest.fixture(autouse=True)
def _in_a_serverapp(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Flower sets in a ServerApp process: the run, node and task its messages come from."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)
    monkeypatch.setattr(TaskIdentity, "_task_id", 3)


def _asked(*nodes: int) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=node, message_type="train") for node in nodes]


class _Grid:
    """Flower's push/pull contract: message ``i`` is answered on pull ``ready[i]`` (never when
    None), by its node, or by the SuperLink with "Node Unavailable" when ``lost[i]``."""

    def __init__(self, ready: list[int | None], lost: tuple[int, ...] = (), pull_interval: float | None = None):
        self.ready, self.lost = ready, lost
        self.pushed: list[Message] = []
        self.pulls = 0
        if pull_interval is not None:
            self.pull_interval = pull_interval

    def push_messages(self, messages: list[Message]) -> list[str]:
        for message in messages:  # what Flower's grid does before it sends them
            message.metadata.__dict__["_message_id"] = message.object_id
        self.pushed = list(messages)
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, ids: set[str]) -> list[Message]:
        self.pulls += 1
        replies = []
        for i, message in enumerate(self.pushed):
            if message.metadata.message_id in ids and self.ready[i] == self.pulls:
                if i in self.lost:
                    replies.append(create_message_error_unavailable_res_message(message.metadata, "node_unavail"))
                else:
                    replies.append(Message(RecordDict(), reply_to=message))
        return replies


def test_every_reply_is_collected_as_soon_as_it_is_in() -> None:
    grid = _Grid([1, 3, 2])
    asked = _asked(11, 12, 13)
    replies = list(PromptGrid(grid, pull_interval=0.01).send_and_receive(asked, timeout=30))
    assert sorted(r.metadata.src_node_id for r in replies) == [11, 12, 13]
    assert grid.pulls == 3  # no pull after the last reply is in


def test_a_missing_reply_ends_at_the_timeout_with_the_others() -> None:
    replies = list(PromptGrid(_Grid([1, None]), pull_interval=0.01).send_and_receive(_asked(11, 12), timeout=0.2))
    assert [r.metadata.src_node_id for r in replies] == [11]


def test_the_superlinks_answer_for_a_lost_node_is_that_nodes_error() -> None:
    grid = _Grid([1, 1], lost=(1,))
    asked = _asked(11, 12)
    replies = {r.metadata.src_node_id: r for r in PromptGrid(grid, pull_interval=0.01).send_and_receive(asked)}
    assert sorted(replies) == [11, 12]  # not SUPERLINK_NODE_ID
    assert SUPERLINK_NODE_ID not in replies
    lost = replies[12]
    assert lost.has_error() and lost.error.code == ErrorCode.NODE_UNAVAILABLE
    assert "Node Unavailable" in lost.error.reason
    assert lost.metadata.reply_to_message_id == asked[1].metadata.message_id
    assert not replies[11].has_error()


def test_a_grid_that_already_polls_faster_keeps_its_pace() -> None:
    assert PromptGrid(_Grid([], pull_interval=0.1)).pull_interval == 0.1
    assert PromptGrid(_Grid([])).pull_interval == 0.2
