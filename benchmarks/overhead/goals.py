"""The goals the issue "A warm node" sets the lab, and whether a result meets them."""

from __future__ import annotations

from typing import Any

__all__ = ["GOALS", "assess"]

GOALS = {
    # `lab demo` from its start to its exit, on 2 cores, once set up (`make setup`): the demo as a user sees it
    "demo_seconds_after_setup_under": 45.0,
    # one round of the lab on the warm runtime, 4 nodes
    "round_seconds_under": 4.0,
    # the warm lab's seconds per round over bare Flower's, train only (one message per node per round each)
    "ratio_at_most": 0.3,
    # the warm lab's CPU seconds per message (its node workers during the rounds)
    "cpu_seconds_per_message_under": 0.5,
}


def assess(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per goal the result states (an older result states fewer): the goal, its bound, the figure
    measured, and whether it is met (None when the figure is missing). The figures are the lab's as users run
    it: the warm runtime, or the only one of an older result."""
    goals, rows = result.get("goals", {}), []
    lab = result["lab"]
    if "demo_seconds_after_setup_under" in goals:
        bound = goals["demo_seconds_after_setup_under"]
        rows.append(_row("demo_wall_seconds", bound, result.get("demo_wall_seconds"), below=True))
        rows.append(_row("demo_submit_to_done_seconds", bound, result.get("demo_submit_to_done_seconds"), below=True))
    if "round_seconds_under" in goals:
        rows.append(_row("round_seconds", goals["round_seconds_under"], lab.get("seconds_per_round"), below=True))
    if "ratio_at_most" in goals:
        ratio = result.get("ratio", {}).get("lab_vs_bare_train_only")
        rows.append(_row("ratio_vs_bare_train_only", goals["ratio_at_most"], ratio, below=False))
    if "cpu_seconds_per_message_under" in goals:
        cpu = lab.get("cpu_seconds_per_message")
        rows.append(_row("cpu_seconds_per_message", goals["cpu_seconds_per_message_under"], cpu, below=True))
    return rows


def _row(goal: str, bound: float, measured: float | None, *, below: bool) -> dict[str, Any]:
    """``below``: the figure must stay under the bound; else at or below it."""
    met = None if measured is None else (measured < bound if below else measured <= bound)
    return {"goal": goal, "bound": bound, "measured": measured, "met": met}
