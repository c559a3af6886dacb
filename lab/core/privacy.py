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
    """The run's differential privacy, as every node needs it to plan its own noise (the rounds,
    steps and minibatch it plans for are the run's plan's, lab.contract.plan)."""

    noise_multiplier: float
    target_epsilon: float
    clipping_norm: float
    delta: float

    @classmethod
    def of(cls, settings: Any) -> DPSettings | None:
        """From the run settings; None when the run trains without DP."""
        if not settings.differential_privacy:
            return None
        return cls(
            noise_multiplier=settings.dp_noise_multiplier,
            target_epsilon=settings.dp_target_epsilon,
            clipping_norm=settings.dp_clipping_norm,
            delta=settings.dp_delta,
        )

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
    def make(cls, dp: DPSettings, rows: int, *, rounds: int, local_steps: int, batch_size: int) -> DPPlan:
        """The plan for a node with ``rows`` training rows and a run of ``rounds`` rounds of
        ``local_steps`` minibatches of ``batch_size``; with a target epsilon the noise is the least
        that keeps the whole run within it at this node's sampling rate."""
        sample_rate = 1.0 / math.ceil(rows / batch_size)  # what Opacus' Poisson loader samples at
        noise_multiplier = dp.noise_multiplier
        if dp.target_epsilon > 0:
            from opacus.accountants.utils import get_noise_multiplier

            noise_multiplier = float(
                get_noise_multiplier(
                    target_epsilon=dp.target_epsilon,
                    target_delta=dp.delta,
                    sample_rate=sample_rate,
                    steps=local_steps * rounds,
                    accountant="rdp",
                )
            )
        if noise_multiplier <= 0:
            raise SettingsError("differential privacy needs dp-noise-multiplier > 0 or dp-target-epsilon > 0")
        return cls(noise_multiplier, dp.clipping_norm, dp.delta, sample_rate, local_steps, rounds)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DPPlan:
        return cls(**raw)

    def epsilon_after(self, rounds: int) -> float:
        """Epsilon spent by this run after ``rounds`` rounds."""
        return epsilon_for(self.noise_multiplier, self.sample_rate, self.steps_per_round * rounds, self.delta)

    @property
    def planned_epsilon(self) -> float:
        return self.epsilon_after(self.rounds)
