"""What a message may ask of a node: the ``[limits]`` of its agreement, each with a safe default.

An agreement's ``[allow]`` table says which code, tasks and kinds of output a node accepts; its
``[limits]`` table bounds what a message may ask that code to do. Every clause has a default that
holds where the agreement is silent (``lab agreement template`` writes them all out), because the
coordinator chooses every parameter of every message and a node obeys nothing it did not bound:

- training: the smallest minibatch (one row's gradient never leaves alone), the most local steps
  per message, the most rounds per run and runs per day, the largest model per training row, the
  learning rate's range;
- differential privacy: the largest delta and the most epsilon one run may plan;
- scores: the privacy one run's released scores may spend on the test rows (their noise), and the
  most candidate models a contribution valuation may have scored;
- analytics: the narrowest bin, in the node's own standard deviations of the column, and the
  most counts one answer may hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from lab.contract.plan import RunPlan
from lab.core.toml import TomlReader
from lab.errors import Refusal

__all__ = ["LIMIT_FIELDS", "LIMIT_KEYS", "Limits", "parse_limits"]


def _clause(default: Any, meaning: str, *, kind: type = int, least: float = 0.0, exclusive: bool = True) -> Any:
    """A clause: its default, meaning, type and lower bound (above ``least``, or from it)."""
    return field(default=default, metadata={"meaning": meaning, "kind": kind, "least": least, "exclusive": exclusive})


@dataclass(frozen=True)
class Limits:
    """The bounds a node holds every message to (``limits.KEY`` in its agreement)."""

    min_batch_size: int = _clause(
        16, "smallest minibatch the node trains on: an update never carries one row's gradient alone", least=1,
        exclusive=False,
    )  # fmt: skip
    max_local_steps: int = _clause(1000, "most minibatch updates one train message may ask for")
    max_rounds: int = _clause(50, "most rounds the node trains in one run")
    max_runs_per_day: int = _clause(50, "most training runs the node prepares in any 24 hours")
    max_parameters_per_row: float = _clause(
        1.0, "largest model, in parameters per training row: a model with more can hold its rows", kind=float
    )
    min_learning_rate: float = _clause(1e-5, "smallest learning rate a train message may ask for", kind=float)
    max_learning_rate: float = _clause(1.0, "largest learning rate a train message may ask for", kind=float)
    max_delta: float = _clause(
        1e-5, "largest delta of a differentially private run (never above 1 / training rows)", kind=float
    )
    max_epsilon_per_run: float = _clause(
        10.0, "most epsilon one differentially private run may plan on the training rows", kind=float
    )
    scores_epsilon: float = _clause(
        10.0,
        "epsilon one run's released scores may spend on the test rows: their noise grows with the models scored",
        kind=float,
    )
    max_candidates: int = _clause(256, "most models one run may have scored to value contributions")
    min_bin_width: float = _clause(
        0.25, "narrowest analytics bin, in the node's own standard deviations of the column", kind=float
    )
    max_cells: int = _clause(500, "most counts one analytics answer may hold")

    @staticmethod
    def key(name: str) -> str:
        """A field's key in the agreement's [limits] table."""
        return name.replace("_", "-")

    def clause(self, name: str) -> str:
        """How a refusal names the clause of field ``name``: ``limits.min-batch-size``."""
        return f"limits.{self.key(name)}"

    def as_toml(self) -> str:
        """Every clause with its value, one per line with its meaning, as the template writes them."""
        lines = []
        for f in fields(self):
            lines += [f"# {f.metadata['meaning']}", f"{self.key(f.name)} = {getattr(self, f.name)!r}"]
        return "\n".join(lines) + "\n"

    def check_plan(self, plan: RunPlan, *, train_rows: int, parameters: int, candidates: int, runs_today: int) -> None:
        """Refuse a run whose plan goes beyond a limit, naming the clause (at its preparation,
        before a row is used): ``parameters`` of the spec's model, the ``candidates`` its
        valuation would have scored, the runs the node prepared in the last 24 hours."""
        problems = [
            ("min_batch_size", plan.batch_size < self.min_batch_size,
             f"minibatches of {plan.batch_size} row(s) are smaller than {self.min_batch_size}: an update from so "
             "few rows can be read back into them"),
            ("max_local_steps", plan.local_steps > self.max_local_steps,
             f"{plan.local_steps:,} local steps per round are more than {self.max_local_steps:,}"),
            ("max_rounds", plan.rounds > self.max_rounds, f"{plan.rounds} rounds are more than {self.max_rounds}"),
            ("min_learning_rate", plan.learning_rate < self.min_learning_rate,
             f"learning rate {plan.learning_rate:g} is below {self.min_learning_rate:g}"),
            ("max_learning_rate", plan.learning_rate > self.max_learning_rate,
             f"learning rate {plan.learning_rate:g} is above {self.max_learning_rate:g}"),
            ("max_parameters_per_row", parameters > self.max_parameters_per_row * train_rows,
             f"the model's {parameters:,} parameters are more than {self.max_parameters_per_row:g} per training row "
             f"({train_rows} rows): a model that large can hold its rows"),
            ("max_candidates", candidates > self.max_candidates,
             f"valuing contributions over {plan.nodes} nodes would have {candidates:,} models scored, more than "
             f"{self.max_candidates:,}"),
            ("max_runs_per_day", runs_today >= self.max_runs_per_day,
             f"{runs_today} training runs were prepared here in the last 24 hours, the most allowed"),
        ]  # fmt: skip
        for name, refused, reason in problems:
            if refused:
                raise Refusal(self.clause(name), reason)

    def check_privacy(self, *, delta: float, train_rows: int, planned_epsilon: float) -> None:
        """Refuse a differentially private run whose delta is above the limit or 1 / training rows
        (a delta that large lets a row out with that probability), or that plans too much epsilon."""
        if delta > self.max_delta:
            raise Refusal(self.clause("max_delta"), f"dp-delta = {delta:g} is above {self.max_delta:g}")
        if delta >= 1 / train_rows:
            raise Refusal(
                self.clause("max_delta"),
                f"dp-delta = {delta:g} is not below 1 / {train_rows} training rows: with it one row could leave whole",
                public=f"dp-delta = {delta:g} is not below 1 / the node's training rows: one row could leave whole",
            )
        if planned_epsilon > self.max_epsilon_per_run + 1e-9:
            raise Refusal(
                self.clause("max_epsilon_per_run"),
                f"the run plans epsilon {planned_epsilon:.3f} on the training rows, more than "
                f"{self.max_epsilon_per_run:g}",
            )

    def values(self) -> dict[str, Any]:
        """Every clause by its agreement key (``limits.KEY``), for a run's record."""
        return {self.clause(f.name): getattr(self, f.name) for f in fields(self)}


#: Each clause's key in the [limits] table.
LIMIT_KEYS = tuple(Limits.key(f.name) for f in fields(Limits))
#: Each clause and what it means, for `lab agreement check`.
LIMIT_FIELDS = {f"limits.{Limits.key(f.name)}": str(f.metadata["meaning"]) for f in fields(Limits)}


def parse_limits(r: TomlReader) -> Limits:
    """The agreement's [limits] table on the defaults; every key known, every value in range."""
    table = r.table("limits", required=False)
    r.only(table, LIMIT_KEYS, where="limits")
    values: dict[str, Any] = {}
    for f in fields(Limits):
        kind, least, exclusive = f.metadata["kind"], f.metadata["least"], f.metadata["exclusive"]
        value = r.get(table, Limits.key(f.name), kind, default=f.default, where="limits")
        below = value <= least if exclusive else value < least
        if below or not math.isfinite(value):
            bound = f"above {least:g}" if exclusive else f"{least:g} or more"
            raise r.fail(f"limits.{Limits.key(f.name)} = {value!r}; give a number {bound} (default {f.default:g})")
        values[f.name] = value
    limits = Limits(**values)
    if limits.min_learning_rate > limits.max_learning_rate:
        raise r.fail(
            f"limits.min-learning-rate = {limits.min_learning_rate:g} is above limits.max-learning-rate = "
            f"{limits.max_learning_rate:g}; give a range"
        )
    if limits.max_delta >= 1:
        raise r.fail(f"limits.max-delta = {limits.max_delta!r}; give a probability well below 1, like 1e-5")
    return limits
