"""Training inversion: a curious coordinator reads training rows back out of a node's update.

One train message with a minibatch of one row, one local step, learning rate 1, zero weights and
the identity scaler: for a linear model (or an MLP's first layer) the row is the weight change
over the bias change, every feature exactly, and its label is the bias change's sign. A node
holds the line by its limits: no minibatch under ``limits.min-batch-size`` (16), and no message
departing from the plan the run's preparation booked. At the defaults, the best a single message
allows (the smallest minibatch, one step, the largest learning rate, zero weights, over several
rounds with fresh seeds) reconstructs nothing nearer a training row than a row the node never
trained on is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lab.contract.messages import TrainReply
from lab.contract.plan import RunPlan
from lab.core.preprocess import Scaler, encode
from lab.core.training import load_node_data

from .node import SPEC, Node, answer, refused, zero_model

#: The issue's message: one row, one step, learning rate 1.
ONE_ROW = RunPlan(rounds=1, local_steps=1, batch_size=1, learning_rate=1.0, scored_rounds=1)


def _reconstructed(reply_arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The attacker's reading of an update of zero weights: weight change over bias change."""
    return (reply_arrays["0.weight"].reshape(-1) / reply_arrays["0.bias"].reshape(-1)[0]).astype(np.float64)


class Distances:
    """How near a point is to the node's nearest training row, in the node's own standard units;
    and the same for each of its test rows (rows it never trained on: what 'a random row' is)."""

    def __init__(self, node: Node) -> None:
        data = load_node_data(node.name, str(node.table), SPEC)
        self.train = encode(data.train.features, SPEC)
        self.scaler = Scaler.fit(self.train)
        test = encode(data.test.features, SPEC)
        self.others = np.array([self(row) for row in test])

    def __call__(self, point: np.ndarray) -> float:
        scaled = self.scaler.transform(self.train).astype(np.float64)
        there = self.scaler.transform(point.reshape(1, -1)).astype(np.float64)
        return float(np.sqrt(((scaled - there) ** 2).sum(axis=1)).min())


def _arrays(reply: object) -> dict[str, np.ndarray]:
    trained = TrainReply.of(reply)  # type: ignore[arg-type]
    assert trained.arrays is not None
    return {k: a.numpy() for k, a in trained.arrays.items()}


def test_one_row_one_step_at_learning_rate_one_is_refused_at_preparation_and_in_a_message(tmp_path: Path) -> None:
    node = Node(tmp_path / "cleveland")
    # Asked for at preparation: the node's limit names the clause, before a row is read.
    refused(node.prepare(7, ONE_ROW), "limits.min-batch-size")
    # Slipped into a run prepared honestly: the message departs from the booked plan.
    answer(node.prepare(8))
    attack = node.instructions(batch_size=1, local_steps=1, learning_rate=1.0)
    refused(node.train(8, attack, zero_model()), "plan")
    # A run never prepared here is refused too: a run's messages follow its preparation.
    refused(node.train(9, attack, zero_model()), "plan")
    assert [e["decision"] for e in node.audit()] == ["refused", "accepted", "refused", "refused"]


def test_the_attack_reads_a_row_exactly_where_an_operator_allowed_one_row_minibatches(tmp_path: Path) -> None:
    # The attack's teeth: an organisation that lowered the limit to 1 gives its rows away.
    node = Node(tmp_path / "cleveland", clauses=(("min-batch-size = 16", "min-batch-size = 1"),))
    answer(node.prepare(7, ONE_ROW))
    reply = node.train(7, node.instructions(ONE_ROW, seed=3), zero_model())
    assert Distances(node)(_reconstructed(_arrays(reply))) < 1e-4  # a training row, every feature


def test_at_the_defaults_no_message_reconstructs_a_row_nearer_than_a_row_never_trained_on(tmp_path: Path) -> None:
    node = Node(tmp_path / "cleveland")
    rounds = 10
    best = RunPlan(rounds=rounds, local_steps=1, batch_size=16, learning_rate=1.0, scored_rounds=rounds)
    answer(node.prepare(7, best))
    distances = Distances(node)
    found = []
    for server_round in range(1, rounds + 1):
        instructions = node.instructions(best, seed=1000 + server_round, server_round=server_round)
        reconstructed = _reconstructed(_arrays(node.train(7, instructions, zero_model())))
        if np.isfinite(reconstructed).all():  # a minibatch of as many rows of each class gives nothing
            found.append(distances(reconstructed))
    typical = float(np.percentile(distances.others, 5))
    assert found and min(found) >= typical, (min(found), typical)
