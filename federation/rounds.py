"""The rounds of a training run: Flower's strategy configures and aggregates every round, the
grid carries the messages, and after each round the coordinator keeps a checkpoint (what
Flower's ``Strategy.start`` does, from any round, so that a resumed run goes on where it stopped)."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

__all__ = ["run_rounds"]


def run_rounds(
    grid: Grid,
    strategy: Strategy,
    arrays: ArrayRecord,
    *,
    rounds: range,
    timeout: float,
    train_config: ConfigRecord,
    after_round: Callable[[int, ArrayRecord], None],
) -> ArrayRecord:
    """Train ``rounds`` from ``arrays`` (the global model before the first of them); the global
    model after each round is handed to ``after_round``. Evaluation happens inside the train
    messages (the lab's strategies evaluate in no separate message)."""
    for server_round in rounds:
        messages = strategy.configure_train(server_round, arrays, train_config, grid)
        replies = grid.send_and_receive(messages, timeout=timeout)
        aggregated, _ = strategy.aggregate_train(server_round, replies)
        if aggregated is not None:
            arrays = aggregated
        after_round(server_round, arrays)
    return arrays
