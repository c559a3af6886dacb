"""Record-level differential privacy at each node: DP-SGD's plan and Opacus' accountant.

A node that trains with DP clips every record's gradient to ``clipping_norm`` and adds Gaussian
noise of ``noise_multiplier * clipping_norm`` to each step's sum (Opacus' ``PrivacyEngine`` with
Poisson sampling at rate ``1 / ceil(rows / batch_size)``). Opacus' RDP accountant turns the steps into an
epsilon at the run's delta. The guarantee is per record of the node's training rows, for
everything derived from the model updates it sends.

Every node keeps what it spent in its privacy ledger (lab.node.ledger).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from lab.errors import SettingsError

__all__ = ["DPPlan", "DPSettings", "epsilon_for"]


def epsilon_for(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` DP-SGD steps at ``delta``, by Opacus' RDP accountant."""
    from opacus.accountants import RDPAccountant

    if steps <= 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta=delta))


@dataclass(frozen=True)
class DPSettings:
    """The run's differential privacy, as every node needs it to plan its own noise."""

    noise_multiplier: float
    target_epsilon: float
    clipping_norm: float
    delta: float
    rounds: int
    local_steps: int
    batch_size: int
    #: The run the nodes' ledgers book the spending under: 0 for the message's own run; a resumed
    #: run books under its first attempt's Flower run id, so its ledgers show one run.
    ledger_run: int = 0

    @classmethod
    def of(cls, settings: Any, ledger_run: int = 0) -> DPSettings | None:
        """From the run settings; None when the run trains without DP."""
        if not settings.differential_privacy:
            return None
        return cls(
            noise_multiplier=settings.dp_noise_multiplier,
            target_epsilon=settings.dp_target_epsilon,
            clipping_norm=settings.dp_clipping_norm,
            delta=settings.dp_delta,
            rounds=settings.num_rounds,
            local_steps=settings.local_steps,
            batch_size=settings.batch_size,
            ledger_run=ledger_run,
        )

    def ledger_key(self, run_id: int) -> int:
        """The run a node books this spending under, for a message of Flower run ``run_id``."""
        return self.ledger_run or run_id

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> DPSettings | None:
        return cls(**json.loads(text)) if text else None


@dataclass(frozen=True)
class DPPlan:
    """How one node trains privately in one run: its noise, sampling rate and steps."""

    noise_multiplier: float
    clipping_norm: float
    delta: float
    sample_rate: float
    steps_per_round: int
    rounds: int

    @classmethod
    def make(cls, dp: DPSettings, rows: int) -> DPPlan:
        """The plan for a node with ``rows`` training rows; with a target epsilon the noise is the
        least that keeps the whole run within it at this node's sampling rate."""
        sample_rate = 1.0 / math.ceil(rows / dp.batch_size)  # what Opacus' Poisson loader samples at
        noise_multiplier = dp.noise_multiplier
        if dp.target_epsilon > 0:
            from opacus.accountants.utils import get_noise_multiplier

            noise_multiplier = float(
                get_noise_multiplier(
                    target_epsilon=dp.target_epsilon,
                    target_delta=dp.delta,
                    sample_rate=sample_rate,
                    steps=dp.local_steps * dp.rounds,
                    accountant="rdp",
                )
            )
        if noise_multiplier <= 0:
            raise SettingsError("differential privacy needs dp-noise-multiplier > 0 or dp-target-epsilon > 0")
        return cls(noise_multiplier, dp.clipping_norm, dp.delta, sample_rate, dp.local_steps, dp.rounds)

    def epsilon_after(self, rounds: int) -> float:
        """Epsilon spent by this run after ``rounds`` rounds."""
        return epsilon_for(self.noise_multiplier, self.sample_rate, self.steps_per_round * rounds, self.delta)

    @property
    def planned_epsilon(self) -> float:
        return self.epsilon_after(self.rounds)
