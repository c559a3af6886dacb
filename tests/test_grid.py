"""The coordinator's grid wrapper: replies read promptly, Flower's timeout kept (a stand-in grid)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from federation.grid import PromptGrid


class _Grid:
    """Answers message i on the ``ready[i]``-th pull (never when None)."""

    def __init__(self, ready: list[int | None], pull_interval: float | None = None) -> None:
        self.ready = ready
        self.pulls = 0
        if pull_interval is not None:
            self.pull_interval = pull_interval

    def push_messages(self, messages: Any) -> list[str]:
        return [str(i) for i, _ in enumerate(messages)]

    def pull_messages(self, ids: Any) -> list[Any]:
        self.pulls += 1
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
            for i in sorted(ids)
            if self.ready[int(i)] is not None and self.ready[int(i)] == self.pulls
        ]


def test_every_reply_is_collected_as_soon_as_it_is_in() -> None:
    grid = _Grid([1, 3, 2])
    started = time.monotonic()
    replies = list(PromptGrid(grid, pull_interval=0.01).send_and_receive(["a", "b", "c"], timeout=5))
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["0", "1", "2"]
    assert grid.pulls == 3
    assert time.monotonic() - started < 1


def test_a_missing_reply_ends_at_the_timeout_with_the_others() -> None:
    replies = list(PromptGrid(_Grid([1, None]), pull_interval=0.01).send_and_receive(["a", "b"], timeout=0.2))
    assert [r.metadata.reply_to_message_id for r in replies] == ["0"]


def test_a_grid_that_already_polls_faster_keeps_its_pace() -> None:
    assert PromptGrid(_Grid([], pull_interval=0.1)).pull_interval == 0.1
    assert PromptGrid(_Grid([])).pull_interval == 0.2
