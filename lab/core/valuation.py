"""What each member's data is worth to the federated model: Shapley values and leave-one-out.

A coalition's utility is the score of the model its members' updates alone would have made
(federation.contributions builds those models and the nodes score them). From the utilities:

- the exact Shapley value (Shapley 1953; for federated learning, Wang et al. 2019, "Measure
  contribution of participants in federated learning", and Wang et al. 2020, "A principled
  approach to data valuation for federated learning"), over every coalition: up to
  ``EXACT_LIMIT`` members;
- above that, Monte Carlo over random orderings of the members with truncation, as GTG-Shapley
  does (Liu et al. 2022, "GTG-Shapley: efficient and accurate participant contribution evaluation
  in federated learning"): an ordering stops adding members once its coalition scores within
  ``tolerance`` of the whole federation, the rest counting zero; the estimate comes with its
  standard error;
- leave-one-out: the whole federation's utility minus the utility without the member, the figure
  anyone can check from two numbers.

The utilities are asked for in batches (``Score``): every coalition the exact value needs at once,
or, for Monte Carlo, the next member of every ordering at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import combinations

import numpy as np

__all__ = ["EXACT_LIMIT", "Coalition", "Score", "Valuation", "coalitions", "models_needed", "value"]

#: The most members whose Shapley values are computed exactly (2**8 = 256 coalitions).
EXACT_LIMIT = 8

Coalition = frozenset[str]
#: Utilities of a batch of coalitions (every coalition of the batch has one).
Score = Callable[[list[Coalition]], Mapping[Coalition, float]]


@dataclass(frozen=True)
class Valuation:
    """Every member's Shapley value (with its standard error under Monte Carlo, else None) and
    leave-one-out value; ``utilities``: every coalition scored, ``orderings``: how many orderings
    Monte Carlo sampled (0 for the exact value)."""

    shapley: dict[str, float]
    standard_error: dict[str, float | None]
    leave_one_out: dict[str, float]
    utilities: dict[Coalition, float]
    method: str  # "exact" or "monte-carlo"
    orderings: int = 0

    @property
    def empty(self) -> float:
        return self.utilities[frozenset()]

    @property
    def whole(self) -> float:
        return self.utilities[max(self.utilities, key=len)]


def coalitions(members: Iterable[str]) -> list[Coalition]:
    """Every coalition of ``members``, the empty one and the whole included, smallest first."""
    names = sorted(members)
    return [frozenset(c) for size in range(len(names) + 1) for c in combinations(names, size)]


def models_needed(members: int, orderings: int = 0) -> int:
    """The most coalitions ``value`` has scored for ``members`` members: every one up to
    ``EXACT_LIMIT``, else the empty one, the whole, each ordering's prefixes and the leave-one-outs."""
    if members <= 0:
        return 0
    if members <= EXACT_LIMIT:
        return int(2**members)
    return 2 + (orderings or 10 * members) * members + members


def value(
    members: Iterable[str],
    score: Score,
    *,
    orderings: int = 0,
    tolerance: float = 0.01,
    seed: int = 0,
) -> Valuation:
    """Shapley and leave-one-out values of ``members`` under the utilities ``score`` gives: exact
    up to ``EXACT_LIMIT`` members, else Monte Carlo over ``orderings`` random orderings (default
    ten per member) truncated at ``tolerance`` (relative to the whole federation's utility)."""
    names = sorted(members)
    if not names:
        raise ValueError("no member to value")
    if len(names) <= EXACT_LIMIT:
        utilities = _scored(score, coalitions(names))
        shapley = _exact(names, utilities)
        errors: dict[str, float | None] = dict.fromkeys(names)
        method, sampled = "exact", 0
    else:
        sampled = orderings or 10 * len(names)
        shapley, standard, utilities = _monte_carlo(names, score, sampled, tolerance, seed)
        errors = dict(standard)
        method = "monte-carlo"
    whole = frozenset(names)
    missing = [whole - {n} for n in names if whole - {n} not in utilities]
    if missing:
        utilities.update(_scored(score, missing))
    loo = {n: utilities[whole] - utilities[whole - {n}] for n in names}
    return Valuation(shapley, errors, loo, utilities, method, sampled)


def _scored(score: Score, wanted: list[Coalition]) -> dict[Coalition, float]:
    got = dict(score(wanted))
    absent = [sorted(c) for c in wanted if c not in got]
    if absent:
        raise ValueError(f"the utilities of coalitions {absent[:3]} were not given")
    return got


def _exact(names: list[str], utilities: Mapping[Coalition, float]) -> dict[str, float]:
    """phi_i = sum over coalitions S without i of |S|! (n-|S|-1)! / n! (v(S + i) - v(S))."""
    n = len(names)
    shapley = {}
    for name in names:
        others = [m for m in names if m != name]
        total = 0.0
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for coalition in combinations(others, size):
                without = frozenset(coalition)
                total += weight * (utilities[without | {name}] - utilities[without])
        shapley[name] = total
    return shapley


def _monte_carlo(
    names: list[str], score: Score, orderings: int, tolerance: float, seed: int
) -> tuple[dict[str, float], dict[str, float], dict[Coalition, float]]:
    """GTG-Shapley's within-round truncated permutation sampling, one batch per position."""
    rng = np.random.default_rng(seed)
    orders = [list(rng.permutation(names)) for _ in range(orderings)]
    whole, empty = frozenset(names), frozenset[str]()
    utilities = _scored(score, [empty, whole])
    margin = tolerance * max(abs(utilities[whole]), 1e-12)
    marginals = {n: np.zeros(orderings) for n in names}
    active = set(range(orderings))
    for position in range(len(names)):
        prefixes = {k: frozenset(orders[k][: position + 1]) for k in active}
        wanted = sorted({c for c in prefixes.values() if c not in utilities}, key=sorted)
        if wanted:
            utilities.update(_scored(score, wanted))
        for k in sorted(active):
            before = frozenset(orders[k][:position])
            member = orders[k][position]
            marginals[member][k] = utilities[prefixes[k]] - utilities[before]
            if abs(utilities[whole] - utilities[prefixes[k]]) < margin:
                active.discard(k)  # the rest of this ordering adds nothing measurable: zero
        if not active:
            break
    shapley = {n: float(marginals[n].mean()) for n in names}
    errors = {n: float(marginals[n].std(ddof=1) / math.sqrt(orderings)) if orderings > 1 else math.nan for n in names}
    return shapley, errors, utilities
