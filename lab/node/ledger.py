"""A node's privacy ledger: the epsilon every run spent on its rows, and the budget it keeps to.

Every node keeps a ledger (JSON lines, never rewritten) of what it released under differential
privacy, each entry under the key of the run's booking (lab.node.runbook), a key the node chose
itself, never the coordinator's run id:

- ``training``: one entry per round trained with DP-SGD, with the run's epsilon on the training
  rows so far (Opacus' RDP accountant over the steps the node took);
- ``scores``: one entry per release of noisy scores on the test rows (lab.core.scores), with its
  zero-concentrated cost; a run's releases add up exactly, and their total is an epsilon at the
  run's delta.

The training and test rows are different rows, so their spending is kept apart (each person is in
one of them). Runs compose by adding their epsilons: a resumed run or a rerun is a new booking, and
adds to what came before; a simple, valid bound that a reader of the ledger can check by hand. The
agreement's epsilon budget holds each of the two totals.
"""

from __future__ import annotations

import fcntl
import json
import time
from pathlib import Path
from typing import Any

from lab.core.privacy import DPPlan
from lab.core.scores import epsilon_of
from lab.errors import DataError, PrivacyBudgetError, Refusal

__all__ = ["Ledger", "check_budget"]


class Ledger:
    """A node's privacy ledger: one JSON line per round trained with DP or release of noisy scores."""

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
                entry = json.loads(line)
            except json.JSONDecodeError:
                where = f"privacy ledger {str(self.path)!r}, line {lineno}"
                raise DataError(f"{where}: not JSON; restore the ledger from its backup") from None
            entry.setdefault("kind", "training")
            entry.setdefault("key", str(entry.get("run_id")))  # a ledger written before bookings had keys
            out.append(entry)
        return out

    def _append(self, entry: dict[str, Any]) -> dict[str, Any]:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
        return entry

    def record(
        self, *, key: str, run_id: int, server_round: int, plan: DPPlan, task: str, steps: int
    ) -> dict[str, Any]:
        """Add the round just trained (``steps`` minibatches, as the node took them); its ``epsilon``
        is the booking's total on the training rows so far, over every round trained for it."""
        trained = self.trainings(key) + 1
        return self._append(
            {
                "kind": "training",
                "key": key,
                "run_id": run_id,
                "task": task,
                "round": server_round,
                "noise_multiplier": plan.noise_multiplier,
                "clipping_norm": plan.clipping_norm,
                "sample_rate": plan.sample_rate,
                "steps": steps,
                "delta": plan.delta,
                "epsilon": plan.epsilon_after(trained),
            }
        )

    def record_scores(
        self, *, key: str, run_id: int, task: str, what: str, models: int, rho: float, delta: float
    ) -> dict[str, Any]:
        """Add a release of ``models`` models' noisy scores costing ``rho``; its ``epsilon`` is the
        booking's total on the test rows so far, at ``delta``."""
        spent = self.score_rho(key) + rho
        return self._append(
            {
                "kind": "scores",
                "key": key,
                "run_id": run_id,
                "task": task,
                "what": what,
                "models": models,
                "rho": rho,
                "delta": delta,
                "epsilon": epsilon_of(spent, delta),
            }
        )

    def trainings(self, key: str) -> int:
        """How many rounds this node has trained for booking ``key``."""
        return sum(1 for e in self.entries() if e["kind"] == "training" and e["key"] == key)

    def score_rho(self, key: str) -> float:
        """The zero-concentrated cost of every score release of booking ``key``."""
        return float(sum(e["rho"] for e in self.entries() if e["kind"] == "scores" and e["key"] == key))

    def check_round(self, key: str, server_round: int, plan: DPPlan, budget: float | None = None) -> None:
        """Refuse a round the run did not plan for, one already trained for this booking, and one
        that would bring the training rows' total over the budget."""
        if server_round > plan.rounds:
            raise Refusal(
                "allow.epsilon-budget",
                f"round {server_round} is beyond the {plan.rounds} rounds the run's epsilon was checked for",
            )
        entries = [e for e in self.entries() if e["kind"] == "training" and e["key"] == key]
        if any(int(e["round"]) == server_round for e in entries):
            raise Refusal(
                "allow.epsilon-budget",
                f"round {server_round} of this run was already trained here: a round is trained once per "
                "preparation (a resumed run prepares again)",
            )
        after = plan.epsilon_after(len(entries) + 1) + self.spent(excluding=key)
        if budget is not None and after > budget + 1e-9:
            raise PrivacyBudgetError(
                "allow.epsilon-budget",
                f"round {server_round} would bring the epsilon spent on the training rows to {after:.3f}, "
                f"over the budget of {budget:g}",
            )

    def runs(self) -> dict[str, dict[str, Any]]:
        """Per booking: the task, the coordinator's run id, rounds trained, the last training
        entry's fields, and the epsilon spent on the training rows and on the test rows."""
        runs: dict[str, dict[str, Any]] = {}
        for entry in self.entries():
            run = runs.setdefault(
                entry["key"], {"rounds": 0, "epsilon": 0.0, "scores_epsilon": 0.0, "run_id": entry.get("run_id")}
            )
            run.update({k: entry[k] for k in ("task", "time") if k in entry})
            if entry["kind"] == "training":
                run.update({k: entry[k] for k in ("noise_multiplier", "sample_rate", "steps", "delta")})
                run["rounds"] = max(run["rounds"], int(entry["round"]))
                run["epsilon"] = max(run["epsilon"], float(entry["epsilon"]))
            else:
                run["scores_epsilon"] = max(run["scores_epsilon"], float(entry["epsilon"]))
        return runs

    def spent(self, *, excluding: str | None = None) -> float:
        """Epsilon spent on the training rows by every booking (but ``excluding``), composed by addition."""
        return float(sum(r["epsilon"] for key, r in self.runs().items() if key != excluding))

    def spent_scores(self, *, excluding: str | None = None) -> float:
        """Epsilon spent on the test rows by every booking's scores (but ``excluding``), by addition."""
        return float(sum(r["scores_epsilon"] for key, r in self.runs().items() if key != excluding))


def check_budget(ledger: Ledger, budget: float | None, plan: DPPlan | None, scores: float) -> None:
    """Refuse the run if what it would spend on the training rows (``plan``) or its scores on the
    test rows (``scores``, an epsilon), with what earlier runs spent on them, exceeds the budget."""
    if budget is None:
        return
    for rows, spent, planned in (
        ("training", ledger.spent(), plan.planned_epsilon if plan else 0.0),
        ("test", ledger.spent_scores(), scores),
    ):
        if planned and spent + planned > budget + 1e-9:
            what = f"over {plan.rounds} rounds" if plan is not None and rows == "training" else "in its scores"
            raise PrivacyBudgetError(
                "allow.epsilon-budget",
                f"this run would spend epsilon {planned:.3f} on the {rows} rows {what}; earlier runs spent "
                f"{spent:.3f} of the budget of {budget:g}, so {max(budget - spent, 0):.3f} remains. "
                "Ask for fewer rounds, more noise or fewer scored models, or agree a larger budget",
            )
