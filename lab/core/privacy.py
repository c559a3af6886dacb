"""Record-level differential privacy at each node: DP-SGD with Opacus, and a privacy ledger.

A node that trains with DP clips every record's gradient to ``clipping_norm`` and adds Gaussian
noise of ``noise_multiplier * clipping_norm`` to each step's sum (Opacus' ``PrivacyEngine`` with
Poisson sampling at rate ``1 / ceil(rows / batch_size)``). Opacus' RDP accountant turns the steps into an
epsilon at the run's delta. The guarantee is per record of the node's training rows, for
everything derived from the model updates it sends.

Every node keeps a ledger (JSON lines, one entry per round it trained with DP) and refuses a run
before training when the epsilon the whole run would spend, added to what earlier runs spent on
the same rows, exceeds the budget in its agreement. Runs compose by adding their epsilons (and
deltas): a simple, valid bound that a reader of the ledger can check by hand.
"""

from __future__ import annotations

import fcntl
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord

from lab.contract import keys
from lab.contract.records import number
from lab.contract.settings import RunSettings
from lab.errors import LabError
from lab.node.agreement import Refusal

__all__ = ["DPPlan", "Ledger", "check_budget", "dp_config", "epsilon_for", "plan_from_config"]


def epsilon_for(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` DP-SGD steps at ``delta``, by Opacus' RDP accountant."""
    from opacus.accountants import RDPAccountant

    if steps <= 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta=delta))


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
    def make(
        cls,
        *,
        rows: int,
        batch_size: int,
        steps_per_round: int,
        rounds: int,
        clipping_norm: float,
        delta: float,
        noise_multiplier: float = 0.0,
        target_epsilon: float = 0.0,
    ) -> DPPlan:
        """The plan for a node with ``rows`` training rows; with ``target_epsilon`` the noise is
        the least that keeps the whole run within it at this node's sampling rate."""
        sample_rate = 1.0 / math.ceil(rows / batch_size)  # what Opacus' Poisson loader samples at
        if target_epsilon > 0:
            from opacus.accountants.utils import get_noise_multiplier

            noise_multiplier = float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps_per_round * rounds,
                    accountant="rdp",
                )
            )
        if noise_multiplier <= 0:
            raise LabError("differential privacy needs dp-noise-multiplier > 0 or dp-target-epsilon > 0")
        return cls(noise_multiplier, clipping_norm, delta, sample_rate, steps_per_round, rounds)

    def epsilon_after(self, rounds: int) -> float:
        """Epsilon spent by this run after ``rounds`` rounds."""
        return epsilon_for(self.noise_multiplier, self.sample_rate, self.steps_per_round * rounds, self.delta)

    @property
    def planned_epsilon(self) -> float:
        return self.epsilon_after(self.rounds)


class Ledger:
    """A node's privacy ledger: one JSON line per round trained with DP, never rewritten."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for lineno, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                where = f"privacy ledger {str(self.path)!r}, line {lineno}"
                raise LabError(f"{where}: not JSON; restore the ledger from its backup") from None
        return out

    def record(self, *, run_id: int, server_round: int, plan: DPPlan, task: str) -> dict[str, Any]:
        """Add the round just trained; its ``epsilon`` is the run's total so far."""
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "run_id": run_id,
            "task": task,
            "round": server_round,
            "noise_multiplier": plan.noise_multiplier,
            "clipping_norm": plan.clipping_norm,
            "sample_rate": plan.sample_rate,
            "steps": plan.steps_per_round,
            "delta": plan.delta,
            "epsilon": plan.epsilon_after(server_round),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
        return entry

    def check_round(self, run_id: int, server_round: int, plan: DPPlan) -> None:
        """Refuse a round the run did not plan for, or one this node has already trained."""
        if server_round > plan.rounds:
            raise Refusal(
                "allow.epsilon-budget",
                f"round {server_round} is beyond the {plan.rounds} rounds the run's epsilon was checked for",
            )
        if any(int(e["run_id"]) == run_id and int(e["round"]) == server_round for e in self.entries()):
            raise Refusal("allow.epsilon-budget", f"round {server_round} of run {run_id} was already trained here")

    def runs(self) -> dict[int, dict[str, Any]]:
        """Per run: the task, rounds trained, last round's entry fields and the epsilon spent."""
        runs: dict[int, dict[str, Any]] = {}
        for entry in self.entries():
            run = runs.setdefault(int(entry["run_id"]), {"rounds": 0, "epsilon": 0.0})
            run.update({k: entry[k] for k in ("task", "noise_multiplier", "sample_rate", "steps", "delta", "time")})
            run["rounds"] = max(run["rounds"], int(entry["round"]))
            run["epsilon"] = max(run["epsilon"], float(entry["epsilon"]))
        return runs

    def spent(self, *, excluding: int | None = None) -> float:
        """Epsilon spent by every run (but ``excluding``), composed by addition."""
        return float(sum(r["epsilon"] for run_id, r in self.runs().items() if run_id != excluding))


def check_budget(ledger: Ledger, budget: float | None, run_id: int, plan: DPPlan) -> None:
    """Refuse the run if what it would spend, with what earlier runs spent, exceeds the budget."""
    if budget is None:
        return
    spent = ledger.spent(excluding=run_id)
    planned = plan.planned_epsilon
    if spent + planned > budget + 1e-9:
        raise Refusal(
            "allow.epsilon-budget",
            f"this run would spend epsilon {planned:.3f} over {plan.rounds} rounds; earlier runs spent "
            f"{spent:.3f} of the budget of {budget:g}, so {max(budget - spent, 0):.3f} remains. "
            "Ask for fewer rounds or more noise, or agree a larger budget",
        )


def dp_config(settings: RunSettings) -> dict[str, Any]:
    """What the coordinator tells every node about the run's differential privacy."""
    return {
        keys.DIFFERENTIAL_PRIVACY: settings.differential_privacy,
        keys.NUM_ROUNDS: settings.num_rounds,
        keys.DP_NOISE_MULTIPLIER: settings.dp_noise_multiplier,
        keys.DP_TARGET_EPSILON: settings.dp_target_epsilon,
        keys.DP_CLIPPING_NORM: settings.dp_clipping_norm,
        keys.DP_DELTA: settings.dp_delta,
        keys.LOCAL_STEPS: settings.local_steps,
        keys.BATCH_SIZE: settings.batch_size,
    }


def plan_from_config(config: ConfigRecord, rows: int) -> DPPlan | None:
    """The node's DP plan for a run, from the run's config and its training rows (None: no DP)."""
    if not config.get(keys.DIFFERENTIAL_PRIVACY, False):
        return None
    return DPPlan.make(
        rows=rows,
        batch_size=int(number(config, keys.BATCH_SIZE)),
        steps_per_round=int(number(config, keys.LOCAL_STEPS)),
        rounds=int(number(config, keys.NUM_ROUNDS)),
        clipping_norm=number(config, keys.DP_CLIPPING_NORM),
        delta=number(config, keys.DP_DELTA),
        noise_multiplier=number(config, keys.DP_NOISE_MULTIPLIER),
        target_epsilon=number(config, keys.DP_TARGET_EPSILON),
    )
