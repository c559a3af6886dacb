"""Disclosure control: which counts of a table may leave a node without revealing a person.

Used by everything that releases counts: federated analytics, the prepare reply's scaler sums and
the catalog; and, at the coordinator, the rule for pooled figures beside nodes that keep their own.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

__all__ = ["DEFAULT_MIN_COUNT", "POOLED_MIN_NODES", "protect", "protect_counts", "subtraction_reveals", "with_margins"]

#: Fewest rows behind any count a node releases, when its agreement asks for no more.
DEFAULT_MIN_COUNT = 5

#: Pooled figures of fewer nodes than this give one node's figures by subtraction: with two, each
#: knows its own.
POOLED_MIN_NODES = 3


def subtraction_reveals(hidden: Collection[str], pooled: int) -> str | None:
    """Why a figure pooled over ``pooled`` nodes would give away the own figure of one of the
    ``hidden`` nodes among them (whose agreement keeps its figures, ``allow.node-figures =
    false``), or None when it would not.

    With fewer than three nodes pooled, each can work out the others' figures from its own; with
    every node's figures shown but one, the pooled figure minus theirs is that one's.
    """
    if not hidden:
        return None
    if pooled < POOLED_MIN_NODES:
        return f"with {pooled} node(s) pooled, each could work out the others' figures from its own"
    if len(hidden) == 1:
        return "every other node's figures are shown, so the pooled ones minus theirs are its own"
    return None


def with_margins(cells: np.ndarray) -> np.ndarray:
    """An R x C table with its row totals, column totals and grand total added: (R+1) x (C+1)."""
    rows, cols = cells.shape
    full = np.zeros((rows + 1, cols + 1))
    full[:rows, :cols] = cells
    full[:rows, cols] = cells.sum(axis=1)
    full[rows, :cols] = cells.sum(axis=0)
    full[rows, cols] = cells.sum()
    return full


def protect(cells: np.ndarray, min_count: int, *, margins: bool = True, public_total: bool = False) -> np.ndarray:
    """Which cells of a count table to suppress: a mask of the table *with its margins*.

    ``cells`` is R x C. The returned mask is (R+1) x (C+1): row totals in the last column, column
    totals in the last row, the grand total in the corner. A count from 1 to ``min_count - 1`` is
    suppressed (primary; an empty cell describes nobody and is shown). Then complementary cells
    are hidden until (a) every row and column (margins included) with a hidden cell has at least
    two and, when its total is released, the hidden cells add up to ``min_count`` or more (their
    sum is the total minus the released cells),
    and (b) no hidden small count is determined by the released cells through the table's sums,
    across any number of rows and columns (a rank test on the system of linear equations). Bounds
    (a hidden count lies between 0 and a total) are not audited. With ``margins=False`` (one row,
    no column totals released) only the row and its total are a constraint; ``public_total``
    says that total is known anyway, so it is never chosen as a complementary cell.
    """
    cells = np.atleast_2d(np.asarray(cells, dtype=float))
    rows, cols = cells.shape
    full = with_margins(cells)
    small = (full > 0) & (full < min_count)
    if not margins:
        small[rows, :] = False  # the column-total row is not released at all
    hidden = small.copy()
    if public_total:
        hidden[0, cols] = False
    lines = _lines(rows, cols, margins)
    fixed = {(0, cols)} if public_total else set()
    while True:
        _complete_lines(full, hidden, lines, min_count, fixed)
        exposed = _determined(hidden, small, lines)
        if exposed is None:
            break
        line = next(line for line in lines if exposed in line)
        _hide_smallest(full, hidden, line, fixed)
    if not margins:
        hidden[rows, :] = True
    return hidden


Line = list[tuple[int, int]]  # positions in the table with margins; the line's total comes last


def _lines(rows: int, cols: int, margins: bool) -> list[Line]:
    """Every additive constraint of the table: cells of a row (or column) sum to its total."""
    lines = [[(i, j) for j in range(cols + 1)] for i in range(rows + (1 if margins else 0))]
    if margins:
        lines += [[(i, j) for i in range(rows + 1)] for j in range(cols + 1)]
    return lines


def _hide_smallest(full: np.ndarray, hidden: np.ndarray, line: Line, fixed: set[tuple[int, int]]) -> bool:
    """Hide the line's smallest released non-empty cell (an empty one if there is no other)."""
    released = [p for p in line if not hidden[p] and p not in fixed]
    if not released:
        return False
    non_empty = [p for p in released if full[p] > 0] or released
    hidden[min(non_empty, key=lambda p: full[p])] = True
    return True


def _complete_lines(
    full: np.ndarray, hidden: np.ndarray, lines: list[Line], min_count: int, fixed: set[tuple[int, int]]
) -> None:
    """Until stable: a line with hidden cells has two or more, adding up to ``min_count`` or more."""
    changed = True
    while changed:
        changed = False
        for line in lines:
            count = sum(bool(hidden[p]) for p in line)
            if count == 0:
                continue
            # With the total released, the hidden cells' sum is the total minus the released ones.
            exposed_sum = not hidden[line[-1]] and sum(full[p] for p in line[:-1] if hidden[p]) < min_count
            if count == 1 or exposed_sum:
                changed |= _hide_smallest(full, hidden, line, fixed)


def _determined(hidden: np.ndarray, small: np.ndarray, lines: list[Line]) -> tuple[int, int] | None:
    """A hidden small count whose value follows from the released ones, if there is one."""
    unknowns = [(int(i), int(j)) for i, j in zip(*np.nonzero(hidden & _constrained(hidden, lines)), strict=True)]
    if not unknowns:
        return None
    index = {p: k for k, p in enumerate(unknowns)}
    equations = []
    for line in lines:
        row = np.zeros(len(unknowns))
        for p in line[:-1]:
            if p in index:
                row[index[p]] += 1.0
        if line[-1] in index:
            row[index[line[-1]]] -= 1.0
        if row.any():
            equations.append(row)
    if not equations:
        return None
    system = np.array(equations)
    rank = np.linalg.matrix_rank(system)
    for p in unknowns:
        if small[p]:
            probe = np.zeros(len(unknowns))
            probe[index[p]] = 1.0
            if np.linalg.matrix_rank(np.vstack([system, probe])) == rank:
                return p
    return None


def _constrained(hidden: np.ndarray, lines: list[Line]) -> np.ndarray:
    """Positions that take part in some constraint (all but an absent margin row)."""
    used = np.zeros(hidden.shape, dtype=bool)
    for line in lines:
        for p in line:
            used[p] = True
    return used


def protect_counts(counts: list[int], total: int, min_count: int) -> list[int | None]:
    """A one-row table of counts that add up to a released ``total``: the counts that may be
    released, None for those held back (``protect`` with the total public)."""
    hidden = protect(np.array([counts], dtype=float), min_count, margins=False, public_total=True)[0]
    return [None if h else c for c, h in zip(counts, hidden[: len(counts)], strict=True)]
