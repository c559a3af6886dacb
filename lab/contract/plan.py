"""What a training run will ask of every node, declared once, at its preparation.

Each node checks the plan against its agreement's limits before it reads a row, books it, and
then holds every message of the run to it: the local steps, the minibatch and the learning rate
of every train message, how many rounds it trains, and how many models it scores (each round's
received model, the final one, the coalitions' models of a contribution valuation), which is what
its scores' noise is spread over (lab.core.scores).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lab.contract.settings import RunSettings

__all__ = ["RunPlan"]


@dataclass(frozen=True)
class RunPlan:
    """The run's rounds and local optimisation, and the models it will have each node score.

    ``nodes``: how many nodes the coordinator asked (a contribution valuation scores the models of
    their coalitions: ``lab.core.valuation.models_needed``).
    """

    rounds: int
    local_steps: int
    batch_size: int
    learning_rate: float
    scored_rounds: int  # train messages that score the model they carry before training on it
    contributions: bool = False
    nodes: int = 0

    @classmethod
    def of(cls, settings: RunSettings, *, nodes: int, scored_rounds: int | None = None) -> RunPlan:
        """The plan of a run with these settings on ``nodes`` nodes (every round scored, by default)."""
        return cls(
            rounds=settings.num_rounds,
            local_steps=settings.local_steps,
            batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            scored_rounds=settings.num_rounds if scored_rounds is None else scored_rounds,
            contributions=settings.contributions,
            nodes=nodes,
        )

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunPlan:
        return cls(
            rounds=int(raw["rounds"]),
            local_steps=int(raw["local_steps"]),
            batch_size=int(raw["batch_size"]),
            learning_rate=float(raw["learning_rate"]),
            scored_rounds=int(raw["scored_rounds"]),
            contributions=bool(raw.get("contributions", False)),
            nodes=int(raw.get("nodes", 0)),
        )
