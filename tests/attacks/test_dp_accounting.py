"""DP accounting the coordinator would like to write: a node books what it trains, under its own key.

The issue's attacks: DP settings saying one local step while the message asks 100,000 (the ledger
showed epsilon 0.99 where about 196 was spent); ``dp-delta = 0.5`` (noise chosen for epsilon 3 at
delta 0.5 is epsilon 18.7 at 1e-5); a later run booked under an earlier run's id (a budget of 10
showed 9.62 spent where about 18 was composed). The node plans its noise from the run's booked plan
and its own rows, refuses a message that asks other steps than the plan, a delta above its limit or
1 / its training rows, and books every round under the key of the preparation it drew itself: a run
prepared again under the same run id is a new booking, whose epsilon adds to what the first spent.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lab.contract.plan import RunPlan
from lab.core.privacy import DPSettings, epsilon_for
from lab.core.training import load_node_data

from .node import SILOS, SPEC, Node, answer, refused, zero_model

PRIVATE = RunPlan(rounds=2, local_steps=25, batch_size=16, learning_rate=0.5, scored_rounds=2)
TARGET_3 = DPSettings(noise_multiplier=0.0, target_epsilon=3.0, clipping_norm=1.0, delta=1e-5)
#: Scores cost little here: the budget clause is about the training rows.
CHEAP_SCORES = ("scores-epsilon = 10.0", "scores-epsilon = 0.5")


def test_a_message_that_asks_more_steps_than_the_dp_plan_is_refused_and_the_ledger_books_the_steps_taken(
    tmp_path: Path,
) -> None:
    node = Node(tmp_path / "cleveland")
    refused(node.prepare(6, replace(PRIVATE, local_steps=100_000), TARGET_3), "limits.max-local-steps")
    answer(node.prepare(7, PRIVATE, TARGET_3))
    ins = node.instructions(PRIVATE, dp=TARGET_3, evaluate_first=False)
    refused(node.train(7, replace(ins, local_steps=1000), zero_model()), "plan")
    refused(node.train(7, replace(ins, dp=replace(TARGET_3, target_epsilon=30.0)), zero_model()), "plan")
    assert not node.train(7, ins, zero_model()).has_error()
    (entry,) = [e for e in node.ledger().entries() if e["kind"] == "training"]
    rows = len(load_node_data("cleveland", str(SILOS["cleveland"]), SPEC).train)
    assert entry["steps"] == PRIVATE.local_steps and entry["sample_rate"] == 1 / -(-rows // PRIVATE.batch_size)
    expected = epsilon_for(entry["noise_multiplier"], entry["sample_rate"], PRIVATE.local_steps, 1e-5)
    assert abs(entry["epsilon"] - expected) < 1e-9
    # The noise was planned for the whole run's 50 steps at epsilon 3: one round spends less.
    assert 0 < entry["epsilon"] < 3.0


def test_a_delta_above_the_limit_or_one_over_the_training_rows_is_refused(tmp_path: Path) -> None:
    node = Node(tmp_path / "cleveland")
    refused(node.prepare(7, PRIVATE, replace(TARGET_3, delta=0.5)), "limits.max-delta")
    # An operator who raised the limit is still held to 1 / rows: Switzerland trains on 30 rows.
    small = Node(tmp_path / "switzerland", name="switzerland", table=SILOS["switzerland"],
                 clauses=(("max-delta = 1e-05", "max-delta = 0.5"),))  # fmt: skip
    reason = refused(small.prepare(7, PRIVATE, replace(TARGET_3, delta=0.05)), "limits.max-delta")
    assert "not below 1 /" in reason
    assert small.ledger().entries() == [] and node.ledger().entries() == []


def test_a_run_prepared_again_under_an_earlier_runs_id_adds_to_what_that_one_spent(tmp_path: Path) -> None:
    node = Node(tmp_path / "cleveland", clauses=(("node-figures = false", "epsilon-budget = 10.0"), CHEAP_SCORES))
    spend_6 = replace(TARGET_3, target_epsilon=6.0)
    answer(node.prepare(7, PRIVATE, spend_6))
    for server_round in (1, 2):
        ins = node.instructions(PRIVATE, dp=spend_6, evaluate_first=False, server_round=server_round)
        assert not node.train(7, ins, zero_model()).has_error()
    spent = node.ledger().spent()
    assert 5.9 < spent <= 6.0 + 1e-9
    # The same run id again: a new booking, whose plan with the first's spending is over budget.
    refused(node.prepare(7, PRIVATE, spend_6), "allow.epsilon-budget")
    # A round of the first run asked again is refused too: trained once per preparation.
    ins = node.instructions(PRIVATE, dp=spend_6, evaluate_first=False, server_round=2)
    refused(node.train(7, ins, zero_model()), "plan")
    assert node.ledger().spent() == spent
