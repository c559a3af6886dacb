"""The in-process runtime's Grid (benchmarks/inprocess.py), on which the task matrix runs: each
message reaches its node's ClientApp as Flower would hand it over, with that node's context of
the run, and a node whose app raises answers with Flower's error reply."""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.supercore.run import Run

from federation.grid import PromptGrid

from .conftest import ROOT

#: A node's app that counts, in its context, the messages it was sent, and fails when asked to.
counting = ClientApp()


@counting.query("count")
def count(message: Message, context: Context) -> Message:
    seen = int(context.state.config_records.get("seen", ConfigRecord({"n": 0}))["n"]) + 1
    context.state.config_records["seen"] = ConfigRecord({"n": seen})
    if message.content.config_records["ask"]["fail"]:
        raise ValueError("asked to fail")
    answer = {"n": seen, "node": context.node_config["node-name"], "node_id": context.node_id, "run": context.run_id}
    return Message(RecordDict({"answer": ConfigRecord(answer)}), reply_to=message)


@pytest.fixture
def inprocess() -> ModuleType:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import inprocess

    return inprocess


def _grid(inprocess: ModuleType) -> Any:
    nodes = [
        inprocess.InProcessNode(node_id, {"node-name": name}, counting) for node_id, name in ((11, "a"), (12, "b"))
    ]
    return PromptGrid(inprocess.InProcessGrid(nodes, Run.create_empty(run_id=1)))  # the ServerApp's wrapper


def _ask(node_id: int, fail: bool = False) -> Message:
    return Message(RecordDict({"ask": ConfigRecord({"fail": fail})}), dst_node_id=node_id, message_type="query.count")


def _in_order(asked: list[Message], replies: Any) -> list[Message]:
    """The replies in the order of the messages they answer (Flower's grids give them in any order)."""
    by_message = {reply.metadata.reply_to_message_id: reply for reply in replies}
    assert len(by_message) == len(asked)
    return [by_message[message.metadata.message_id] for message in asked]


def _answers(replies: list[Message]) -> list[dict[str, Any]]:
    return [dict(reply.content.config_records["answer"]) for reply in replies]


def test_each_node_answers_with_its_own_context_of_the_run(inprocess: ModuleType, identity: None) -> None:
    grid = _grid(inprocess)
    assert sorted(grid.get_node_ids()) == [11, 12]
    asked = [_ask(11), _ask(12), _ask(11)]
    replies = _in_order(asked, grid.send_and_receive(asked, timeout=5))
    assert [(r.metadata.src_node_id, r.metadata.dst_node_id) for r in replies] == [(11, 1), (12, 1), (11, 1)]
    assert _answers(replies) == [
        {"n": 1, "node": "a", "node_id": 11, "run": 1},
        {"n": 1, "node": "b", "node_id": 12, "run": 1},
        {"n": 2, "node": "a", "node_id": 11, "run": 1},  # the state its app kept at the first message
    ]


def test_a_node_whose_app_raises_answers_with_flowers_error_and_keeps_its_context(
    inprocess: ModuleType, identity: None
) -> None:
    grid = _grid(inprocess)
    asked = [_ask(11, fail=True), _ask(12)]
    failed = _in_order(asked, grid.send_and_receive(asked, timeout=5))
    assert failed[0].has_error() and failed[0].error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert failed[0].error.reason == "<class 'ValueError'>:<'asked to fail'>"  # as Flower words it
    assert failed[0].metadata.src_node_id == 11
    assert _answers(failed[1:]) == [{"n": 1, "node": "b", "node_id": 12, "run": 1}]
    # As on Flower's runtimes, the context a failed app changed is not kept.
    assert _answers(list(grid.send_and_receive([_ask(11)], timeout=5))) == [
        {"n": 1, "node": "a", "node_id": 11, "run": 1}
    ]


def test_a_message_flower_would_not_take_is_not_delivered(
    inprocess: ModuleType, identity: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    grid = _grid(inprocess).grid
    assert list(grid.push_messages([_ask(13)])) == []  # to no node of the run
    monkeypatch.setattr(TaskIdentity, "_run_id", 2)
    assert list(grid.push_messages([_ask(11)])) == []  # made in another run
    assert grid.nodes[11].contexts == {}  # nothing reached a node


def test_a_valued_run_sends_the_coalitions_with_the_final_evaluation(
    inprocess: ModuleType, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exact contributions add no exchange with the nodes: each node's candidates message goes in
    the same push as its final evaluation (a SuperNode takes the second at once, with no idle
    poll), and the values are made from those replies."""
    from lab.core.spec import load_spec
    from lab.runtime.run import run_settings

    from .conftest import HEART, SILOS

    pushes: list[list[tuple[int, str]]] = []
    push = inprocess.InProcessGrid.push_messages

    def recorded(self: Any, messages: Any) -> Any:
        messages = list(messages)
        pushes.append(sorted((m.metadata.dst_node_id, m.metadata.message_type) for m in messages))
        return push(self, messages)

    monkeypatch.setattr(inprocess.InProcessGrid, "push_messages", recorded)
    nodes = {name: str(SILOS[name]) for name in ("cleveland", "hungary", "va")}
    values = {"num_rounds": 1, "contributions": True, "register": False}
    settings = run_settings(
        load_spec(HEART / "task.toml"), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", nodes=3, values=values
    )
    final = inprocess.run_federation(settings, nodes, tmp_path / "run")["final"]
    assert [{kind for _, kind in push} for push in pushes] == [
        {"query.prepare"},
        {"train"},
        {"evaluate", "evaluate.candidates"},
    ]
    last = pushes[-1]
    assert sorted({node for node, _ in last}) == sorted({node for node, kind in last if kind == "evaluate.candidates"})
    contributions = final["contributions"]
    assert set(contributions["scored_by"].values()) == {"scored"} and contributions["coalitions_scored"] == 8
