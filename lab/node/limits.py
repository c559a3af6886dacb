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

from lab.core.toml import TomlReader

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
