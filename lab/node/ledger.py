"""A node's privacy ledger: the epsilon every run spent on its rows, and the budget it keeps to.

Every node keeps a ledger (JSON lines, one entry per round it trained with DP) and refuses a run
before training when the epsilon the whole run would spend, added to what earlier runs spent on
the same rows, exceeds the budget in its agreement. Runs compose by adding their epsilons (and
deltas): a simple, valid bound that a reader of the ledger can check by hand.
"""

from __future__ import annotations

import fcntl
import json
import time
from pathlib import Path
from typing import Any

from lab.core.privacy import DPPlan
from lab.errors import DataError, PrivacyBudgetError, Refusal

__all__ = ["Ledger", "check_budget"]


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
                raise DataError(f"{where}: not JSON; restore the ledger from its backup") from None
        return out

    def record(self, *, run_id: int, server_round: int, plan: DPPlan, task: str) -> dict[str, Any]:
        """Add the round just trained; its ``epsilon`` is the run's total so far, over every round
        this node trained for the run (a round trained again after its coordinator died counts twice)."""
        trained = self.trainings(run_id) + 1
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
            "epsilon": plan.epsilon_after(trained),
        }
        if trained != server_round:
            entry["trainings"] = trained
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
        return entry

    def trainings(self, run_id: int) -> int:
        """How many rounds this node has trained for run ``run_id``."""
        return sum(1 for e in self.entries() if int(e["run_id"]) == run_id)

    def check_round(self, run_id: int, server_round: int, plan: DPPlan, budget: float | None = None) -> None:
        """Refuse a round the run did not plan for. A round already trained here (its coordinator
        died before it kept the result, and the resumed run asks again) is trained again only
        within the budget, counting both trainings."""
        if server_round > plan.rounds:
            raise Refusal(
                "allow.epsilon-budget",
                f"round {server_round} is beyond the {plan.rounds} rounds the run's epsilon was checked for",
            )
        entries = [e for e in self.entries() if int(e["run_id"]) == run_id]
        if not any(int(e["round"]) == server_round for e in entries):
            return
        again = plan.epsilon_after(len(entries) + 1) + self.spent(excluding=run_id)
        if budget is not None and again > budget + 1e-9:
            raise Refusal(
                "allow.epsilon-budget",
                f"round {server_round} of run {run_id} was already trained here; training it again would bring "
                f"the epsilon spent to {again:.3f}, over the budget of {budget:g}",
            )

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
        raise PrivacyBudgetError(
            "allow.epsilon-budget",
            f"this run would spend epsilon {planned:.3f} over {plan.rounds} rounds; earlier runs spent "
            f"{spent:.3f} of the budget of {budget:g}, so {max(budget - spent, 0):.3f} remains. "
            "Ask for fewer rounds or more noise, or agree a larger budget",
        )
